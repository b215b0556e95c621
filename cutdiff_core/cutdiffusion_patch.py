"""CutDiffusion as a ComfyUI model patch (spec 3.7).

One ordinary sampling run on the full-size latent; only the denoiser changes
with the step. Four module-level wrappers on a *clone* of the ModelPatcher, all
through ComfyUI's public `add_wrapper_with_key`; the clone's transformer_options
hold the patch's `PatchSettings` under WRAPPER_KEY, copied with the model like
any other option:

- OUTER_SAMPLE: plans the run from those settings (`PatchedRun`: sizes, sigmas,
  native first's passes), holds its state in the run's own model options,
  pads to the patch grid and crops back.
- SAMPLER_SAMPLE: counts finished steps through the step callback, so a
  second-order sampler's extra evaluation of the last stage-1 step is still
  stage 1.
- PREDICT_NOISE: tells each model evaluation its step (and so its stage).
- CALC_COND_BATCH: the stages themselves (`stages.stage1_denoise`,
  `stages.stage2_denoise`) on the full-size frame, cond and uncond alike;
  CFG and the sampler then see one full-size prediction, as without the patch.

Everything here translates ComfyUI's calls and conditioning into the stage
functions, which are plain torch.
"""
from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

import comfy.model_management
import comfy.sample
import comfy.utils

from .conditioning import check_conds, pad_image_conds, pad_mask, views_of_image_conds, window_conds
from .config import (MAX_AUTO_WINDOW_BATCH, CutDiffusionConfig, guidance_strength, ignored_settings, plan_run,
                     plan_target_pass, run_kind, validate_config, validate_for_latent, validate_stride, window_stride_latent)
from .layout import NativeFirst, is_full_noise, native_first, sample_native_first
from .native_size import latent_px, native_size_px
from .patches import unfold_patches
from .pixel_upscale import check_vae, pixel_upscale
from .plan import EVALUATIONS_PER_STEP, Window, global_guidance_weight
from .run_state import RunReport, RunState
from .spatial_tile import patch_views, window_views
from .stages import anchor_to_layout, guide_by_patches, guide_low_frequencies, stage1_denoise, stage2_denoise
from .windows import make_weights
from .wrapping import WRAPPERS, install, run_holder, run_of, watch_step_callback

__all__ = ["CutDiffusionConfig", "PatchSettings", "RunReport", "apply_cutdiffusion", "cutdiffusion_stage",
           "native_size_px", "sample", "windows_per_call", "MAX_AUTO_WINDOW_BATCH", "RUN_KEY", "WRAPPER_KEY", "Window"]

log = logging.getLogger("cutdiffusion")

WRAPPER_KEY = "cutdiffusion"      # the wrappers' key, and where the patched model keeps its PatchSettings
RUN_KEY = "cutdiffusion_run"      # the RunState, in the run's own model options while it samples


@dataclass(frozen=True)
class PatchSettings:
    """What apply_cutdiffusion fixed for a patched model. Plain values, so every clone of the model
    copies them like any option; the report is referred to weakly, because it belongs to whoever
    patched the model (the CutDiffusion KSampler reads it after its run) and clones must not copy it."""
    config: CutDiffusionConfig
    native_px: int
    latent_px: int = 8
    # The sigmas are a scheduler's whole schedule, text-to-image, even where that schedule starts
    # below sigma_max (ddim_uniform): set by sample() for a KSampler at denoise 1.
    whole_schedule: bool = False
    report: weakref.ref | None = None
    # native first's layout is upscaled in pixel space through this VAE (None: in latent space); weak for
    # the same reason as the report, and because every clone of the model deep-copies its options.
    vae: weakref.ref | None = None

    def run_report(self) -> RunReport:
        """The report this run fills: the patcher's, or one of its own where nobody reads it."""
        report = self.report() if self.report is not None else None
        return report if report is not None else RunReport()


