"""Native-first layout (beyond the paper): where the target-size run starts from.

The paper starts stage 1 from noise at the target size. Native first draws the layout at the
model's native area instead (all steps, the target's aspect), upscales that latent bicubically
and re-runs only the last `layout_denoise` of the schedule at the target size: on the whole
frame (the default, a hires fix; chosen on the detail proxy) or in shifted tiles held to the
layout, the stage-1 patches' coarse prediction guiding them (sample_native_first; BENCHMARKS.md).
Pure Python/torch; sizes in latent px.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

LAYOUTS = ("native first", "patches")
TARGET_PASSES = ("whole frame", "tiles")   # native first's target pass: one model call per step, or shifted tiles


@dataclass(frozen=True)
class NativeFirst:
    """The layout pass and where the target pass joins the run's schedule."""
    height: int           # layout pass size (latent px)
    width: int
    steps: int            # the layout pass runs the whole schedule
    refine_from: int      # the target pass runs sigmas[refine_from:]
    native_area: int      # native h * w, for the cost

    @property
    def is_whole_run(self) -> bool:
        """The target is no larger than the native area: the layout pass is the image itself."""
        return self.refine_from == self.steps

    @property
    def layout_evaluations(self) -> int:
        """Native-size evaluations the layout pass is worth per image and CFG half."""
        return self.steps * max(1, round(self.height * self.width / self.native_area))

    def whole_frame_evaluations(self, height: int, width: int) -> int:
        """Native-size evaluations per image and CFG half of the layout pass and a whole-frame target
        pass on `height x width`: each of its steps counts the frame's area in native areas (a lower
        bound: attention grows faster than the area)."""
        return self.layout_evaluations + round((self.steps - self.refine_from) * height * width / self.native_area)

    def summary(self, latent_px: int, pixel_upscale: bool = False) -> str:
        if self.is_whole_run:
            return (f"native first: {self.width * latent_px}x{self.height * latent_px} px is within the native area, "
                    f"so it is sampled directly ({self.steps} steps, like KSampler)")
        how = ("decoded by the VAE, upscaled bicubically in pixel space and encoded again" if pixel_upscale
               else "upscaled bicubically in latent space")
        return (f"native-first layout: {self.width * latent_px}x{self.height * latent_px} px for all "
                f"{self.steps} steps ({self.layout_evaluations} evaluations), {how}; the target size re-runs "
                f"the last {self.steps - self.refine_from}")


def native_first(height: int, width: int, native: int, steps: int, layout_denoise: float) -> NativeFirst | None:
    """The layout pass for a full-noise run of `steps` on a `height x width` latent, or None where
    the target fits the native size (then there is nothing to lay out).

    The layout pass has the model's native area (its training pixel count; SDXL's and Flux's
    aspect buckets hold about that many pixels) at the target's aspect. At 3:1 and 3x the native
    area, a layout pass with a native short side (the target itself) drew one object in 77-78% of
    images on the demo model, the native area in 91% (64 images each). Where the target is no
    larger than the native area the layout pass is the image itself and nothing is re-run.
    """
    if height <= native and width <= native:
        return None
    scale = min(1.0, math.sqrt(native * native / (height * width)))
    layout_h, layout_w = max(1, round(height * scale)), max(1, round(width * scale))
    kept = 0 if (layout_h, layout_w) == (height, width) else max(1, round(layout_denoise * steps))
    return NativeFirst(layout_h, layout_w, steps, steps - kept, native * native)


def sample_native_first(first: NativeFirst, layout_pass: Callable[[], torch.Tensor],
                        target_pass: Callable[[torch.Tensor, int], torch.Tensor], height: int, width: int,
                        upscale: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None) -> torch.Tensor:
    """Native first, the whole composition (its three parts are the caller's):

    1. `layout_pass()`: the whole schedule, plain sampling, at the native area with the target's
       aspect (first.height x first.width) from the run's seed;
    2. `upscale`: that latent, bicubic, to the target's `height x width` (latent px): in latent
       space (`latent_upscale` below), or through a VAE in pixel space (pixel_upscale.py);
    3. `target_pass(latent, first.refine_from)`: the schedule from step `refine_from` at the target
       size on fresh noise: plain sampling of the whole frame, or shifted tiles whose predictions'
       coarse structure is held to the upscaled layout (stages.anchor_to_layout) and guided by the
       stage-1 patches' block means (stages.guide_low_frequencies; config.plan_target_pass).
    """
    layout = layout_pass()
    return target_pass((upscale or latent_upscale)(layout, height, width), first.refine_from)


def latent_upscale(latent: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic in latent space, as LatentUpscale; a one-frame latent [B, C, 1, H, W] keeps its frame axis."""
    if latent.ndim == 5:
        return latent_upscale(latent[:, :, 0], height, width).unsqueeze(2)
    return F.interpolate(latent, size=(height, width), mode="bicubic")


def is_full_noise(sigmas, sigma_max: float, whole_schedule: bool = False) -> bool:
    """A run from pure noise to the end (text-to-image), not img2img or a segment of a schedule:
    it ends at zero noise and starts at the model's highest, or the caller knows `sigmas` are a
    scheduler's whole schedule (KSampler at denoise 1; ddim_uniform's starts below sigma_max)."""
    starts_at_the_top = whole_schedule or math.isclose(float(sigmas[0]), sigma_max, rel_tol=1e-3)
    return len(sigmas) >= 3 and float(sigmas[-1]) <= 0.0 and starts_at_the_top
