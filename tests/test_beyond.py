"""Beyond the paper: img2img, shifted stage 2, feathered blending, ControlNet alignment,
other model patches, few-step models."""
import pytest
import torch

import comfy.utils
from comfy_extras import nodes_easycache, nodes_freelunch, nodes_model_downscale, nodes_pag, nodes_sag

from cutdiff_dev import comfy_runtime as rt
from helpers import CountingModel, run_cut, tiny_controlnet

from cutdiff_core import cutdiffusion_patch
from cutdiff_core.plan import global_guidance_weight, make_plan
from cutdiff_core.windows import (TileCollector, WindowBlender, crop_windows, feathered_weights,
                                                       tile_stack, uniform_weights, untile_stack)

PATCH = 256
NATIVE = PATCH // 8


# -- image to image -----------------------------------------------------------------------------

def test_low_denoise_stays_close_to_the_input_and_says_it_skips_stage1(model, conds):
    init = torch.randn(1, 4, 2 * NATIVE, 2 * NATIVE, generator=torch.Generator().manual_seed(1))
    latent = {"samples": init}
    low, report = run_cut(model, latent, steps=6, conds=conds, patch_size=PATCH, denoise=0.1)
    high, _ = run_cut(model, latent, steps=6, conds=conds, patch_size=PATCH, denoise=0.9)
    assert (low - init).abs().mean() < 0.5 * (high - init).abs().mean()
    assert report.plan.stage1_steps == 0 and "no stage 1" in report.summary()
    forced, report = run_cut(model, latent, steps=6, conds=conds, patch_size=PATCH, denoise=0.1, min_stage1_steps=2)
    assert report.plan.stage1_steps == 2 and not torch.equal(forced, low)


# -- shifted stage 2 ----------------------------------------------------------------------------

@pytest.mark.parametrize("height, width", [(64, 64), (70, 40), (96, 33), (20, 50)])
def test_shifted_tiles_cover_every_pixel_exactly_once(height, width):
    plan = make_plan(height=height, width=width, native=(32, 32), stride=(16, 16), sigmas=[1.0, 0.5, 0.0],
                     split_sigma=0.5, stage_split=0.5, jitter=True, mode="shifted")
    layout, grid = plan.layout, plan.grid
    assert layout.count == grid.n and (layout.win_h, layout.win_w) == (grid.patch_h, grid.patch_w)
    gen = torch.Generator().manual_seed(height * width)
    shifts = set()
    for _ in range(12):
        step = layout.step_windows(gen)
        shifts.add(step.shift)
        oy, ox = step.shift
        assert len(step.windows) == grid.n and 0 <= oy < layout.win_h and 0 <= ox < layout.win_w
        cover = torch.zeros(layout.height, layout.width, dtype=torch.int32)
        for t in step.windows:   # rolled frame -> latent: (y + oy) mod H
            rows = torch.arange(t.y, t.y + t.h).add(oy).remainder(layout.height)
            cols = torch.arange(t.x, t.x + t.w).add(ox).remainder(layout.width)
            cover[rows[:, None], cols[None, :]] += 1
        assert bool((cover == 1).all())
    assert len(shifts) > 1  # the tiling really moves


def test_tile_reshape_equals_cropping_and_blending_the_tiles():
    """The shifted fast path (one reshape each way) is the crop-and-blend path, exactly."""
    plan = make_plan(height=48, width=64, native=(16, 16), stride=(8, 8), sigmas=[1.0, 0.5, 0.0], split_sigma=0.5,
                     stage_split=0.5, jitter=True, mode="shifted")
    layout = plan.layout
    windows = layout.windows()
    rows, cols = len(layout.ys), len(layout.xs)
    x = torch.randn(2, 4, 48, 64, generator=torch.Generator().manual_seed(3))
    stack = tile_stack(x, rows, cols)
    assert torch.equal(stack, crop_windows(x, windows))
    predicted = stack * 1.7 - 0.3   # any per-tile model output
    blender = WindowBlender(x, uniform_weights)
    blender.add(predicted, windows)
    collector = TileCollector(rows, cols)
    for start in range(0, len(windows), 5):   # in chunks, as stage 2 sends them
        collector.add(predicted[start * 2:(start + 5) * 2], windows[start:start + 5])
    assert torch.equal(untile_stack(predicted, rows, cols), blender.result())
    assert torch.equal(collector.result(), blender.result())
    assert torch.equal(untile_stack(stack, rows, cols), x)