def cutdiffusion_stage(model_options: dict, timestep: torch.Tensor) -> int | None:
    """For other patches (AdaptiveDiffusion): the CutDiffusion stage (1 or 2) of the model
    evaluation about to happen at `timestep`, or None outside a CutDiffusion run."""
    run = run_of(model_options, RUN_KEY)
    if run is None:
        return None
    return 1 if run.in_stage1(run.peek_step(timestep)) else 2


# Patches that cannot work beside CutDiffusion, and why (spec: a clear error, never silently disabled).
_INCOMPATIBLE = {
    "easycache": "EasyCache caches one model call per step, but CutDiffusion makes one call per patch batch / window "
                 "batch, so it would reuse one window's output for another. Use LazyCache or AdaptiveDiffusion "
                 "instead: they cache whole steps and work with CutDiffusion.",
    "comfy_extras.nodes_sag": "Self-Attention Guidance keeps the attention map of one model call and applies it to "
                              "the whole image, but in stage 2 each call sees one window. Use Perturbed-Attention "
                              "Guidance (PAG) instead: it works with CutDiffusion.",
}


def _check_other_patches(model_options: dict) -> None:
    wrappers = model_options.get("transformer_options", {}).get("wrappers", {})
    if "easycache" in wrappers.get(WRAPPERS.DIFFUSION_MODEL, {}):
        raise ValueError(f"CutDiffusion: {_INCOMPATIBLE['easycache']}")
    for fn in model_options.get("sampler_post_cfg_function", []):
        if getattr(fn, "__module__", "") in _INCOMPATIBLE:
            raise ValueError(f"CutDiffusion: {_INCOMPATIBLE[fn.__module__]}")


def _repeat_timestep(timestep: torch.Tensor, times: int) -> torch.Tensor:
    return timestep.repeat(times) if timestep.ndim == 1 else timestep


def _progress(callback, step_of, total: int):
    """The step callback with this pass's steps mapped onto the whole run's."""
    if callback is None:
        return None
    return lambda step, x0, x, _total: callback(step_of(step), x0, x, total)


def _single_frame(latent: torch.Tensor) -> bool:
    """A one-frame video-shaped latent [B, C, 1, H, W] (Qwen-Image): an image to the stages."""
    return latent.ndim == 5 and latent.shape[2] == 1


