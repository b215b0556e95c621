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

This is the only module of cutdiff_core that imports ComfyUI.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

import comfy.conds
import comfy.model_base
import comfy.model_management
import comfy.patcher_extension
import comfy.sampler_helpers
import comfy.utils

from .patches import draw_permutation, fold_patches, permute_patches, unfold_patches, unpermute_patches
from .plan import LATENT_SCALE, Plan, Window, make_plan
from .size_cond import with_window_crops
from .windows import WEIGHTS, WindowBlender, crop_windows

log = logging.getLogger("cutdiffusion")

WRAPPER_KEY = "cutdiffusion"
RUN_KEY = "cutdiffusion_run"
MAX_AUTO_WINDOW_BATCH = 16  # the reference's window batch
_WRAPPERS = comfy.patcher_extension.WrappersMP


@dataclass(frozen=True)
class CutDiffusionConfig:
    """The patch's settings, as on the CutDiffusion node (sizes in pixels)."""
    patch_size: int = 0          # native size; 0 = from the model type
    window_stride: int = 0       # 0 = half the patch size (the reference's 512 px on SDXL)
    stage_split: float = 0.5     # ComfyUI percent: stage 1 ends at percent_to_sigma(stage_split)
    window_batch_size: int = 0   # 0 = as many as fit in free memory, at most MAX_AUTO_WINDOW_BATCH
    window_jitter: bool = True
    pixel_interaction: bool = True
    window_weights: str = "uniform"


RANGES = {
    "patch_size": (0, 16384),
    "window_stride": (0, 16384),
    "stage_split": (0.0, 1.0),
    "window_batch_size": (0, 256),
}


def validate_config(config: CutDiffusionConfig) -> None:
    """Raise ValueError naming the field and its allowed range, before any work starts."""
    for name, (lo, hi) in RANGES.items():
        value = getattr(config, name)
        if not lo <= value <= hi:
            raise ValueError(f"CutDiffusion: {name} = {value} is outside the allowed range [{lo}, {hi}]")
    for name in ("patch_size", "window_stride"):
        value = getattr(config, name)
        if value % LATENT_SCALE:
            raise ValueError(f"CutDiffusion: {name} = {value} must be a multiple of {LATENT_SCALE} px (0 = automatic)")
    if 0 < config.patch_size < 64:
        raise ValueError(f"CutDiffusion: patch_size = {config.patch_size} must be 0 (automatic) or in [64, 16384] px")
    if config.patch_size:
        _validate_stride(config.window_stride, config.patch_size)
    if config.window_weights not in WEIGHTS:
        raise ValueError(f"CutDiffusion: window_weights = {config.window_weights!r} must be one of {sorted(WEIGHTS)}")


def _validate_stride(stride: int, patch_px: int) -> None:
    if stride > patch_px:
        raise ValueError(f"CutDiffusion: window_stride = {stride} must be in [8, {patch_px}] px (the patch size), "
                         f"or 0 for half the patch size")


# Native (training) resolutions in pixels, by ComfyUI model config class name.
_NATIVE_PX_BY_CONFIG = {
    "SD15": 512, "SD15_instructpix2pix": 512, "SD20": 512, "SD21UnclipL": 768, "SD21UnclipH": 768,
    "SDXL": 1024, "SDXLRefiner": 1024, "SSD1B": 1024, "Segmind_Vega": 1024, "KOALA_700M": 1024,
    "KOALA_1B": 1024, "SDXL_instructpix2pix": 1024, "SD3": 1024, "Flux": 1024, "FluxSchnell": 1024,
    "AuraFlow": 1024, "PixArtSigma": 1024, "HunyuanDiT": 1024, "HiDream": 1024, "Lumina2": 1024,
}
_NATIVE_PX_BY_LATENT_FORMAT = {"SD15": 512, "SDXL": 1024, "SD3": 1024, "Flux": 1024}


def native_size_px(model) -> int:
    """The model's training resolution in pixels, or a clear error asking for patch_size."""
    base = model.model
    declared = getattr(getattr(base, "model_config", None), "native_size_px", None)
    if declared:
        return int(declared)  # a model config may say it outright (the pack's demo model does)
    config_name = type(getattr(base, "model_config", None)).__name__
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


