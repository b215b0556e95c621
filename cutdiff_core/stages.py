"""CutDiffusion's two stages (arXiv 2404.15141, section 3) as functions of the paper's quantities.

Pure torch; importable without ComfyUI. The model is passed in as `denoise(images, views)`:
it predicts one output per cond slot (cond, uncond, ...) for a stack of native-size images,
`views` saying which patches (stage 1) or windows (stage 2) the stack holds, so the caller
can give each image its own conditioning. `cutdiffusion_patch` turns ComfyUI's calls into these.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .patches import fold_patches, permute_patches, unfold_patches, unpermute_patches
from .plan import PatchGrid, StepWindows
from .windows import TileCollector, WindowBlender, WindowWeights, crop_windows, tile_stack, uniform_weights

Denoise = Callable[[torch.Tensor, Sequence], list[torch.Tensor]]


def stage1_denoise(x: torch.Tensor, denoise: Denoise, grid: PatchGrid, permutation: torch.Tensor | None = None,
                   patches_per_call: int | None = None) -> list[torch.Tensor]:
    """Stage 1, comprehensive structure denoising (paper 3.2).

    The full latent `x` [B, C, rows*h, cols*w] is seen as `rows x cols` native-size patches,
    patch (i, j) being the strided sub-image `x[..., i::rows, j::cols]`; pixel interaction
    exchanges every element among the patches at random (`permutation`, one per element), so
    each patch is a random mix of all of them and they agree on one layout. The model denoises
    the patches, the exchange is undone and every pixel relocated to where it came from.
    """
    stack = unfold_patches(x, grid.rows, grid.cols)
    if permutation is not None:
        stack = permute_patches(stack, permutation)
    predictions = _in_calls(denoise, stack, range(grid.n), patches_per_call or grid.n, x.shape[0])
    return [relocate(prediction, grid, permutation) for prediction in predictions]


def relocate(prediction: torch.Tensor, grid: PatchGrid, permutation: torch.Tensor | None) -> torch.Tensor:
    """Pixel relocation (paper 3.2): each model output back to its patch, each patch pixel back
    to its place in the full-size frame."""
    if permutation is not None:
        prediction = unpermute_patches(prediction, permutation)
    return fold_patches(prediction, grid.rows, grid.cols)


def stage2_denoise(x: torch.Tensor, denoise: Denoise, step: StepWindows, slots: Sequence[bool], *,
                   windows_per_call: int, weights: WindowWeights = uniform_weights,
                   tiles: tuple[int, int] | None = None,
                   buffers: Callable[[int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
                   ) -> list[torch.Tensor]:
    """Stage 2, specific detail refinement (paper 3.3): MultiDiffusion over native-size windows.

    Every window of this step is denoised on its own and the predictions are averaged where
    windows overlap (`weights` per pixel). With `step.shift` the windows lie in the frame of
    `x` rolled by minus the shift; with `tiles` (rows, cols) they tile that frame exactly, so
    each pixel takes its one tile's prediction. `slots` says which cond slots have conds;
    an empty slot's prediction is zeros, as ComfyUI's own for an absent uncond.
    """
    oy, ox = step.shift
    frame = torch.roll(x, (-oy, -ox), (-2, -1)) if oy or ox else x
    windows, batch = step.windows, x.shape[0]
    stack = tile_stack(frame, *tiles) if tiles else None
    assemblers = [None if not present else TileCollector(*tiles) if tiles else
                  WindowBlender(frame, weights, buffers(slot, frame) if buffers else None)
                  for slot, present in enumerate(slots)]
    for start in range(0, len(windows), windows_per_call):
        part = windows[start:start + windows_per_call]
        images = stack[start * batch:(start + len(part)) * batch] if tiles else crop_windows(frame, part)
        for assembler, prediction in zip(assemblers, denoise(images, part)):
            if assembler is not None:
                assembler.add(prediction, part)
    predictions = [a.result() if a is not None else torch.zeros_like(x) for a in assemblers]
    return [torch.roll(p, (oy, ox), (-2, -1)) for p in predictions] if oy or ox else predictions


def guide_by_patches(window_predictions: list[torch.Tensor], patch_predictions: list[torch.Tensor],
                     weight: float) -> list[torch.Tensor]:
    """Beyond the paper (global_guidance): stage-2 windows see only part of an enlarged subject
    and invent small new ones around it, while the stage-1 patches each see the whole layout;
    mixing their prediction in keeps one subject. Not torch.lerp: at weight 1 this is the
    patches' prediction exactly."""
    return [weight * patches + (1.0 - weight) * windows
            for windows, patches in zip(window_predictions, patch_predictions)]


def coarse(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`x` seen at `height x width` (area means), interpolated back to its size."""
    return F.interpolate(F.interpolate(x, size=(height, width), mode="area"), size=x.shape[-2:], mode="bicubic")


def low_frequencies(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """What the stage-1 patches agree on: each rows x cols block's mean (the mean of the patches'
    predictions there, one element per patch), interpolated back to the full size."""
    return coarse(x, x.shape[-2] // rows, x.shape[-1] // cols)


def guide_low_frequencies(window_predictions: list[torch.Tensor], patch_predictions: list[torch.Tensor],
                          weight: float, rows: int, cols: int) -> list[torch.Tensor]:
    """layout_guidance (native first): the patches' block means replace the windows' (the
    subject's place and size), the windows keep everything finer (edges, texture), so the patches'
    interleaved grid never shows as stair-stepped edges."""
    return [windows + weight * low_frequencies(patches - windows, rows, cols)
            for windows, patches in zip(window_predictions, patch_predictions)]


def anchor_to_layout(predictions: list[torch.Tensor], present: Sequence[bool], layout: torch.Tensor,
                     height: int, width: int) -> list[torch.Tensor]:
    """Native first: each prediction's coarse structure (at `height x width`, half the layout
    pass's size) is the upscaled layout's, so the tiles cannot start a subject the layout does not
    have; everything finer is theirs. Absent slots stay zeros."""
    return [p + coarse(layout - p, height, width) if here else p for p, here in zip(predictions, present)]


def _in_calls(denoise: Denoise, stack: torch.Tensor, views: Sequence, per_call: int, batch: int):
    """`denoise` over a view-major stack, `per_call` views (of `batch` images each) at a time."""
    if per_call >= len(views):
        return denoise(stack, views)
    parts = [denoise(stack[start * batch:(start + per_call) * batch], views[start:start + per_call])
             for start in range(0, len(views), per_call)]
    return [torch.cat(outputs) for outputs in zip(*parts)]

