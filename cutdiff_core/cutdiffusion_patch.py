"""CutDiffusion as a ComfyUI model patch (spec 3.7).

One ordinary sampling run on the full-size latent; only the denoiser changes
with the step. Four wrappers on a *clone* of the ModelPatcher, all through
ComfyUI's public `add_wrapper_with_key`:

- OUTER_SAMPLE: resolves the plan for this run (sizes, sigmas), creates the
  run's state in the run's own model options, pads to a patch-grid multiple
  and crops back.
- SAMPLER_SAMPLE: counts finished steps through the step callback, so a
  second-order sampler's extra evaluation of the last stage-1 step is still
  stage 1.
- PREDICT_NOISE, stage 1: the full latent as its strided patch stack,
  permuted across patches per element, through the normal CFG path, back.
- CALC_COND_BATCH, stage 2: MultiDiffusion windows, cond and uncond alike.

The ComfyUI side of CutDiffusion: everything here runs inside a sampling run;
the geometry it calls (plan, patches, windows) is plain torch.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

import comfy.conds
import comfy.model_base
import comfy.model_management
import comfy.patcher_extension
import comfy.sampler_helpers
import comfy.utils

from .config import MAX_AUTO_WINDOW_BATCH, CutDiffusionConfig, validate_config, validate_stride
from .control_hints import crop_control
from .patches import fold_patches, permute_patches, unfold_patches, unpermute_patches
from .plan import LATENT_SCALE, Window, global_guidance_weight, make_plan
from .run_state import EXTRA_EVALUATIONS_AFTER_CALLBACK, RunReport, RunState
from .size_cond import with_window_crops
from .windows import TileCollector, WindowBlender, crop_windows, make_weights, tile_stack

__all__ = ["CutDiffusionConfig", "CutDiffusionPatch", "RunReport", "apply_cutdiffusion", "cutdiffusion_stage",
           "native_size_px", "sample", "MAX_AUTO_WINDOW_BATCH", "RUN_KEY", "WRAPPER_KEY", "Window"]

log = logging.getLogger("cutdiffusion")

WRAPPER_KEY = "cutdiffusion"
RUN_KEY = "cutdiffusion_run"
_WRAPPERS = comfy.patcher_extension.WrappersMP

# Native (training) resolutions in pixels, by ComfyUI model config class name
# (comfy/supported_models.py of ComfyUI 0.3.75 and 0.33.0).
_NATIVE_PX_BY_CONFIG = {
    "SD15": 512, "SD15_instructpix2pix": 512, "SD20": 512, "SD21UnclipL": 768, "SD21UnclipH": 768,
    "SDXL": 1024, "SDXLRefiner": 1024, "SSD1B": 1024, "Segmind_Vega": 1024, "KOALA_700M": 1024,
    "KOALA_1B": 1024, "SDXL_instructpix2pix": 1024,
    # DiT / flow-matching families (issue 15).
    "SD3": 1024,                                   # SD3 / SD3.5 (one config class for both)
    "Flux": 1024, "FluxSchnell": 1024, "FluxInpaint": 1024,
    "Chroma": 1024,          # Flux-Schnell-derived; trained at 512 and 1024 px (unsure which dominates)
    "Lumina2": 1024, "ZImage": 1024,               # Lumina-Image 2.0, Z-Image (Turbo)
    "QwenImage": 1328,       # Qwen-Image's 1:1 training size (its model card's 1328x1328)
    "HiDream": 1024,
    "AuraFlow": 1024, "PixArtSigma": 1024, "HunyuanDiT": 1024, "HunyuanDiT1": 1024,
    # Latents that are not 8 px per latent px (see _LATENT_PX_BY_CONFIG): known, but refused below.
    "Flux2": 1024, "HunyuanImage21": 2048, "ChromaRadiance": 1024,
}
_NATIVE_PX_BY_LATENT_FORMAT = {"SD15": 512, "SDXL": 1024, "SD3": 1024, "Flux": 1024}
# Pixels per latent pixel where it is not the LATENT_SCALE the pack counts in (newer ComfyUI
# also says it as the latent format's `spacial_downscale_ratio`; 0.3.75 does not).
_LATENT_PX_BY_CONFIG = {"Flux2": 16, "HunyuanImage21": 32, "ChromaRadiance": 1}


def native_size_px(model) -> int:
    """The model's training resolution in pixels, or a clear error asking for patch_size."""
    base = model.model
    declared = getattr(getattr(base, "model_config", None), "native_size_px", None)
    if declared:
        return int(declared)  # a model config may say it outright (the pack's demo model does)
    config_name = type(getattr(base, "model_config", None)).__name__
    latent_px = _LATENT_PX_BY_CONFIG.get(config_name,
                                         getattr(base.latent_format, "spacial_downscale_ratio", LATENT_SCALE))
    if latent_px != LATENT_SCALE:
        native = _NATIVE_PX_BY_CONFIG.get(config_name)
        raise ValueError(f"CutDiffusion: a {config_name} model's latent has {latent_px} px per latent pixel"
                         f"{f' (trained at {native} px)' if native else ''}, but patch_size counts "
                         f"{LATENT_SCALE} px per latent pixel; this model family is not supported yet")
    if config_name == "SD20" and base.model_type == comfy.model_base.ModelType.V_PREDICTION:
        return 768  # SD 2.x 768-v
    if config_name in _NATIVE_PX_BY_CONFIG:
        return _NATIVE_PX_BY_CONFIG[config_name]
    format_name = type(base.latent_format).__name__
    if format_name in _NATIVE_PX_BY_LATENT_FORMAT:
        return _NATIVE_PX_BY_LATENT_FORMAT[format_name]
    raise ValueError(f"CutDiffusion: cannot tell the native resolution of a {config_name} model "
                     f"(latent format {format_name}); set patch_size to its training size in px, e.g. 1024")