@dataclass
class RunReport:
    """What one sampling run did; filled by the patch, read by the node that ran it."""
    plan: Plan | None = None
    batch: int = 0
    stage1_evaluations: int = 0   # patch images through the denoiser (per CFG half)
    stage2_evaluations: int = 0   # window images through the denoiser (per CFG half)

    def __deepcopy__(self, memo):
        return self  # shared with model clones on purpose: it belongs to the node call that made it

    def summary(self) -> str:
        if self.plan is None:
            return "CutDiffusion: no sampling run"
        return (f"CutDiffusion: {self.plan.summary()}; made {self.stage1_evaluations} patch + "
                f"{self.stage2_evaluations} window evaluations for a batch of {self.batch}")


# Evaluations that k-diffusion samplers make in a step *after* its step callback
# (which fires right after the step's first evaluation). Only a first guess:
# the run learns the real number from the gap between its first two callbacks.
_EXTRA_EVALUATIONS_AFTER_CALLBACK = {
    "sample_heun": 1, "sample_heunpp2": 1, "sample_dpm_2": 1, "sample_dpm_2_ancestral": 1,
    "sample_dpm_2_ancestral_RF": 1, "sample_dpmpp_2s_ancestral": 1, "sample_dpmpp_2s_ancestral_RF": 1,
    "sample_dpmpp_2s_ancestral_cfg_pp": 1, "sample_dpmpp_sde": 1, "sample_dpmpp_sde_gpu": 1,
    "sample_seeds_2": 1, "sample_seeds_3": 2,
}