def test_shifted_stage2_evaluations_match_the_plan(model, conds):
    with CountingModel(model) as counter:
        got, report = run_cut(model, rt.empty_latent(2 * PATCH, 2 * PATCH), steps=6, conds=conds, patch_size=PATCH,
                              stage2_mode="shifted", window_batch_size=4)
    plan = report.plan
    # Shifted tiles: n = 4 per step instead of the 9 overlapping windows, all of one size.
    assert report.stage2_windows_per_step == [4] * plan.stage2_steps
    assert counter.images == 2 * (plan.stage1_steps + plan.stage2_steps) * 4 == plan.model_evaluations()
    assert set(counter.shapes) == {(8, 4, NATIVE, NATIVE)} and torch.isfinite(got).all()


# -- global guidance in stage 2 -------------------------------------------------------------------

def test_global_guidance_weight_fades_from_its_strength_to_near_zero():
    weights = [global_guidance_weight(0.8, s, 10) for s in range(10)]
    assert weights[0] == 0.8
    assert all(a > b > 0 for a, b in zip(weights, weights[1:]))
    assert weights[-1] < 0.5 * weights[0]
    assert global_guidance_weight(0.0, 3, 10) == 0.0


def test_full_global_guidance_on_a_single_stage2_step_is_stage1(model, conds):
    """Two steps, one per stage: the only stage-2 step has weight 1, so its prediction is the
    patches' alone -- the same as running stage 1 to the end (same permutation stream)."""
    latent = rt.empty_latent(2 * PATCH, 2 * PATCH)
    guided, report = run_cut(model, latent, steps=2, conds=conds, patch_size=PATCH, global_guidance=1.0)
    stage1_only, _ = run_cut(model, latent, steps=2, conds=conds, patch_size=PATCH, stage_split=1.0)
    plain, _ = run_cut(model, latent, steps=2, conds=conds, patch_size=PATCH)
    assert (report.plan.stage1_steps, report.plan.stage2_steps) == (1, 1)
    assert torch.equal(guided, stage1_only)
    assert not torch.allclose(guided, plain)


@pytest.mark.parametrize("mode", ["overlap", "shifted"])
def test_global_guidance_evaluations_match_the_plan(model, conds, mode):
    with CountingModel(model) as counter:
        got, report = run_cut(model, rt.empty_latent(2 * PATCH, 2 * PATCH), steps=6, conds=conds, patch_size=PATCH,
                              stage2_mode=mode, global_guidance=0.5)
    plan = report.plan
    assert plan.guided
    windows = sum(report.stage2_windows_per_step)
    # Every stage-2 step also evaluates the 4 patches; both CFG halves.
    assert counter.images == 2 * (plan.steps * 4 + windows) == plan.model_evaluations()
    assert report.stage1_evaluations == plan.steps * 4 and torch.isfinite(got).all()   # per CFG half
    # At the native size there is one patch: nothing to guide with, no extra evaluations.
    native, native_report = run_cut(model, rt.empty_latent(PATCH, PATCH), steps=4, conds=conds, patch_size=PATCH,
                                    global_guidance=0.5)
    assert not native_report.plan.guided


def test_global_guidance_out_of_range_is_a_clear_error(model):
    with pytest.raises(ValueError, match=r"global_guidance.*\[0\.0, 1\.0\]"):
        cutdiffusion_patch.apply_cutdiffusion(model, cutdiffusion_patch.CutDiffusionConfig(global_guidance=1.5))


# -- feathered blending ---------------------------------------------------------------------------

def test_feathered_weights_are_positive_and_normalise():
    weights = feathered_weights(16, 16)
    w = weights(32, 32, torch.device("cpu"), torch.float32)
    assert bool((w > 0).all()) and float(w.max()) <= 1.0 and float(w[0, 0]) < float(w[16, 16])
    plan = make_plan(height=64, width=64, native=(32, 32), stride=(16, 16), sigmas=[1.0, 0.0], split_sigma=0.5,
                     stage_split=0.0, jitter=False)
    windows = plan.layout.windows()
    blender = WindowBlender(torch.zeros(1, 4, 64, 64), weights)
    constant = torch.full((len(windows), 4, 32, 32), 3.0)
    blender.add(constant, windows)
    torch.testing.assert_close(blender.result(), torch.full((1, 4, 64, 64), 3.0))
    # Unjittered neighbours cross-fade: their weights sum to 1 over the overlap.
    total = torch.zeros(64, 64)
    for win in windows:
        total[win.y:win.y + 32, win.x:win.x + 32] += w
    torch.testing.assert_close(total[16:48, 16:48], torch.ones(32, 32))


