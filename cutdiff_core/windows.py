"""Stage 2: MultiDiffusion window cropping and blending. Pure torch (spec 3.4)."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from einops import rearrange

from .plan import Window

# A weighting strategy maps a window size to per-pixel weights `[h, w]` > 0.
WindowWeights = Callable[[int, int, torch.device, torch.dtype], torch.Tensor]


def uniform_weights(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """MultiDiffusion: every window counts the same at every pixel it covers."""
    return torch.ones((h, w), device=device, dtype=dtype)


WEIGHTS: dict[str, WindowWeights] = {"uniform": uniform_weights}


def crop_windows(x: torch.Tensor, windows: Sequence[Window]) -> torch.Tensor:
    """`[B, C, H, W]` -> window-major stack `[len(windows) * B, C, h, w]`.

    Window-major so that conds tiled to the stack's batch line up with their images.
    """
    crops = [x[:, :, win.y:win.y + win.h, win.x:win.x + win.w] for win in windows]
    return rearrange(torch.stack(crops), "k b c h w -> (k b) c h w")


class WindowBlender:
    """Accumulates denoised windows and returns their per-pixel weighted average."""

    def __init__(self, like: torch.Tensor, weights: WindowWeights = uniform_weights):
        self.total = torch.zeros_like(like)
        self.weight = torch.zeros(like.shape[-2:], device=like.device, dtype=like.dtype)
        self.weights = weights

    def add(self, stack: torch.Tensor, windows: Sequence[Window]) -> None:
        per_window = rearrange(stack, "(k b) c h w -> k b c h w", k=len(windows))
        for win, pred in zip(windows, per_window):
            w = self.weights(win.h, win.w, pred.device, pred.dtype)
            self.total[:, :, win.y:win.y + win.h, win.x:win.x + win.w] += pred * w
            self.weight[win.y:win.y + win.h, win.x:win.x + win.w] += w

    def result(self) -> torch.Tensor:
        # Every pixel is covered by construction (tested on the plan), so no
        # check here: it would cost a device sync per step.
        return self.total / self.weight