class PatchedRun:
    """One sampling run of a patched model, built in OUTER_SAMPLE from its PatchSettings: the paper's
    two stages, or native first's layout pass and target pass."""

    def __init__(self, settings: PatchSettings):
        self.settings = settings
        self.report = settings.run_report()

    def sample(self, executor, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
               disable_pbar=False, seed=None, **kwargs):
        guider = executor.class_obj
        first = self._native_first(guider, noise, sigmas, denoise_mask)
        if first is None:   # the paper's layout; under native first also img2img, masks and schedule segments
            return self._target_pass(executor, noise, latent_image, sampler, sigmas, denoise_mask, callback,
                                     disable_pbar, seed, kwargs)
        if first.is_whole_run:
            self._report_plain(self._summary(first), first)
            return executor(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed, **kwargs)
        total = len(sigmas) - 1

        def layout_pass() -> torch.Tensor:
            return self._layout_pass(executor, first, noise, sampler, sigmas,
                                     _progress(callback, lambda i: i * first.refine_from // total, total),
                                     disable_pbar, seed, kwargs)

        def target_pass(layout: torch.Tensor, refine_from: int) -> torch.Tensor:
            fresh = comfy.sample.prepare_noise(torch.zeros(layout.shape), int(seed or 0) + 1).to(noise)
            progress = _progress(callback, lambda j: refine_from + j, total)
            if self.settings.config.target_pass == "whole frame":
                return self._whole_frame_pass(executor, first, fresh, layout.to(latent_image), sampler,
                                              sigmas[refine_from:], progress, disable_pbar, seed, kwargs)
            return self._target_pass(executor, fresh, layout.to(latent_image), sampler, sigmas[refine_from:], None,
                                     progress, disable_pbar, seed, kwargs, first)
        return sample_native_first(first, layout_pass, target_pass, *noise.shape[-2:], upscale=self._layout_upscale())

    def _layout_upscale(self):
        """The layout's upscale: through the user's VAE in pixel space, or None (in latent space)."""
        if self.settings.vae is None:
            return None
        vae = self.settings.vae()
        if vae is None:
            raise RuntimeError("CutDiffusion: the VAE connected to the vae input is no longer loaded; run the "
                               "workflow again (or disconnect it to upscale in latent space)")
        return lambda latent, height, width: pixel_upscale(vae, latent, height, width, self.settings.latent_px)

    def _summary(self, first: NativeFirst) -> str:
        return first.summary(self.settings.latent_px, pixel_upscale=self.settings.vae is not None)

    def _whole_frame_pass(self, executor, first: NativeFirst, noise, latent_image, sampler, sigmas, callback,
                          disable_pbar, seed, kwargs):
        """Native first's target pass on the whole frame: plain sampling of the schedule's tail on the
        upscaled layout, what a hires fix of ComfyUI's core nodes runs."""
        latent_px = self.settings.latent_px
        size = f"{noise.shape[-1] * latent_px}x{noise.shape[-2] * latent_px} px"
        self._report_plain(f"{self._summary(first)} on the whole frame ({size} per model call, like a hires fix)",
                           first)
        try:
            return executor(noise, latent_image, sampler, sigmas, None, callback, disable_pbar, seed, **kwargs)
        except torch.OutOfMemoryError as e:   # not OOM_EXCEPTION: without CUDA that is any Exception
            raise RuntimeError(f"CutDiffusion: the whole-frame target pass at {size} ran out of memory; set "
                               "target_pass to tiles (native-size tiles, the memory of a native-size image at "
                               "any size)") from e

    def _target_pass(self, executor, noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar,
                     seed, kwargs, first: NativeFirst | None = None):
        """The pack's run at the target size: the paper's two stages, or native first's target pass
        (`first`: held to the upscaled layout `latent_image`)."""
        guider = executor.class_obj
        run = self._start_run(guider, noise, sigmas, seed, first)
        if run is None:
            return executor(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed, **kwargs)
        height, width = noise.shape[-2:]
        plan = run.plan
        if plan.pad_h or plan.pad_w:
            noise, latent_image, denoise_mask = self._pad(run, noise, latent_image, denoise_mask)
            pad_image_conds(guider.conds, height, width, (0, plan.pad_w, 0, plan.pad_h), self.settings.latent_px)
            if kwargs.get("latent_shapes") is not None and len(kwargs["latent_shapes"]) == 1:
                kwargs = dict(kwargs, latent_shapes=[noise.shape])
        if first is not None:   # the layout in the space the model's predictions are in
            anchor = guider.model_patcher.model.process_latent_in(latent_image)
            run.layout_anchor = anchor[:, :, 0] if _single_frame(anchor) else anchor
            run.anchor_size = (max(1, first.height // 2), max(1, first.width // 2))
        run.draw_stage2_schedule()
        with run_holder(guider, RUN_KEY, run):
            out = executor(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed, **kwargs)
        return out[..., :height, :width]

    def _native_first(self, guider, noise, sigmas, denoise_mask) -> NativeFirst | None:
        """The layout pass of this run, or None (the paper's layout, img2img, masks, schedule segments)."""
        settings = self.settings
        if settings.config.layout != "native first" or denoise_mask is not None:
            return None
        sigma_max = float(guider.model_patcher.get_model_object("model_sampling").sigma_max)
        if not is_full_noise(sigmas, sigma_max, settings.whole_schedule):
            return None
        native = settings.native_px // settings.latent_px
        return native_first(noise.shape[-2], noise.shape[-1], native, len(sigmas) - 1, settings.config.layout_denoise)

    def _layout_pass(self, executor, first: NativeFirst, noise, sampler, sigmas, callback, disable_pbar, seed,
                     kwargs) -> torch.Tensor:
        """The layout at about native size, sampled plainly (no run state, so every wrapper passes it
        through) from the run's seed; the conds, which size themselves to it, are put back after."""
        guider = executor.class_obj
        conds = {k: [c.copy() for c in v] for k, v in guider.conds.items()}
        small = torch.zeros((*noise.shape[:-2], first.height, first.width))
        small_noise = comfy.sample.prepare_noise(small, int(seed or 0)).to(device=noise.device, dtype=noise.dtype)
        small_kwargs = dict(kwargs)
        if small_kwargs.get("latent_shapes") is not None and len(small_kwargs["latent_shapes"]) == 1:
            small_kwargs["latent_shapes"] = [small_noise.shape]
        layout = executor(small_noise, torch.zeros_like(small_noise), sampler, sigmas, None, callback, disable_pbar,
                          seed, **small_kwargs)
        guider.conds = conds
        return layout

    def _report_plain(self, note: str, first: NativeFirst) -> None:
        notes = [note]
        kind = "direct" if first.is_whole_run else run_kind(self.settings.config, True)
        ignored = ignored_settings(self.settings.config, kind, None)
        if ignored:
            notes.append(f"ignored by this run ({'sampled directly' if kind == 'direct' else kind}): "
                         + ", ".join(ignored))
        log.info("CutDiffusion: %s", "; ".join(notes))
        self.report.plan, self.report.notes, self.report.layout = None, notes, first
        self.report.stage1_evaluations = self.report.stage2_evaluations = 0

    def _start_run(self, guider, noise, sigmas, seed, first: NativeFirst | None = None) -> RunState | None:
        """Plan this run, or None where it is plain sampling (said in the log and the report)."""
        if getattr(noise, "is_nested", False) or not (noise.ndim == 4 or _single_frame(noise)):
            raise ValueError("CutDiffusion works on image latents [B, C, H, W] (or one frame [B, C, 1, H, W]); "
                             "this model's latent is "
                             f"{'nested' if getattr(noise, 'is_nested', False) else tuple(noise.shape)}")
        check_conds(guider.conds)
        _check_other_patches(guider.model_options)
        model_sampling = guider.model_patcher.get_model_object("model_sampling")
        sigma_list = [float(s) for s in sigmas]
        plan_args = dict(height=noise.shape[-2], width=noise.shape[-1], native_px=self.settings.native_px,
                         latent_px=self.settings.latent_px, sigmas=sigma_list,
                         split_sigma=float(model_sampling.percent_to_sigma(self.settings.config.stage_split)))
        cfg = self.settings.config
        plan = plan_run(cfg, **plan_args) if first is None else plan_target_pass(cfg, **plan_args)
        report = self.report
        report.plan, report.batch, report.notes = plan, noise.shape[0], []
        report.stage1_evaluations = report.stage2_evaluations = 0
        report.layout = first
        if first is not None:
            report.notes.append(self._summary(first))
        kind = run_kind(cfg, first is not None)
        ignored = ignored_settings(cfg, kind, plan)
        if ignored:
            report.notes.append(f"ignored by this run ({kind}): " + ", ".join(ignored))
            log.info("CutDiffusion: %s", report.notes[-1])
        # One step from above the split to zero noise cannot be two stages. A one-step
        # segment of a longer schedule (KSamplerAdvanced, SplitSigmas) has its stage.
        if plan.steps == 1 and plan.stage1_steps == 1 and sigma_list[-1] <= 0.0 and 0.0 < cfg.stage_split < 1.0:
            report.plan = None
            report.notes.append("a 1-step run cannot be split into two stages: sampled plainly at the target size")
            log.info("CutDiffusion: %s", report.notes[-1])
            return None
        if plan.stage1_steps == 0 and cfg.stage_split > 0.0 and first is None:
            report.notes.append(f"denoise starts below the stage split (stage_split {cfg.stage_split}): no stage 1, "
                                "only window refinement; raise denoise or set min_stage1_steps for stage 1")
            log.warning("CutDiffusion: %s", report.notes[-1])
        log.info("CutDiffusion: %s", plan.summary())
        run = RunState(plan, int(seed or 0), report, sigma_list, guidance=guidance_strength(cfg, plan),
                       pixel_interaction=cfg.pixel_interaction, window_batch_size=cfg.window_batch_size)
        stride = window_stride_latent(cfg, self.settings.native_px, self.settings.latent_px)
        run.window_weights = make_weights(cfg.window_weights, plan.layout.win_h - stride, plan.layout.win_w - stride)
        return run

    def _pad(self, run: RunState, noise, latent_image, denoise_mask):
        """Pad to the patch grid: fresh noise in the new rows/cols, the image and mask extended."""
        plan = run.plan
        padded = torch.randn((*noise.shape[:-2], plan.height + plan.pad_h, plan.width + plan.pad_w),
                             generator=run.jitter_generator, dtype=torch.float32).to(device=noise.device,
                                                                                     dtype=noise.dtype)
        padded[..., :noise.shape[-2], :noise.shape[-1]] = noise
        pad = (0, plan.pad_w, 0, plan.pad_h)
        if _single_frame(noise):
            if denoise_mask is not None:
                raise ValueError("CutDiffusion: a noise mask (inpainting) on a one-frame [B, C, 1, H, W] latent "
                                 "is not supported at sizes that need padding to the patch grid")
            return padded, F.pad(latent_image[:, :, 0], pad, mode="replicate").unsqueeze(2), None
        latent_image = F.pad(latent_image, pad, mode="replicate")
        if denoise_mask is not None:
            denoise_mask = pad_mask(denoise_mask, noise.shape, pad)
        return padded, latent_image, denoise_mask


# -- OUTER_SAMPLE: layout, plan, pad, run, crop ---------------------------
def outer_sample(executor, *args, **kwargs):
    settings = run_of(executor.class_obj.model_options, WRAPPER_KEY)
    if settings is None:   # another pack took our settings out of the model's options
        return executor(*args, **kwargs)
    return PatchedRun(settings).sample(executor, *args, **kwargs)


# -- SAMPLER_SAMPLE: steps from the step callback ------------------------
def sampler_sample(executor, *args, **kwargs):
    def watch(run: RunState, callback):
        # A first guess at the sampler's evaluations per step; the counter learns the real one.
        name = getattr(getattr(executor.class_obj, "sampler_function", None), "__name__", "")
        run.steps.extra_after_callback = EVALUATIONS_PER_STEP.get(name.removeprefix("sample_"), 1) - 1
        return run.steps.wrap(callback)
    return watch_step_callback(executor, args, kwargs, RUN_KEY, watch)


# -- PREDICT_NOISE: which step (and stage) this evaluation is -------------
def predict_noise(executor, x, timestep, model_options={}, seed=None, **kwargs):
    run = run_of(model_options, RUN_KEY)
    if run is None:
        return executor(x, timestep, model_options, seed, **kwargs)
    run.begin_evaluation(timestep)
    try:
        return executor(x, timestep, model_options, seed, **kwargs)
    finally:
        run.end_evaluation()


# -- CALC_COND_BATCH: the stages -----------------------------------------
def calc_cond_batch(executor, model, conds, x_in, timestep, model_options):
    run = run_of(model_options, RUN_KEY)
    if run is None or run.eval_step is None:
        return executor(model, conds, x_in, timestep, model_options)
    frames = _single_frame(x_in)   # the stages cut images; the model gets its frame axis back per call
    call = _ModelCall(run, executor, model, conds, timestep, model_options, frames=frames)
    x = x_in[:, :, 0] if frames else x_in
    predictions = _stages(run, call, x)
    if run.layout_anchor is not None:
        run.layout_anchor = run.layout_anchor.to(x)   # moved once: a no-op from the second call on
        predictions = anchor_to_layout(predictions, call.slots, run.layout_anchor, *run.anchor_size)
    return [p.unsqueeze(2) for p in predictions] if frames else predictions


def _stages(run: RunState, call: "_ModelCall", x_in: torch.Tensor) -> list[torch.Tensor]:
    if run.in_stage1(run.eval_step):
        return call.stage1(x_in)
    step = run.stage2_windows(run.eval_step)
    run.report.stage2_evaluations += len(step.windows) * x_in.shape[0]
    if len(step.windows) == 1 and (step.windows[0].h, step.windows[0].w) == tuple(x_in.shape[-2:]):
        return call.whole(x_in)
    layout = run.plan.layout
    tiles = (len(layout.ys), len(layout.xs))
    # Shifted tiles cover each pixel once: one reshape cuts them out and one puts them back.
    tiled = layout.mode == "shifted" and (tiles[0] * layout.win_h, tiles[1] * layout.win_w) == tuple(x_in.shape[-2:])
    per_call = windows_per_call(run, call.model, x_in, step.windows[0], call.halves)
    predictions = stage2_denoise(x_in, call.windows(tuple(x_in.shape[-2:]), step.shift), step, call.slots,
                                 windows_per_call=per_call, weights=run.window_weights,
                                 tiles=tiles if tiled else None, buffers=run.blend_buffers_for)
    if run.plan.guided:
        weight = global_guidance_weight(run.guidance, run.eval_step - run.plan.stage1_steps,
                                        run.plan.stage2_steps)
        if run.plan.guidance == "layout":   # the patches' block means only
            grid = run.plan.grid
            predictions = guide_low_frequencies(predictions, call.stage1(x_in), weight, grid.rows, grid.cols)
        else:
            predictions = guide_by_patches(predictions, call.stage1(x_in), weight)
    return predictions


def windows_per_call(run: RunState, model, x_in, window: Window, cond_halves: int) -> int:
    """How many windows (or patches) of `window`'s shape go to the model in one call: the user's
    window_batch_size, or what free memory holds."""
    if run.window_batch_size > 0:
        return run.window_batch_size
    # Sized once per run and shape: free memory hardly moves between steps, and asking for it
    # (torch.cuda.memory_stats) costs host time on every step.
    key = (window.h, window.w, tuple(x_in.shape[:2]), cond_halves, x_in.device)
    if key not in run.window_batches:
        free = comfy.model_management.get_free_memory(x_in.device)
        per_window = model.memory_required([max(1, cond_halves) * x_in.shape[0], x_in.shape[1],
                                            window.h, window.w])
        # Same 1.5x safety margin ComfyUI uses when it batches conds.
        run.window_batches[key] = int(max(1, min(MAX_AUTO_WINDOW_BATCH, free // (1.5 * per_window))))
    return run.window_batches[key]


class _ModelCall:
    """One ComfyUI calc_cond_batch call, offered to the stages as `denoise(images, views)`:
    each stack of patches or windows goes to the model with conds cut to match."""

    def __init__(self, run: RunState, executor, model, conds, timestep, model_options, frames: bool = False):
        self.run, self.executor, self.model = run, executor, model
        self.conds, self.timestep, self.model_options = conds, timestep, model_options
        self.frames = frames   # the model takes [B, C, 1, H, W]
        self.slots = [c is not None for c in conds]
        self.halves = sum(self.slots)

    def _model(self, images: torch.Tensor, views: int, conds: list, where: dict | None = None) -> list[torch.Tensor]:
        comfy.model_management.throw_exception_if_processing_interrupted()
        if self.frames:
            images = images.unsqueeze(2)
        options = self.model_options
        if where:   # the run's own options stay as they are; this call's copy says where its images lie
            options = dict(options, transformer_options={**options.get("transformer_options", {}), **where})
        out = self.executor(self.model, conds, images, _repeat_timestep(self.timestep, views), options)
        return [o[:, :, 0] for o in out] if self.frames else out

    def whole(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The model on the whole frame, as without the patch (one window covers it)."""
        return self._model(x, 1, self.conds)

    def stage1(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stage 1 on the frame `x`: the strided patches, exchanged, through the model, relocated."""
        run, batch = self.run, x.shape[0]
        grid = run.plan.grid
        run.report.stage1_evaluations += grid.n * batch
        patch_shape = torch.Size((grid.n * batch, x.shape[1], grid.patch_h, grid.patch_w))
        permutation = (run.permutation(patch_shape, x.device)
                       if run.pixel_interaction and grid.n > 1 else None)
        patches_per_call = windows_per_call(run, self.model, x, Window(0, 0, grid.patch_h, grid.patch_w), self.halves)
        frame = tuple(x.shape[-2:])

        def denoise(stack: torch.Tensor, patches: range) -> list[torch.Tensor]:
            view = lambda image: unfold_patches(image, grid.rows, grid.cols)[patches.start * batch:
                                                                             patches.stop * batch]
            conds = [None if c is None else [views_of_image_conds(cond, frame, batch, view) for cond in c]
                     for c in self.conds]
            return self._model(stack, len(patches), conds, patch_views(grid, patches, frame))
        return stage1_denoise(x, denoise, grid, permutation, patches_per_call)

    def windows(self, frame_hw: tuple[int, int], shift: tuple[int, int]):
        """`denoise` for stage 2's windows, which lie in the `frame_hw` frame rolled by `-shift`."""
        def denoise(images: torch.Tensor, windows: list[Window]) -> list[torch.Tensor]:
            controls: dict = {}  # one cropped copy per control, shared by cond and uncond so they still batch
            batch = images.shape[0] // len(windows)
            conds = [window_conds(self.model, c, windows, batch, frame_hw, shift, self.run, controls)
                     for c in self.conds]
            return self._model(images, len(windows), conds, window_views(windows, frame_hw, shift))
        return denoise


def apply_cutdiffusion(model, config: CutDiffusionConfig, report: RunReport | None = None, vae=None):
    """Validate, then return a patched clone of `model` (the input is left untouched). `vae`: native
    first's layout is upscaled in pixel space through it (decode, bicubic, encode) instead of in
    latent space."""
    validate_config(config)
    scale = latent_px(model)
    validate_for_latent(config, scale)
    native_px = config.patch_size or native_size_px(model)
    validate_stride(config.window_stride, native_px)
    if vae is not None:
        check_vae(vae, model)
    settings = PatchSettings(config, native_px, scale, report=None if report is None else weakref.ref(report),
                             vae=None if vae is None else weakref.ref(vae))
    return install(model, WRAPPER_KEY, {WRAPPERS.OUTER_SAMPLE: outer_sample,
                                         WRAPPERS.SAMPLER_SAMPLE: sampler_sample,
                                         WRAPPERS.PREDICT_NOISE: predict_noise,
                                         WRAPPERS.CALC_COND_BATCH: calc_cond_batch}, settings)


def sample(model, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str, positive, negative,
           latent: dict, denoise: float = 1.0) -> dict:
    """KSampler's sampling (ComfyUI's noise, preview callback, progress bar) on a given MODEL."""
    import latent_preview  # ComfyUI's top-level module; only there inside a ComfyUI process

    settings = run_of(model.model_options, WRAPPER_KEY)
    if settings is not None and denoise > 0.9999:   # KSampler's own test for its whole schedule
        model = model.clone()
        model.model_options["transformer_options"][WRAPPER_KEY] = replace(settings, whole_schedule=True)
    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    callback = latent_preview.prepare_callback(model, steps)
    samples = comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                                  denoise=denoise, noise_mask=latent.get("noise_mask"), callback=callback,
                                  disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    out = latent.copy()
    out["samples"] = samples
    return out
