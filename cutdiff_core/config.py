"""The CutDiffusion patch's settings and their validation. Pure Python."""
from __future__ import annotations

from dataclasses import dataclass

from .plan import LATENT_SCALE, STAGE2_MODES
from .windows import WINDOW_WEIGHTS

MAX_AUTO_WINDOW_BATCH = 16  # the reference's window batch


@dataclass(frozen=True)
class CutDiffusionConfig:
    """The patch's settings, as on the CutDiffusion node (sizes in pixels)."""
    patch_size: int = 0          # native size; 0 = from the model type
    window_stride: int = 0       # 0 = half the patch size (the reference's 512 px on SDXL)
    stage_split: float = 0.5     # ComfyUI percent: stage 1 ends at percent_to_sigma(stage_split)
    window_batch_size: int = 0   # 0 = as many as fit in free memory, at most MAX_AUTO_WINDOW_BATCH
    window_jitter: bool = True
    pixel_interaction: bool = True
    stage2_mode: str = "overlap"       # "overlap" (MultiDiffusion, the paper) or "shifted" (non-overlapping)
    window_weights: str = "uniform"    # "uniform" (MultiDiffusion) or "feathered"
    min_stage1_steps: int = 0          # force stage 1 even when denoise starts below the split
    global_guidance: float = 0.0       # 0 = the paper; >0: stage 2 mixes in the stage-1 patches' prediction


RANGES = {
    "patch_size": (0, 16384),
    "window_stride": (0, 16384),
    "stage_split": (0.0, 1.0),
    "global_guidance": (0.0, 1.0),
    "window_batch_size": (0, 256),
    "min_stage1_steps": (0, 10000),
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
        validate_stride(config.window_stride, config.patch_size)
    for name, allowed in (("stage2_mode", STAGE2_MODES), ("window_weights", WINDOW_WEIGHTS)):
        if getattr(config, name) not in allowed:
            raise ValueError(f"CutDiffusion: {name} = {getattr(config, name)!r} must be one of {list(allowed)}")


def validate_stride(stride: int, patch_px: int) -> None:
    if stride > patch_px:
        raise ValueError(f"CutDiffusion: window_stride = {stride} must be in [8, {patch_px}] px (the patch size), "
                         f"or 0 for half the patch size")
