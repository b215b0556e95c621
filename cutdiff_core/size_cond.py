"""SDXL size/crop micro-conditioning for patches and windows (spec 3.2, 3.4).

SDXL's `y` is `pooled ++ emb(h) ++ emb(w) ++ emb(crop_h) ++ emb(crop_w) ++ ...`
(256 values per embedded scalar; the refiner ends with an aesthetic score
instead of the target size). The reference gives every patch and window
original = target = the full image size, crop (0, 0) in stage 1 and the
window's top-left offset in stage 2. ComfyUI already computes `y` for the full
latent, so stage 1 keeps it as it is and stage 2 only rewrites the two crop
slots. Pure torch.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from einops import repeat

EMBED_DIM = 256


def with_window_crops(y: torch.Tensor, crop_slot: int, crops_px: Sequence[tuple[int, int]],
                      embed: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """`y` `[B, D]` -> window-major `[len(crops_px) * B, D]` with per-window crop slots.

    `crop_slot` is the index of the crop_h embedding (crop_w follows it);
    `crops_px[k] = (crop_h, crop_w)` in pixels; `embed` maps a 1-D tensor of
    scalars to `[N, 256]` embeddings (the model's own size embedder), called
    once for all windows.
    """
    k = len(crops_px)
    values = torch.tensor([v for crop in crops_px for v in crop], dtype=torch.float32)
    emb = embed(values).to(device=y.device, dtype=y.dtype)           # [(k 2), 256]
    emb = repeat(emb, "(k two) e -> (k b) (two e)", two=2, b=y.shape[0])
    out = repeat(y, "b d -> (k b) d", k=k).clone()
    out[:, crop_slot:crop_slot + 2 * EMBED_DIM] = emb
    return out
