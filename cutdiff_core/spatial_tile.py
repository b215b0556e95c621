"""Where a model call's images lie in the frame, said in transformer_options for other patches.

ComfyUI's own spatial tiling tells the patches inside a model call which tile it evaluates through
`transformer_options["spatial_tile"]` (top, bottom, left, right, source_height, source_width), so a
pack can crop its own control input to the tile. The stage-2 windows and native first's tiles are
such tiles and say so the same way. A call holds one window per image of its batch when the
windows are batched (window_batch_size above 1), and one dict cannot describe several: every call
also carries the list, one dict per window in batch order, under WINDOWS_KEY, and `spatial_tile` is
set where the call holds one window. Stage-1 patches are no crops at all (each is the whole image
seen at a stride): they are named under PATCHES_KEY, never as a `spatial_tile`.
Sizes in latent px, as the frame the sampler runs on (the working latent, padded to the patch grid).
"""
from __future__ import annotations

from .plan import PatchGrid, Window

SPATIAL_TILE_KEY = "spatial_tile"
WINDOWS_KEY = "cutdiffusion_windows"
PATCHES_KEY = "cutdiffusion_patches"


def window_views(windows: list[Window], frame_hw: tuple[int, int], shift: tuple[int, int]) -> dict:
    """transformer_options entries for a call on `windows` of the frame rolled by `-shift`.

    A shifted tile can wrap around the frame's edge (it joins opposite edges, like circular padding):
    its bottom or right then exceeds the source size and is read modulo it."""
    height, width = frame_hw
    tiles = []
    for w in windows:
        top, left = (w.y + shift[0]) % height, (w.x + shift[1]) % width
        tiles.append({"top": top, "bottom": top + w.h, "left": left, "right": left + w.w,
                      "source_height": height, "source_width": width})
    views = {WINDOWS_KEY: tiles}
    if len(tiles) == 1:
        views[SPATIAL_TILE_KEY] = tiles[0]
    return views


def patch_views(grid: PatchGrid, patches: range, frame_hw: tuple[int, int]) -> dict:
    """transformer_options entries for a call on stage-1 patches `patches` (row-major indices):
    patch (i, j) is the frame's rows i::rows and columns j::cols, mixed by pixel interaction."""
    return {PATCHES_KEY: {"rows": grid.rows, "cols": grid.cols,
                          "patches": [(k // grid.cols, k % grid.cols) for k in patches],
                          "source_height": frame_hw[0], "source_width": frame_hw[1]}}