def test_feathered_run_differs_from_uniform(model, conds):
    latent = rt.empty_latent(2 * PATCH, 2 * PATCH)
    uniform, _ = run_cut(model, latent, conds=conds, patch_size=PATCH)
    feathered, _ = run_cut(model, latent, conds=conds, patch_size=PATCH, window_weights="feathered")
    assert (uniform - feathered).abs().max() > 1e-3


# -- ControlNet ------------------------------------------------------------------------------------

def test_controlnet_hint_is_cropped_per_window(model, conds):
    hint = torch.rand(1, 3, 200, 260, generator=torch.Generator().manual_seed(0))
    control = tiny_controlnet(model).set_cond_hint(hint, 1.0, (0.0, 1.0))
    pos, neg = conds
    with_control = ([[pos[0][0], dict(pos[0][1], control=control)]], [[neg[0][0], dict(neg[0][1], control=control)]])
    seen = []
    handle = control.control_model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((kwargs["x"].shape, kwargs["hint"].clone())), with_kwargs=True)
    h, w = 2 * NATIVE, 3 * NATIVE // 2
    try:
        got, report = run_cut(model, rt.empty_latent(w * 8, h * 8), steps=2, conds=with_control, patch_size=PATCH,
                              window_jitter=False, window_batch_size=1)
    finally:
        handle.remove()
    plain, _ = run_cut(model, rt.empty_latent(w * 8, h * 8), steps=2, conds=conds, patch_size=PATCH,
                       window_jitter=False, window_batch_size=1)
    assert (got - plain).abs().max() > 1e-3  # the ControlNet is really applied
    # Stage 1: the whole hint resized to the patch size, for every patch.
    grid = report.plan.grid
    patch_hint = comfy.utils.common_upscale(hint, grid.patch_w * 8, grid.patch_h * 8, "nearest-exact", "center")
    for stage1_shape, stage1_hint in seen[:grid.n]:   # window_batch_size 1: one patch (cond + uncond) a call
        assert stage1_shape[0] == 2
        for item in stage1_hint:
            assert torch.equal(item, patch_hint[0])
    # Stage 2: each window sees the crop of the full-size hint at its position.
    full_hint = comfy.utils.common_upscale(hint, w * 8, h * 8, "nearest-exact", "center")[0]
    windows = report.plan.layout.windows()
    assert len(seen) == grid.n + len(windows)
    for win, (shape, window_hint) in zip(windows, seen[grid.n:]):
        crop = full_hint[:, win.y * 8:(win.y + win.h) * 8, win.x * 8:(win.x + win.w) * 8]
        assert shape[-2:] == (win.h, win.w)
        for item in window_hint:   # cond and uncond halves
            assert torch.equal(item, crop)


# -- other model patches ---------------------------------------------------------------------------

def _lora(model):
    patched = model.clone()
    key = "diffusion_model.input_blocks.0.0.weight"
    weight = patched.model.state_dict()[key]
    patched.add_patches({key: (0.5 * torch.randn_like(weight),)}, 1.0)
    return patched


OTHER_PATCHES = {
    "lora": _lora,
    "freeu": lambda m: nodes_freelunch.FreeU_V2().patch(m, 1.3, 1.4, 0.9, 0.2)[0],
    "pag": lambda m: nodes_pag.PerturbedAttentionGuidance.execute(m, 3.0)[0],
    "deep_shrink": lambda m: nodes_model_downscale.PatchModelAddDownscale.execute(
        m, 1, 2.0, 0.0, 0.5, True, "bicubic", "bicubic")[0],
    "lazycache": lambda m: nodes_easycache.LazyCacheNode.execute(m, 2.0, 0.0, 1.0, False)[0],
}


def _cut(m, layout="patches", target_pass="tiles"):
    """The pack's patches on the model (native first's tiles: whole frame is plain sampling, no patch of ours)."""
    return cutdiffusion_patch.apply_cutdiffusion(m, cutdiffusion_patch.CutDiffusionConfig(
        layout=layout, patch_size=PATCH, target_pass=target_pass))