def _sdxl_crop_slot(model, y_dim: int) -> int | None:
    """Index of the crop_h embedding in SDXL's `y`, or None if the model has no size conditioning."""
    if isinstance(model, comfy.model_base.SDXLRefiner):
        return y_dim - 3 * 256   # ... crop_h, crop_w, aesthetic_score
    if isinstance(model, comfy.model_base.SDXL):
        return y_dim - 4 * 256   # ... crop_h, crop_w, target_h, target_w
    return None


def _run_state(model_options: dict) -> RunState | None:
    return model_options.get("transformer_options", {}).get(RUN_KEY)


def cutdiffusion_stage(model_options: dict, timestep: torch.Tensor) -> int | None:
    """For other patches (AdaptiveDiffusion): the CutDiffusion stage (1 or 2) of the model
    evaluation about to happen at `timestep`, or None outside a CutDiffusion run."""
    run = _run_state(model_options)
    if run is None:
        return None
    return 1 if run.in_stage1(run.peek_step(timestep)) else 2


def _move_innermost(wrappers_by_key: dict, key: str) -> None:
    """Make `key`'s wrappers the innermost of this run's PREDICT_NOISE wrappers.

    Step caches (LazyCache, AdaptiveDiffusion) wrap PREDICT_NOISE too; they must
    see the full latent once per step, not the permuted patch stack, whichever
    order the nodes were applied in. The dict is the run's own copy.
    """
    if key in wrappers_by_key:
        wrappers_by_key[key] = wrappers_by_key.pop(key)


