"""ControlNet / T2I-Adapter hints that stay aligned with stage-2 windows.

ComfyUI's `get_control` resizes the *whole* hint to whatever latent it is
given, which for a window would squeeze the full image into it. For each chunk
of windows we hand ComfyUI a shallow copy of the control (and of its chain)
whose hint is the window-major stack of exact crops of the full-size hint, so
its own resize is the identity. Stage 1 needs nothing: each patch is a strided
view of the whole image, and the full hint resized to the patch size is that
view of the hint.
"""
from __future__ import annotations

import copy

import torch

import comfy.utils

from .plan import Window


def crop_control(control, windows: list[Window], batch: int, latent_hw: tuple[int, int], shift: tuple[int, int],
                 cache: dict):
    """A copy of `control` whose hint (and extra concat inputs) are the windows' crops; the
    windows are in the frame of the latent rolled by `-shift` (shifted stage 2)."""
    if control is None:
        return None
    window_control = copy.copy(control)
    if getattr(control, "previous_controlnet", None) is not None:
        window_control.previous_controlnet = crop_control(control.previous_controlnet, windows, batch, latent_hw,
                                                          shift, cache)
    hint = getattr(control, "cond_hint_original", None)
    if hint is None:
        return window_control
    ratio = control.compression_ratio
    if getattr(control, "vae", None) is not None:
        ratio *= control.vae.spacial_compression_encode()
    window_control.cond_hint_original = _crops(control, hint, windows, batch, latent_hw, shift, ratio, cache)
    window_control.extra_concat_orig = [_crops(control, extra, windows, batch, latent_hw, shift, ratio, cache)
                                        for extra in getattr(control, "extra_concat_orig", [])]
    # Drop the caches the copy shares with the original, so it resizes (identity) from the crops.
    window_control.cond_hint = None
    if hasattr(window_control, "control_input"):
        window_control.control_input = None
    return window_control


def _crops(control, image: torch.Tensor, windows: list[Window], batch: int, latent_hw: tuple[int, int],
           shift: tuple[int, int], ratio: int, cache: dict) -> torch.Tensor:
    key = (id(image), latent_hw, ratio)
    if key not in cache:
        # The same resize get_control would apply to the whole latent, once per run.
        full = comfy.utils.common_upscale(image, latent_hw[1] * ratio, latent_hw[0] * ratio,
                                          control.upscale_algorithm, "center")
        cache[key] = comfy.utils.repeat_to_batch_size(full, batch)
    full = cache[key]
    if shift != (0, 0):
        full = torch.roll(full, (-shift[0] * ratio, -shift[1] * ratio), (-2, -1))
    return torch.cat([full[:, :, w.y * ratio:(w.y + w.h) * ratio, w.x * ratio:(w.x + w.w) * ratio] for w in windows])