def _sample(m, conds, latent):
    import comfy.sample
    samples = latent["samples"]
    with torch.inference_mode():
        return comfy.sample.sample(m, comfy.sample.prepare_noise(samples, 2), 6, 5.0, "euler", "normal", *conds,
                                   samples, disable_pbar=True, seed=2).clone()


@pytest.mark.parametrize("name", list(OTHER_PATCHES))
@pytest.mark.parametrize("cut_first", [True, False])
@pytest.mark.parametrize("layout", ["patches", "native first"])
def test_other_patches_compose_in_either_order(model, conds, name, cut_first, layout):
    other = OTHER_PATCHES[name]
    latent = rt.empty_latent(2 * PATCH, 2 * PATCH)
    both = other(_cut(model, layout)) if cut_first else _cut(other(model), layout)
    with CountingModel(model) as counter:
        combined = _sample(both, conds, latent)
    with CountingModel(model) as alone:
        cut_only = _sample(_cut(model, layout), conds, latent)
    assert torch.isfinite(combined).all()
    # Neither patch is silently disabled: the result differs from CutDiffusion alone, and
    # CutDiffusion's stacks reached the model: 4 patches (the paper's stage 1; native first's
    # shifted tiles and guidance patches) x 2 CFG halves = 8 images.
    assert (combined - cut_only).abs().max() > 1e-4
    assert 8 in counter.batches
    if name == "lazycache":  # a whole-step cache (its state restarts at the target pass's new shape)
        assert counter.images < alone.images


@pytest.mark.parametrize("make, message", [
    (lambda m: nodes_easycache.EasyCacheNode.execute(m, 0.2, 0.15, 0.95, False)[0], "EasyCache caches one model call"),
    (lambda m: nodes_sag.SelfAttentionGuidance.execute(m, 0.5, 2.0)[0], "Self-Attention Guidance"),
])
@pytest.mark.parametrize("layout", ["patches", "native first"])
def test_incompatible_patches_are_a_clear_error(model, conds, make, message, layout):
    for patched in (make(_cut(model, layout)), _cut(make(model), layout)):
        with pytest.raises(ValueError, match=message):
            _sample(patched, conds, rt.empty_latent(2 * PATCH, 2 * PATCH))


@pytest.mark.parametrize("make", [lambda m: nodes_easycache.EasyCacheNode.execute(m, 0.2, 0.15, 0.95, False)[0],
                                  lambda m: nodes_sag.SelfAttentionGuidance.execute(m, 0.5, 2.0)[0]])
def test_the_whole_frame_target_pass_takes_any_patch(model, conds, make):
    """Both of native first's passes are plain sampling with target_pass whole frame: EasyCache and SAG
    see whole images there, so they run."""
    got = _sample(make(_cut(model, "native first", "whole frame")), conds, rt.empty_latent(2 * PATCH, 2 * PATCH))
    assert torch.isfinite(got).all()


def test_area_conditioning_is_a_clear_error(model, conds):
    pos, neg = conds
    area_pos = [[pos[0][0], dict(pos[0][1], area=(16, 16, 0, 0), strength=1.0)]]
    with pytest.raises(ValueError, match="area conditioning"):
        run_cut(model, rt.empty_latent(2 * PATCH, 2 * PATCH), conds=(area_pos, neg), patch_size=PATCH)


# -- few-step models --------------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [2, 3, 4])
def test_few_step_runs_give_each_stage_a_step(model, conds, steps):
    got, report = run_cut(model, rt.empty_latent(2 * PATCH, 2 * PATCH), steps=steps, cfg=1.0, scheduler="sgm_uniform",
                          conds=conds, patch_size=PATCH)
    assert report.plan.stage1_steps >= 1 and report.plan.stage2_steps >= 1 and torch.isfinite(got).all()


def test_one_step_run_is_plain_sampling(model, conds):
    latent = rt.empty_latent(2 * PATCH, 2 * PATCH)
    got, report = run_cut(model, latent, steps=1, cfg=1.0, scheduler="sgm_uniform", conds=conds, patch_size=PATCH)
    assert "1-step run" in report.summary()
    assert torch.equal(got, rt.ksampler(model, 1, 1, 1.0, "euler", "sgm_uniform", *conds, latent))