def _check_conds(conds: dict) -> None:
    for name, cond_list in conds.items():
        for cond in cond_list or []:
            for key in ("area", "mask"):
                if key in cond:
                    raise ValueError(f"CutDiffusion: {key} conditioning (e.g. Conditioning (Set Area/Mask)) in the "
                                     f"{name} prompt is not supported: patches and windows would each get it in the "
                                     "wrong place. Use plain prompts, or sample regions without CutDiffusion.")


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
    if "easycache" in wrappers.get(_WRAPPERS.DIFFUSION_MODEL, {}):
        raise ValueError(f"CutDiffusion: {_INCOMPATIBLE['easycache']}")
    for fn in model_options.get("sampler_post_cfg_function", []):
        if getattr(fn, "__module__", "") in _INCOMPATIBLE:
            raise ValueError(f"CutDiffusion: {_INCOMPATIBLE[fn.__module__]}")


def _pad_mask(mask: torch.Tensor, shape: torch.Size, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """The denoise mask for the padded latent, one per image.

    ComfyUI 0.4+ hands the wrapper a mask already shaped like the latent, which
    `prepare_mask` must not see again (it would fold the batch into channels and
    give every image image 0's mask); older versions prepare it later, inside the
    sampler, so there the padded mask keeps one channel to be prepared once.
    """
    prepared_by_host = tuple(mask.shape) == tuple(shape)
    if not prepared_by_host:
        mask = comfy.sampler_helpers.prepare_mask(mask, shape, mask.device)[:, :1]
    return F.pad(mask, pad, mode="replicate")


def _pad_image_conds(conds: dict, height: int, width: int, pad: tuple[int, int, int, int]) -> None:
    """Say the requested size to size-conditioned models, and pad image-shaped conds like the latent.

    ComfyUI derives SDXL's size conditioning from the latent it samples; on the padded
    latent that would be the padded size, but the reference conditions on the image
    asked for. Inpainting inputs at the requested size are padded the way the latent
    is, instead of being stretched to the padded size by the model's own resize.
    """
    for cond_list in conds.values():
        for cond in cond_list or []:
            cond.setdefault("width", width * LATENT_SCALE)
            cond.setdefault("height", height * LATENT_SCALE)
            for key in ("concat_latent_image", "concat_mask"):   # latent size, or pixels for the mask
                image = cond.get(key)
                if isinstance(image, torch.Tensor) and image.ndim == 4:
                    scale = image.shape[-1] // width
                    if scale in (1, LATENT_SCALE) and tuple(image.shape[-2:]) == (height * scale, width * scale):
                        cond[key] = F.pad(image, tuple(p * scale for p in pad), mode="replicate")


def _views_of_image_conds(cond: dict, frame_hw: tuple[int, int], batch: int, view) -> dict:
    """A copy of `cond` whose image-shaped model conds (an inpainting model's concat
    latent and mask) are cut the way the latent is: `view` maps the full frame
    `[batch, C, H, W]` to the stack of patches or windows the model sees."""
    model_conds = cond.get("model_conds", {})
    cut = {}
    for name, value in model_conds.items():
        data = getattr(value, "cond", None)
        if (isinstance(value, comfy.conds.CONDNoiseShape) and isinstance(data, torch.Tensor) and data.ndim == 4
                and tuple(data.shape[-2:]) == tuple(frame_hw)):
            cut[name] = comfy.conds.CONDNoiseShape(view(comfy.utils.repeat_to_batch_size(data, batch)))
    return dict(cond, model_conds=dict(model_conds, **cut)) if cut else cond


def _repeat_timestep(timestep: torch.Tensor, times: int) -> torch.Tensor:
    return timestep.repeat(times) if timestep.ndim == 1 else timestep


class CutDiffusionPatch:
    """The four wrappers, bound to one configuration."""

    def __init__(self, config: CutDiffusionConfig, native_px: int, report: RunReport | None = None):
        self.config = config
        self.native = native_px // LATENT_SCALE
        stride_px = config.window_stride or native_px // 2
        self.stride = max(1, stride_px // LATENT_SCALE)
        self.report = report

    def __deepcopy__(self, memo):
        return self  # immutable settings; ModelPatcher.clone deep-copies model_options

    def apply(self, model):
        """A clone of `model` with the patch (replacing an earlier CutDiffusion patch on it)."""
        patched = model.clone()
        for kind, fn in ((_WRAPPERS.OUTER_SAMPLE, self.outer_sample), (_WRAPPERS.SAMPLER_SAMPLE, self.sampler_sample),
                         (_WRAPPERS.PREDICT_NOISE, self.predict_noise), (_WRAPPERS.CALC_COND_BATCH, self.calc_cond_batch)):
            patched.remove_wrappers_with_key(kind, WRAPPER_KEY)
            patched.add_wrapper_with_key(kind, WRAPPER_KEY, fn)
        return patched

    # -- OUTER_SAMPLE ---------------------------------------------------------
    def outer_sample(self, executor, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
                     disable_pbar=False, seed=None, **kwargs):
        guider = executor.class_obj
        run = self._start_run(guider, noise, sigmas, seed)
        if run is None:
            return executor(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed, **kwargs)
        height, width = noise.shape[-2:]
        plan = run.plan
        if plan.pad_h or plan.pad_w:
            noise, latent_image, denoise_mask = self._pad(run, noise, latent_image, denoise_mask)
            _pad_image_conds(guider.conds, height, width, (0, plan.pad_w, 0, plan.pad_h))
            if kwargs.get("latent_shapes") is not None and len(kwargs["latent_shapes"]) == 1:
                kwargs["latent_shapes"] = [noise.shape]
        run.draw_stage2_schedule()

        # The guider's model_options are this run's own copy (CFGGuider.sample clones
        # them), so the state dies with the run and never reaches the user's MODEL.
        transformer_options = guider.model_options.setdefault("transformer_options", {})
        transformer_options[RUN_KEY] = run
        _move_innermost(transformer_options.get("wrappers", {}).get(_WRAPPERS.PREDICT_NOISE, {}), WRAPPER_KEY)
        try:
            out = executor(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed, **kwargs)
        finally:
            transformer_options.pop(RUN_KEY, None)
        return out[..., :height, :width]

    def _start_run(self, guider, noise, sigmas, seed) -> RunState | None:
        """Plan this run, or None where it is plain sampling (said in the log and the report)."""
        if getattr(noise, "is_nested", False) or noise.ndim != 4:
            raise ValueError("CutDiffusion works on image latents [B, C, H, W]; this model's latent is "
                             f"{'nested' if getattr(noise, 'is_nested', False) else tuple(noise.shape)}")
        _check_conds(guider.conds)
        _check_other_patches(guider.model_options)
        cfg = self.config
        model_sampling = guider.model_patcher.get_model_object("model_sampling")
        sigma_list = [float(s) for s in sigmas]
        plan = make_plan(noise.shape[-2], noise.shape[-1], self.native, self.native, self.stride, self.stride,
                         sigma_list, float(model_sampling.percent_to_sigma(cfg.stage_split)), cfg.stage_split,
                         cfg.window_jitter, cfg.stage2_mode, cfg.min_stage1_steps, cfg.global_guidance > 0)
        report = self.report if self.report is not None else RunReport()
        report.plan, report.batch, report.notes = plan, noise.shape[0], []
        report.stage1_evaluations = report.stage2_evaluations = 0
        # One step from above the split to zero noise cannot be two stages. A one-step
        # segment of a longer schedule (KSamplerAdvanced, SplitSigmas) has its stage.
        if plan.steps == 1 and plan.stage1_steps == 1 and sigma_list[-1] <= 0.0 and 0.0 < cfg.stage_split < 1.0:
            report.plan = None
            report.notes.append("a 1-step run cannot be split into two stages: sampled plainly at the target size")
            log.info("CutDiffusion: %s", report.notes[-1])
            return None
        if plan.stage1_steps == 0 and cfg.stage_split > 0.0:
            report.notes.append(f"denoise starts below the stage split (stage_split {cfg.stage_split}): no stage 1, "
                                "only window refinement; raise denoise or set min_stage1_steps for stage 1")
            log.warning("CutDiffusion: %s", report.notes[-1])
        log.info("CutDiffusion: %s", plan.summary())
        run = RunState(plan, int(seed or 0), report, sigma_list)
        layout = plan.layout
        run.window_weights = make_weights(cfg.window_weights, layout.win_h - self.stride, layout.win_w - self.stride)
        return run

    def _pad(self, run: RunState, noise, latent_image, denoise_mask):
        """Pad to the patch grid: fresh noise in the new rows/cols, the image and mask extended."""
        plan = run.plan
        padded = torch.randn((*noise.shape[:2], plan.height + plan.pad_h, plan.width + plan.pad_w),
                             generator=run.jitter_generator, dtype=torch.float32).to(device=noise.device,
                                                                                     dtype=noise.dtype)
        padded[..., :noise.shape[-2], :noise.shape[-1]] = noise
        pad = (0, plan.pad_w, 0, plan.pad_h)
        latent_image = F.pad(latent_image, pad, mode="replicate")
        if denoise_mask is not None:
            denoise_mask = _pad_mask(denoise_mask, noise.shape, pad)
        return padded, latent_image, denoise_mask

    # -- SAMPLER_SAMPLE -------------------------------------------------------
    def sampler_sample(self, executor, *args, **kwargs):
        # args: (guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)
        args = list(args)
        extra_args = kwargs["extra_args"] if "extra_args" in kwargs else args[2]
        run = _run_state(extra_args.get("model_options", {}))
        if run is not None:
            sampler_function = getattr(executor.class_obj, "sampler_function", None)
            run.extra_after_callback = EXTRA_EVALUATIONS_AFTER_CALLBACK.get(getattr(sampler_function, "__name__", ""), 0)
            if "callback" in kwargs:
                kwargs["callback"] = run.counting_callback(kwargs["callback"])
            else:
                args[3] = run.counting_callback(args[3])
        return executor(*args, **kwargs)

    # -- PREDICT_NOISE: every evaluation; stage 1 here ------------------------
    def predict_noise(self, executor, x, timestep, model_options={}, seed=None, **kwargs):
        run = _run_state(model_options)
        if run is None:
            return executor(x, timestep, model_options, seed, **kwargs)
        step = run.begin_evaluation(timestep)
        try:
            if not run.in_stage1(step):
                return executor(x, timestep, model_options, seed, **kwargs)  # stage 2: see calc_cond_batch
            return self._stage1(run, executor, x, timestep, model_options, seed, **kwargs)
        finally:
            run.eval_step = None

    def _stage1(self, run: RunState, executor, x, timestep, model_options, seed, **kwargs):
        stack, perm = self._patch_stack(run, x)
        run.inside_stage1 = True
        try:
            out = executor(stack, _repeat_timestep(timestep, run.plan.grid.n), model_options, seed, **kwargs)
        finally:
            run.inside_stage1 = False
        return self._patches_to_image(run, out, perm)

    def _patch_stack(self, run: RunState, x):
        """The strided patch stack of `x`, pixels exchanged across patches; (stack, permutation or None)."""
        grid = run.plan.grid
        stack = unfold_patches(x, grid.rows, grid.cols)
        run.report.stage1_evaluations += stack.shape[0]
        if not (self.config.pixel_interaction and grid.n > 1):
            return stack, None
        perm = run.permutation(stack.shape, stack.device)
        return permute_patches(stack, perm), perm

    @staticmethod
    def _patches_to_image(run: RunState, out, perm):
        """Pixel relocation of a patch-stack prediction back into the full-size frame."""
        if perm is not None:
            out = unpermute_patches(out, perm)
        return fold_patches(out, run.plan.grid.rows, run.plan.grid.cols)

    # -- CALC_COND_BATCH: stage 2 (and stage-1 batching) -------------------
    def calc_cond_batch(self, executor, model, conds, x_in, timestep, model_options):
        run = _run_state(model_options)
        if run is None or run.eval_step is None:
            return executor(model, conds, x_in, timestep, model_options)
        if run.inside_stage1:
            return self._stage1_batches(run, executor, model, conds, x_in, timestep, model_options)
        step = run.stage2_windows(run.eval_step)
        windows, (oy, ox) = step.windows, step.shift
        batch = x_in.shape[0]
        run.report.stage2_evaluations += len(windows) * batch
        if len(windows) == 1 and windows[0].h == x_in.shape[-2] and windows[0].w == x_in.shape[-1]:
            return executor(model, conds, x_in, timestep, model_options)

        # Shifted stage 2 works on the latent rolled by the step's offset; overlap has none.
        x_work = torch.roll(x_in, (-oy, -ox), (-2, -1)) if oy or ox else x_in
        layout = run.plan.layout
        # Shifted tiles cover each pixel once: one reshape cuts them out and one puts them back,
        # instead of a crop and a weighted blend per tile (the average of one value is that value).
        rows, cols = len(layout.ys), len(layout.xs)
        tiled = layout.mode == "shifted" and (rows * layout.win_h, cols * layout.win_w) == tuple(x_in.shape[-2:])
        stack = tile_stack(x_work, rows, cols) if tiled else None
        assemblers = [None if c is None else TileCollector(rows, cols) if tiled else
                      WindowBlender(x_work, run.window_weights, run.blend_buffers_for(i, x_work))
                      for i, c in enumerate(conds)]
        chunk = self._window_batch(run, model, x_in, windows[0], sum(c is not None for c in conds))
        for start in range(0, len(windows), chunk):
            comfy.model_management.throw_exception_if_processing_interrupted()
            part = windows[start:start + chunk]
            controls: dict = {}  # one cropped copy per control, shared by cond and uncond so they still batch
            window_conds = [self._window_conds(model, c, part, batch, x_in.shape[-2:], (oy, ox), run, controls)
                            for c in conds]
            x_part = stack[start * batch:(start + len(part)) * batch] if tiled else crop_windows(x_work, part)
            outs = executor(model, window_conds, x_part, _repeat_timestep(timestep, len(part)), model_options)
            for assembler, out in zip(assemblers, outs):
                if assembler is not None:
                    assembler.add(out, part)
        results = [a.result() if a is not None else torch.zeros_like(x_in) for a in assemblers]
        if oy or ox:
            results = [torch.roll(r, (oy, ox), (-2, -1)) for r in results]
        if run.plan.global_guidance:
            results = self._guide_by_patches(run, executor, model, conds, x_in, timestep, model_options, results)
        return results

    def _guide_by_patches(self, run: RunState, executor, model, conds, x_in, timestep, model_options, local):
        """Beyond the paper: mix the stage-1 patches' prediction of the whole image into the
        windows' (global_guidance). Stage-2 windows see only part of an enlarged subject and
        invent small new ones around it; the strided patches each see the whole layout."""
        stage2_step = run.eval_step - run.plan.stage1_steps
        weight = global_guidance_weight(self.config.global_guidance, stage2_step, run.plan.stage2_steps)
        stack, perm = self._patch_stack(run, x_in)
        outs = self._stage1_batches(run, executor, model, conds, stack, _repeat_timestep(timestep, run.plan.grid.n),
                                    model_options)
        # Not torch.lerp: at weight 1 this is the patches' prediction exactly.
        return [window_pred if cond is None else
                weight * self._patches_to_image(run, out, perm) + (1.0 - weight) * window_pred
                for out, window_pred, cond in zip(outs, local, conds)]

    def _stage1_batches(self, run: RunState, executor, model, conds, x_in, timestep, model_options):
        """The patch stack in batches of `window_batch_size` patches, so a small window batch
        bounds stage 1's memory as it does stage 2's (the stack is patch-major: a batch of
        whole patches keeps every cond aligned with its images)."""
        grid = run.plan.grid
        per_patch = x_in.shape[0] // grid.n
        patches = self._window_batch(run, model, x_in[:per_patch], Window(0, 0, *x_in.shape[-2:]),
                                     sum(c is not None for c in conds))
        frame = (grid.padded_h, grid.padded_w)

        def patch_conds(start: int, stop: int):
            view = lambda image: unfold_patches(image, grid.rows, grid.cols)[start:stop]
            return [None if c is None else [_views_of_image_conds(cond, frame, per_patch, view) for cond in c]
                    for c in conds]

        if patches >= grid.n:
            return executor(model, patch_conds(0, x_in.shape[0]), x_in, timestep, model_options)
        step = patches * per_patch
        parts = []
        for start in range(0, x_in.shape[0], step):
            comfy.model_management.throw_exception_if_processing_interrupted()
            parts.append(executor(model, patch_conds(start, start + step), x_in[start:start + step],
                                  timestep[start:start + step], model_options))
        return [torch.cat(outs) for outs in zip(*parts)]

    def _window_batch(self, run: RunState, model, x_in, window: Window, cond_halves: int) -> int:
        if self.config.window_batch_size > 0:
            return self.config.window_batch_size
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

    @staticmethod
    def _window_conds(model, cond_list, windows: list[Window], batch: int, latent_hw, shift: tuple[int, int],
                      run: RunState, controls: dict):
        """Copies of the conds for a chunk of windows: SDXL `y` with each window's crop
        offset (spec 3.4) and ControlNet hints cropped to each window (windows are in the
        frame of the latent rolled by `-shift`)."""
        height, width = latent_hw
        if cond_list is None:
            return None
        out = []
        for cond in cond_list:
            control = cond.get("control")
            if control is not None:
                if id(control) not in controls:
                    controls[id(control)] = crop_control(control, windows, batch, (height, width), shift,
                                                         run.hint_cache)
                cond = dict(cond, control=controls[id(control)])
            cond = _views_of_image_conds(cond, (height, width), batch, lambda image: crop_windows(
                torch.roll(image, (-shift[0], -shift[1]), (-2, -1)) if shift != (0, 0) else image, windows))
            model_conds = cond.get("model_conds", {})
            y = model_conds.get("y")
            slot = _sdxl_crop_slot(model, y.cond.shape[-1]) if y is not None else None
            if slot is not None:
                crops = [(cond.get("crop_h", 0) + (w.y + shift[0]) % height * LATENT_SCALE,
                          cond.get("crop_w", 0) + (w.x + shift[1]) % width * LATENT_SCALE) for w in windows]
                y_batch = comfy.utils.repeat_to_batch_size(y.cond, batch)
                embed = run.cached_embedder(model.embedder, y_batch.device, y_batch.dtype)
                y_windows = with_window_crops(y_batch, slot, crops, embed)
                cond = dict(cond, model_conds=dict(model_conds, y=comfy.conds.CONDRegular(y_windows)))
            out.append(cond)
        return out


def apply_cutdiffusion(model, config: CutDiffusionConfig, report: RunReport | None = None):
    """Validate, then return a patched clone of `model` (the input is left untouched)."""
    validate_config(config)
    native_px = config.patch_size or native_size_px(model)
    validate_stride(config.window_stride, native_px)
    return CutDiffusionPatch(config, native_px, report).apply(model)


def sample(model, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str, positive, negative,
           latent: dict, denoise: float = 1.0) -> dict:
    """KSampler's sampling (ComfyUI's noise, preview callback, progress bar) on a given MODEL."""
    import latent_preview  # ComfyUI's top-level module; only there inside a ComfyUI process

    import comfy.sample
    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    callback = latent_preview.prepare_callback(model, steps)
    samples = comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                                  denoise=denoise, noise_mask=latent.get("noise_mask"), callback=callback,
                                  disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    out = latent.copy()
    out["samples"] = samples
    return out
