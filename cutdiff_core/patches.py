"""Stage 1 in the full-size frame: strided patch stacks and pixel interaction.

Pure torch; importable without ComfyUI. Spec 3.2, 3.3 and 3.7.
"""
from __future__ import annotations

import torch
from einops import rearrange

# Patch-major stack: ComfyUI tiles conds to the batch size (repeat, not
# interleave), so batch item b of patch k must sit at index k * B + b.
_UNFOLD = "b c (h p1) (w p2) -> (p1 p2 b) c h w"
_FOLD = "(p1 p2 b) c h w -> b c (h p1) (w p2)"


def unfold_patches(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Full latent `[B, C, rows*h, cols*w]` -> patch stack `[rows*cols*B, C, h, w]`.

    Patch (i, j) is the strided view `x[..., i::rows, j::cols]`: the inverse of
    the paper's pixel relocation, so the stage-1 patches are exactly the
    reference's independent native-size latents.
    """
    return rearrange(x, _UNFOLD, p1=rows, p2=cols)


def fold_patches(stack: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Pixel relocation (spec 3.3): patch (i, j) supplies the pixels at (y*rows + i, x*cols + j)."""
    return rearrange(stack, _FOLD, p1=rows, p2=cols)


def draw_permutation(n: int, batch: int, element_shape: torch.Size, generator: torch.Generator,
                     device: torch.device) -> torch.Tensor:
    """One random permutation of the `n` patches per (batch item, c, y, x).

    `argsort` of uniform noise along the patch axis: a uniformly random
    permutation per element, drawn in one call. Returns `[n*B, C, h, w]`
    indices into the patch-major stack's patch axis.
    """
    noise = torch.rand((n, batch, *element_shape), generator=generator, device=device)
    return torch.argsort(noise, dim=0)


def _by_patch(stack: torch.Tensor, n: int) -> torch.Tensor:
    return rearrange(stack, "(n b) ... -> n b ...", n=n)


def permute_patches(stack: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Pixel interaction: `out[k, b, c, y, x] = stack[perm[k, b, c, y, x], b, c, y, x]`."""
    n = perm.shape[0]
    return rearrange(torch.gather(_by_patch(stack, n), 0, perm), "n b ... -> (n b) ...")


def unpermute_patches(stack: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Inverse of `permute_patches`: model output k belongs to patch `perm[k]`."""
    n = perm.shape[0]
    by_patch = _by_patch(stack, n)
    out = torch.empty_like(by_patch).scatter_(0, perm, by_patch)
    return rearrange(out, "n b ... -> (n b) ...")