@dataclass
class _RunState:
    plan: Plan
    config: CutDiffusionConfig
    seed: int
    report: RunReport
    sigmas: list[float]
    steps_done: int = 0                 # step callbacks seen
    callback_seen: bool = False
    evals_since_callback: int = 0
    extra_after_callback: int = 0       # evaluations of step i that come after callback(i)
    eval_step: int | None = None        # step of the evaluation in progress
    inside_stage1: bool = False
    perm_generator: torch.Generator | None = None
    jitter_generator: torch.Generator = field(default_factory=torch.Generator)
    offsets_step: int = -1
    windows: list[Window] = field(default_factory=list)

    def __post_init__(self):
        self.jitter_generator.manual_seed(_sub_seed(self.seed, 1))

    def peek_step(self, timestep: torch.Tensor) -> int:
        """The step the next model evaluation (at `timestep`) belongs to, without counting it."""
        if self.callback_seen:
            return self.steps_done - 1 if self.evals_since_callback < self.extra_after_callback else self.steps_done
        sigma = float(timestep.reshape(-1)[0])
        lookup = sum(1 for s in self.sigmas[1:-1] if s >= sigma * (1 - 1e-4))
        return 0 if lookup <= 1 else lookup

    def begin_evaluation(self, timestep: torch.Tensor) -> int:
        """The sampling step this model evaluation belongs to.

        Heun/DPM2-style samplers evaluate the end of step i at the next step's
        sigma, after step i's callback, so neither the sigma nor the callback
        count alone tells the step: after callback(i) the next
        `extra_after_callback` evaluations are still step i. A sigma lookup
        covers samplers that never report steps.
        """
        step = self.peek_step(timestep)
        self.evals_since_callback += 1
        self.eval_step = step
        return step

    def in_stage1(self, step: int) -> bool:
        return step < self.plan.stage1_steps

    def on_step_callback(self, step: int) -> None:
        if self.callback_seen:
            self.extra_after_callback = max(0, self.evals_since_callback - 1)
        self.steps_done = int(step) + 1
        self.callback_seen = True
        self.evals_since_callback = 0

    def permutation(self, stack_shape: torch.Size, device: torch.device) -> torch.Tensor:
        if self.perm_generator is None:
            self.perm_generator = torch.Generator(device=device)
            self.perm_generator.manual_seed(_sub_seed(self.seed, 0))
        n = self.plan.grid.n
        return draw_permutation(n, stack_shape[0] // n, stack_shape[1:], self.perm_generator, device)

    def stage2_windows(self, step: int) -> list[Window]:
        """This step's windows, with fresh jitter once per step (not per evaluation)."""
        if step != self.offsets_step:
            layout = self.plan.layout
            jitter = layout.jitter_h or layout.jitter_w
            self.windows = layout.windows(layout.draw_offsets(self.jitter_generator) if jitter else None)
            self.offsets_step = step
        return self.windows

    def counting_callback(self, original: Callable | None) -> Callable:
        def callback(step, *args, **kwargs):
            self.on_step_callback(step)
            if original is not None:
                return original(step, *args, **kwargs)
        return callback


def _sub_seed(seed: int | None, stream: int) -> int:
    """Private generator seeds derived from the run's seed (never the global RNG)."""
    return (int(seed or 0) * 2 + stream) % (2 ** 63)


def _run_state(model_options: dict) -> _RunState | None:
    return model_options.get("transformer_options", {}).get(RUN_KEY)


def cutdiffusion_stage(model_options: dict, timestep: torch.Tensor) -> int | None:
    """For other patches (AdaptiveDiffusion): the CutDiffusion stage (1 or 2) of the model
    evaluation about to happen at `timestep`, or None outside a CutDiffusion run."""
    run = _run_state(model_options)
    if run is None:
        return None
    return 1 if run.in_stage1(run.peek_step(timestep)) else 2


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
        if getattr(noise, "is_nested", False) or noise.ndim != 4:
            raise ValueError("CutDiffusion works on image latents [B, C, H, W]; this model's latent is "
                             f"{'nested' if getattr(noise, 'is_nested', False) else tuple(noise.shape)}")
        guider = executor.class_obj
        model_sampling = guider.model_patcher.get_model_object("model_sampling")
        cfg = self.config
        height, width = noise.shape[-2:]
        sigma_list = [float(s) for s in sigmas]
        plan = make_plan(height, width, self.native, self.native, self.stride, self.stride, sigma_list,
                         float(model_sampling.percent_to_sigma(cfg.stage_split)), cfg.stage_split, cfg.window_jitter)
        log.info("CutDiffusion: %s", plan.summary())
        report = self.report if self.report is not None else RunReport()
        report.plan, report.batch = plan, noise.shape[0]
        report.stage1_evaluations = report.stage2_evaluations = 0
        run = _RunState(plan, cfg, int(seed or 0), report, sigma_list)

        grid = plan.grid
        if grid.pad_h or grid.pad_w:
            noise, latent_image, denoise_mask = self._pad(run, noise, latent_image, denoise_mask)
            if "latent_shapes" in kwargs and kwargs["latent_shapes"] is not None and len(kwargs["latent_shapes"]) == 1:
                kwargs["latent_shapes"] = [noise.shape]

        # The guider's model_options are this run's own copy (CFGGuider.sample clones
        # them), so the state dies with the run and never reaches the user's MODEL.
        transformer_options = guider.model_options.setdefault("transformer_options", {})
        transformer_options[RUN_KEY] = run
        try:
            out = executor(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed, **kwargs)
        finally:
            transformer_options.pop(RUN_KEY, None)
        return out[..., :height, :width]

    def _pad(self, run: _RunState, noise, latent_image, denoise_mask):
        """Pad to the patch grid: fresh noise in the new rows/cols, the image and mask extended."""
        grid = run.plan.grid
        padded = torch.randn((*noise.shape[:2], grid.padded_h, grid.padded_w), generator=run.jitter_generator,
                             dtype=torch.float32).to(device=noise.device, dtype=noise.dtype)
        padded[..., :noise.shape[-2], :noise.shape[-1]] = noise
        pad = (0, grid.pad_w, 0, grid.pad_h)
        latent_image = F.pad(latent_image, pad, mode="replicate")
        if denoise_mask is not None:
            denoise_mask = comfy.sampler_helpers.prepare_mask(denoise_mask, noise.shape, denoise_mask.device)
            denoise_mask = F.pad(denoise_mask, pad, mode="replicate")
        return padded, latent_image, denoise_mask

    # -- SAMPLER_SAMPLE -------------------------------------------------------
    def sampler_sample(self, executor, *args, **kwargs):
        # args: (guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)
        args = list(args)
        extra_args = kwargs["extra_args"] if "extra_args" in kwargs else args[2]
        run = _run_state(extra_args.get("model_options", {}))
        if run is not None:
            sampler_function = getattr(executor.class_obj, "sampler_function", None)
            run.extra_after_callback = _EXTRA_EVALUATIONS_AFTER_CALLBACK.get(getattr(sampler_function, "__name__", ""), 0)
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

    def _stage1(self, run: _RunState, executor, x, timestep, model_options, seed, **kwargs):
        grid = run.plan.grid
        stack = unfold_patches(x, grid.rows, grid.cols)
        perm = None
        if self.config.pixel_interaction and grid.n > 1:
            perm = run.permutation(stack.shape, stack.device)
            stack = permute_patches(stack, perm)
        run.inside_stage1 = True
        try:
            out = executor(stack, _repeat_timestep(timestep, grid.n), model_options, seed, **kwargs)
        finally:
            run.inside_stage1 = False
        run.report.stage1_evaluations += stack.shape[0]
        if perm is not None:
            out = unpermute_patches(out, perm)
        return fold_patches(out, grid.rows, grid.cols)

    # -- CALC_COND_BATCH: stage 2 --------------------------------------------
    def calc_cond_batch(self, executor, model, conds, x_in, timestep, model_options):
        run = _run_state(model_options)
        if run is None or run.inside_stage1 or run.eval_step is None:
            return executor(model, conds, x_in, timestep, model_options)
        windows = run.stage2_windows(run.eval_step)
        batch = x_in.shape[0]
        run.report.stage2_evaluations += len(windows) * batch
        if len(windows) == 1 and windows[0].h == x_in.shape[-2] and windows[0].w == x_in.shape[-1]:
            return executor(model, conds, x_in, timestep, model_options)

        weights = WEIGHTS[self.config.window_weights]
        blenders = [WindowBlender(x_in, weights) if c is not None else None for c in conds]
        chunk = self._window_batch(model, x_in, windows[0], sum(c is not None for c in conds))
        for start in range(0, len(windows), chunk):
            comfy.model_management.throw_exception_if_processing_interrupted()
            part = windows[start:start + chunk]
            window_conds = [self._window_conds(model, c, part, batch) for c in conds]
            outs = executor(model, window_conds, crop_windows(x_in, part),
                            _repeat_timestep(timestep, len(part)), model_options)
            for blender, out in zip(blenders, outs):
                if blender is not None:
                    blender.add(out, part)
        return [b.result() if b is not None else torch.zeros_like(x_in) for b in blenders]

    def _window_batch(self, model, x_in, window: Window, cond_halves: int) -> int:
        if self.config.window_batch_size > 0:
            return self.config.window_batch_size
        free = comfy.model_management.get_free_memory(x_in.device)
        per_window = model.memory_required([max(1, cond_halves) * x_in.shape[0], x_in.shape[1], window.h, window.w])
        # Same 1.5x safety margin ComfyUI uses when it batches conds.
        return int(max(1, min(MAX_AUTO_WINDOW_BATCH, free // (1.5 * per_window))))

    @staticmethod
    def _window_conds(model, cond_list, windows: list[Window], batch: int):
        """Copies of the conds whose SDXL `y` says each window's crop offset (spec 3.4)."""
        if cond_list is None:
            return None
        out = []
        for cond in cond_list:
            model_conds = cond.get("model_conds", {})
            y = model_conds.get("y")
            slot = _sdxl_crop_slot(model, y.cond.shape[-1]) if y is not None else None
            if slot is None:
                out.append(cond)
                continue
            crops = [(cond.get("crop_h", 0) + w.y * LATENT_SCALE, cond.get("crop_w", 0) + w.x * LATENT_SCALE)
                     for w in windows]
            y_windows = with_window_crops(comfy.utils.repeat_to_batch_size(y.cond, batch), slot, crops, model.embedder)
            cond = dict(cond, model_conds=dict(model_conds, y=comfy.conds.CONDRegular(y_windows)))
            out.append(cond)
        return out


def apply_cutdiffusion(model, config: CutDiffusionConfig, report: RunReport | None = None):
    """Validate, then return a patched clone of `model` (the input is left untouched)."""
    validate_config(config)
    native_px = config.patch_size or native_size_px(model)
    _validate_stride(config.window_stride, native_px)
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
