"""Conditioning cut the way the latent is: for the stage-1 patches, the stage-2 windows and
the padded working latent. What a model is conditioned on must describe the image the model
sees, so image-shaped conds (inpainting inputs, ControlNet hints) are cut like the latent and
SDXL's size conditioning says each window's crop."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import comfy.conds
import comfy.model_base
import comfy.sampler_helpers
import comfy.utils

from .control_hints import crop_control
from .plan import LATENT_SCALE, Window
from .run_state import RunState
from .size_cond import with_window_crops
from .windows import crop_windows


def check_conds(conds: dict) -> None:
    for name, cond_list in conds.items():
        for cond in cond_list or []:
            for key in ("area", "mask"):
                if key in cond:
                    raise ValueError(f"CutDiffusion: {key} conditioning (e.g. Conditioning (Set Area/Mask)) in the "
                                     f"{name} prompt is not supported: patches and windows would each get it in the "
                                     "wrong place. Use plain prompts, or sample regions without CutDiffusion.")


def sdxl_crop_slot(model, y_dim: int) -> int | None:
    """Index of the crop_h embedding in SDXL's `y`, or None if the model has no size conditioning."""
    if isinstance(model, comfy.model_base.SDXLRefiner):
        return y_dim - 3 * 256   # ... crop_h, crop_w, aesthetic_score
    if isinstance(model, comfy.model_base.SDXL):
        return y_dim - 4 * 256   # ... crop_h, crop_w, target_h, target_w
    return None


def pad_mask(mask: torch.Tensor, shape: torch.Size, pad: tuple[int, int, int, int]) -> torch.Tensor:
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


def pad_image_conds(conds: dict, height: int, width: int, pad: tuple[int, int, int, int],
                    latent_px: int = LATENT_SCALE) -> None:
    """Say the requested size to size-conditioned models, and pad image-shaped conds like the latent.

    ComfyUI derives SDXL's size conditioning from the latent it samples; on the padded
    latent that would be the padded size, but the reference conditions on the image
    asked for. Inpainting inputs at the requested size are padded the way the latent
    is, instead of being stretched to the padded size by the model's own resize.
    """
    for cond_list in conds.values():
        for cond in cond_list or []:
            cond.setdefault("width", width * latent_px)
            cond.setdefault("height", height * latent_px)
            for key in ("concat_latent_image", "concat_mask"):   # latent size, or pixels for the mask
                image = cond.get(key)
                if isinstance(image, torch.Tensor) and image.ndim == 4:
                    scale = image.shape[-1] // width
                    if scale in (1, latent_px) and tuple(image.shape[-2:]) == (height * scale, width * scale):
                        cond[key] = F.pad(image, tuple(p * scale for p in pad), mode="replicate")


def views_of_image_conds(cond: dict, frame_hw: tuple[int, int], batch: int, view) -> dict:
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


def window_conds(model, cond_list, windows: list[Window], batch: int, frame_hw, shift: tuple[int, int],
                  run: RunState, controls: dict):
    """Copies of the conds for a chunk of windows: SDXL `y` with each window's crop offset
    (spec 3.4), ControlNet hints and inpainting inputs cut to each window (windows are in the
    frame of the latent rolled by `-shift`)."""
    height, width = frame_hw
    if cond_list is None:
        return None
    out = []
    for cond in cond_list:
        control = cond.get("control")
        if control is not None:
            if id(control) not in controls:
                controls[id(control)] = crop_control(control, windows, batch, (height, width), shift, run.hint_cache)
            cond = dict(cond, control=controls[id(control)])
        cond = views_of_image_conds(cond, (height, width), batch, lambda image: crop_windows(
            torch.roll(image, (-shift[0], -shift[1]), (-2, -1)) if shift != (0, 0) else image, windows))
        model_conds = cond.get("model_conds", {})
        y = model_conds.get("y")
        slot = sdxl_crop_slot(model, y.cond.shape[-1]) if y is not None else None
        if slot is not None:
            px = run.plan.latent_px
            crops = [(cond.get("crop_h", 0) + (w.y + shift[0]) % height * px,
                      cond.get("crop_w", 0) + (w.x + shift[1]) % width * px) for w in windows]
            y_batch = comfy.utils.repeat_to_batch_size(y.cond, batch)
            embed = run.cached_embedder(model.embedder, y_batch.device, y_batch.dtype)
            y_windows = with_window_crops(y_batch, slot, crops, embed)
            cond = dict(cond, model_conds=dict(model_conds, y=comfy.conds.CONDRegular(y_windows)))
        out.append(cond)
    return out
