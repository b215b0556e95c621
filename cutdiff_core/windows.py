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


def feathered_weights(ramp_h: int, ramp_w: int) -> WindowWeights:
    """Weights that fall off linearly over `ramp` px towards each window border.

    With ramp = the overlap of two neighbouring windows, their weights sum to
    one across the overlap: a linear cross-fade instead of a hard average, so
    a window border never shows as a step. Always > 0, so a pixel that only
    one window covers keeps that window's prediction.
    """
    cache: dict[tuple, torch.Tensor] = {}

    def weights(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (h, w, device, dtype)
        if key not in cache:
            cache[key] = torch.outer(_ramp(h, ramp_h), _ramp(w, ramp_w)).to(device=device, dtype=dtype)
        return cache[key]
    return weights


def _ramp(n: int, ramp: int) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float32)
    return (torch.minimum(i + 1, n - i) / (ramp + 1)).clamp(max=1.0)


WINDOW_WEIGHTS = ("uniform", "feathered")


def make_weights(kind: str, ramp_h: int, ramp_w: int) -> WindowWeights:
    if kind == "uniform":
        return uniform_weights
    if kind == "feathered":
        return feathered_weights(ramp_h, ramp_w)
    raise ValueError(f"window_weights must be one of {WINDOW_WEIGHTS}, got {kind!r}")


def crop_windows(x: torch.Tensor, windows: Sequence[Window]) -> torch.Tensor:
    """`[B, C, H, W]` -> window-major stack `[len(windows) * B, C, h, w]`.

    Window-major so that conds tiled to the stack's batch line up with their images.
    """
    crops = [x[:, :, win.y:win.y + win.h, win.x:win.x + win.w] for win in windows]
    return rearrange(torch.stack(crops), "k b c h w -> (k b) c h w")


def tile_stack(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """`[B, C, rows*h, cols*w]` -> window-major stack of its contiguous tiles (row-major),
    the same stack `crop_windows` makes for a tiling, in one copy instead of one per tile."""
    return rearrange(x, "b c (p1 h) (p2 w) -> (p1 p2 b) c h w", p1=rows, p2=cols)


def untile_stack(stack: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of `tile_stack`: tiles cover every pixel once, so no blending is needed."""
    return rearrange(stack, "(p1 p2 b) c h w -> b c (p1 h) (p2 w)", p1=rows, p2=cols)


class TileCollector:
    """WindowBlender's counterpart for a tiling (shifted stage 2): the tiles cover every pixel
    once, so their predictions go back in place with one reshape instead of being blended."""

    def __init__(self, rows: int, cols: int):
        self.rows, self.cols = rows, cols
        self.parts: list[torch.Tensor] = []

    def add(self, stack: torch.Tensor, windows: Sequence[Window]) -> None:
        """Add the next chunk of the tile stack (chunks arrive in tile order)."""
        self.parts.append(stack)

    def result(self) -> torch.Tensor:
        return untile_stack(torch.cat(self.parts), self.rows, self.cols)


class WindowBlender:
    """Accumulates denoised windows and returns their per-pixel weighted average."""

    def __init__(self, like: torch.Tensor, weights: WindowWeights = uniform_weights,
                 buffers: tuple[torch.Tensor, torch.Tensor] | None = None):
        """`buffers`: a (total, weight) pair from an earlier step to reuse instead of allocating."""
        if buffers is None:
            buffers = (torch.empty_like(like), torch.empty(like.shape[-2:], device=like.device, dtype=like.dtype))
        self.total, self.weight = buffers
        self.total.zero_()
        self.weight.zero_()
        self.weights = weights

    def add(self, stack: torch.Tensor, windows: Sequence[Window]) -> None:
        """Add a window-major stack of predictions (all windows of one size)."""
        per_window = rearrange(stack, "(k b) c h w -> k b c h w", k=len(windows))
        uniform = self.weights is uniform_weights  # no weight tensor and product per window and step
        for win, pred in zip(windows, per_window):
            if uniform:
                self.total[:, :, win.y:win.y + win.h, win.x:win.x + win.w] += pred
                self.weight[win.y:win.y + win.h, win.x:win.x + win.w] += 1
                continue
            w = self.weights(win.h, win.w, pred.device, pred.dtype)
            self.total[:, :, win.y:win.y + win.h, win.x:win.x + win.w] += pred * w
            self.weight[win.y:win.y + win.h, win.x:win.x + win.w] += w

    def result(self) -> torch.Tensor:
        # Every pixel is covered by construction (tested on the plan), so no
        # check here: it would cost a device sync per step.
        return self.total / self.weight
