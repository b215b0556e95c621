"""Other patches learn where a model call's images lie (issue 24): `transformer_options["spatial_tile"]`
as ComfyUI's own spatial tiling publishes it, for every stage-2 window and native-first tile, and a key
of our own for the strided stage-1 patches. Read back by a patch of the kind other packs install."""
import pytest
import torch

from cutdiff_dev import comfy_runtime as rt
from helpers import run_cut

from cutdiff_core.spatial_tile import PATCHES_KEY, SPATIAL_TILE_KEY, WINDOWS_KEY

PATCH = 128


def _reading(model):
    """A clone of `model` whose UNet function wrapper (what packs that crop their own inputs install)
    records each call's image size and what transformer_options say about where they lie."""
    calls = []

    def wrapper(apply_model, args):
        options = args["c"].get("transformer_options", {})
        calls.append({"hw": tuple(args["input"].shape[-2:]), "batch": args["input"].shape[0],
                      "tile": options.get(SPATIAL_TILE_KEY), "windows": options.get(WINDOWS_KEY),
                      "patches": options.get(PATCHES_KEY)})
        return apply_model(args["input"], args["timestep"], **args["c"])

    reading = model.clone()
    reading.set_model_unet_function_wrapper(wrapper)
    return reading, calls


def _covered(tiles):
    """How often each latent px of the source frame is covered by `tiles` (read modulo its size)."""
    height, width = tiles[0]["source_height"], tiles[0]["source_width"]
    cover = torch.zeros(height, width, dtype=torch.int64)
    for t in tiles:
        rows = torch.arange(t["top"], t["bottom"]) % height
        cols = torch.arange(t["left"], t["right"]) % width
        cover[rows[:, None], cols[None, :]] += 1
    return cover


def test_every_target_pass_tile_of_the_default_says_where_it_lies(model, conds):
    reading, calls = _reading(model)
    latent = rt.empty_latent(256, 256)
    _, report = run_cut(reading, latent, seed=3, steps=7, conds=conds, patch_size=PATCH, layout="native first",
                        target_pass="tiles", layout_denoise=0.3, window_batch_size=1)
    layout_pass = [c for c in calls if c["hw"] == (16, 16) and c["patches"] is None and c["tile"] is None]
    tiled = [c for c in calls if c["tile"] is not None]
    patched = [c for c in calls if c["patches"] is not None]
    assert len(layout_pass) == 7                          # the layout pass is a plain run: nothing published
    steps = report.plan.steps
    assert len(tiled) == steps * report.plan.layout.count  # one call per tile (batch size 1), cond+uncond batched
    for call in tiled:
        tile = call["tile"]
        assert (tile["bottom"] - tile["top"], tile["right"] - tile["left"]) == call["hw"]
        assert (tile["source_height"], tile["source_width"]) == (32, 32)
        assert call["windows"] == [tile]
    for step in range(steps):                               # each step's shifted tiles cover the frame once
        cover = _covered([c["tile"] for c in tiled[step * 4:(step + 1) * 4]])
        assert torch.equal(cover, torch.ones_like(cover))
    assert any(c["tile"]["bottom"] > 32 or c["tile"]["right"] > 32 for c in tiled)   # shifted: some wrap
    listed = [p for c in patched for p in c["patches"]["patches"]]   # layout guidance: one patch set per step
    assert listed == [(0, 0), (0, 1), (1, 0), (1, 1)] * steps          # (one patch per call at batch size 1)
    assert all(c["patches"]["rows"] == c["patches"]["cols"] == 2 for c in patched)
    assert all(c["tile"] is None for c in patched)          # a strided patch is no crop


def test_batched_windows_list_every_window_and_overlap_windows_stay_inside(model, conds):
    reading, calls = _reading(model)
    _, report = run_cut(reading, rt.empty_latent(384, 256), seed=3, steps=4, conds=conds, patch_size=PATCH,
                        layout="patches", stage_split=0.0, window_batch_size=3)
    windowed = [c for c in calls if c["windows"] is not None]
    assert windowed and all(c["patches"] is None for c in windowed)
    per_step = report.plan.layout.count
    listed = [t for c in windowed for t in c["windows"]]
    assert len(listed) == report.plan.steps * per_step
    for c in windowed:
        assert c["batch"] == 2 * len(c["windows"])          # cond and uncond of each window
        assert (c["tile"] is not None) == (len(c["windows"]) == 1)
    for t in listed:                                        # overlap windows never wrap
        assert 0 <= t["top"] < t["bottom"] <= t["source_height"] == 32
        assert 0 <= t["left"] < t["right"] <= t["source_width"] == 48
    cover = _covered(listed[:per_step])
    assert bool((cover >= 1).all())


@pytest.mark.parametrize("layout", ["native first", "patches"])
def test_publishing_where_changes_no_pixel(model, conds, layout):
    latent = rt.empty_latent(256, 256)
    plain, _ = run_cut(model, latent, seed=5, steps=6, conds=conds, patch_size=PATCH, layout=layout,
                       target_pass="tiles", layout_denoise=0.3)
    reading, calls = _reading(model)
    read, _ = run_cut(reading, latent, seed=5, steps=6, conds=conds, patch_size=PATCH, layout=layout,
                      target_pass="tiles", layout_denoise=0.3)
    assert calls and torch.equal(plain, read)
