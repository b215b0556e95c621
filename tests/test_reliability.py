"""Defects found by independent tests against real graphs (issue 13), each pinned by a test
that failed before its fix, and per-run state on ComfyUI's shallow model clones."""
import copy
import dataclasses

import pytest
import torch

import comfy.model_base
import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.supported_models

from cutdiff_dev import comfy_runtime as rt
from helpers import CountingModel, run_cut

from cutdiff_core import cutdiffusion_patch
from cutdiff_core.cutdiffusion_patch import CutDiffusionConfig, RunReport, apply_cutdiffusion

PATCH = 256                 # px: the tiny model's "native" size (32 latent px)
NATIVE = PATCH // 8
# 520 x 264 px = 65 x 33 latent px: a 2 x 3 patch grid of 17 x 22 that needs one padded row
# and one padded column (the tiny model's 1000 x 600 on SDXL).
PADDED_W, PADDED_H = 520, 264


# -- masks of a batch on a padded size --------------------------------------------------------------

def test_batch_masks_stay_per_image_on_a_padded_size(model, conds):
    """Image 1's mask is 0 everywhere: it must come back as its input, whatever image 0's mask says."""
    latent = rt.empty_latent(PADDED_W, PADDED_H, batch=2)
    latent["samples"] = torch.randn(latent["samples"].shape, generator=torch.Generator().manual_seed(4))
    mask = torch.zeros(2, PADDED_H, PADDED_W)
    mask[0] = 1.0
    latent["noise_mask"] = mask
    got, report = run_cut(model, latent, seed=3, steps=3, conds=conds, patch_size=PATCH)
    assert report.plan.grid.pad_h and report.plan.grid.pad_w
    torch.testing.assert_close(got[1], latent["samples"][1], atol=1e-4, rtol=1e-4)
    assert (got[0] - latent["samples"][0]).abs().mean() > 0.1


def test_per_image_mask_regions_on_a_padded_size(model, conds):
    """Each image keeps exactly its own unmasked region (left half for image 0, right half for image 1)."""
    latent = rt.empty_latent(PADDED_W, PADDED_H, batch=2)
    latent["samples"] = torch.randn(latent["samples"].shape, generator=torch.Generator().manual_seed(5))
    mask = torch.zeros(2, PADDED_H, PADDED_W)
    half = PADDED_W // 2
    mask[0, :, half:] = 1.0
    mask[1, :, :half] = 1.0
    latent["noise_mask"] = mask
    got, _ = run_cut(model, latent, seed=3, steps=3, conds=conds, patch_size=PATCH)
    kept = [got[0, ..., : half // 8 - 1], got[1, ..., half // 8 + 1:]]
    inputs = [latent["samples"][0, ..., : half // 8 - 1], latent["samples"][1, ..., half // 8 + 1:]]
    for k, i in zip(kept, inputs):
        torch.testing.assert_close(k, i, atol=1e-4, rtol=1e-4)


# -- SDXL size conditioning on a padded size ---------------------------------------------------------

def test_padded_size_conditioning_says_the_requested_size(model, conds):
    embed = model.model.embedder
    emb = lambda v: embed(torch.tensor([float(v)]))[0]
    with CountingModel(model) as counter:
        _, report = run_cut(model, rt.empty_latent(PADDED_W, PADDED_H), steps=2, conds=conds, patch_size=PATCH,
                            window_batch_size=1)
    assert report.plan.grid.padded_w * 8 != PADDED_W
    assert counter.ys
    for ys in counter.ys:
        for row in ys:
            sizes = row[1280:].view(6, 256)   # height, width, crop_h, crop_w, target_h, target_w
            for slot in (0, 4):
                torch.testing.assert_close(sizes[slot], emb(PADDED_H))
                torch.testing.assert_close(sizes[slot + 1], emb(PADDED_W))


# -- concat conditioning (inpainting models) --------------------------------------------------------

def _tiny_inpaint_sdxl(seed=0):
    """The tiny SDXL UNet as an inpainting model: 4 latent + 1 mask + 4 masked-image input channels."""
    config = rt._tiny_unet_config(9, 2816, use_linear=True)
    config["out_channels"] = 4
    model_config = comfy.supported_models.SDXL(config)
    model_config.unet_config["num_head_channels"] = 32
    patcher = rt._build(comfy.model_base.SDXL, model_config, seed)
    patcher.model.set_inpaint()
    return patcher


def _positions(height, width):
    """A latent whose every value says where it is: y * width + x + 1, on all 4 channels."""
    idx = torch.arange(height * width, dtype=torch.float32).view(1, 1, height, width) + 1
    return idx.repeat(1, 4, 1, 1)


def _with_concat(conds, concat_latent):
    return tuple([[c[0][0], dict(c[0][1], concat_latent_image=concat_latent)]] for c in conds)


@pytest.mark.parametrize("stage2_mode", ["overlap", "shifted"])
def test_concat_conditioning_is_cut_like_the_latent(conds, stage2_mode):
    """Stage-1 patches see the strided view of the masked image, stage-2 windows its crop."""
    model = _tiny_inpaint_sdxl()
    height, width = 2 * NATIVE, 3 * NATIVE
    positions = _positions(height, width)
    scale = float(model.model.latent_format.scale_factor)
    seen = []
    handle = model.model.diffusion_model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((args[0] if args else kwargs["x"])[:, 5:].clone()), with_kwargs=True)
    latent = rt.empty_latent(width * 8, height * 8)
    latent["noise_mask"] = torch.ones(1, height * 8, width * 8)   # without a mask the model sees a blank image
    try:
        got, report = run_cut(model, latent, steps=2, conds=_with_concat(conds, positions), patch_size=PATCH,
                              stage2_mode=stage2_mode)
    finally:
        handle.remove()
    assert got.shape == (1, 4, height, width)
    grid = report.plan.grid
    full = positions[0, 0]
    checked = 0
    for call in seen:
        for item in call:
            index = (item[0] / scale).round().long() - 1        # back to y * width + x
            ys, xs = index // width, index % width
            assert torch.equal(full[ys, xs] * scale, item[0]) or torch.allclose(full[ys, xs] * scale, item[0])
            if item.shape[-2:] == (grid.patch_h, grid.patch_w) and grid.n > 1 and (ys[1, 0] - ys[0, 0]) == grid.rows:
                # a stage-1 patch: rows `grid.rows` apart, columns `grid.cols` apart
                assert torch.all(ys[1:] - ys[:-1] == grid.rows) and torch.all(xs[:, 1:] - xs[:, :-1] == grid.cols)
            elif stage2_mode == "overlap":
                # a window: a contiguous crop
                assert torch.all(ys[1:] - ys[:-1] == 1) and torch.all(xs[:, 1:] - xs[:, :-1] == 1)
            else:
                # a shifted tile: contiguous up to the wrap-around of the rolled latent
                assert torch.all((ys[1:] - ys[:-1]) % height == 1) and torch.all((xs[:, 1:] - xs[:, :-1]) % width == 1)
            checked += 1
    assert checked >= 2 * (grid.n + 1)


def test_concat_conditioning_on_a_padded_size_runs(conds):
    model = _tiny_inpaint_sdxl()
    latent = rt.empty_latent(PADDED_W, PADDED_H)
    latent["noise_mask"] = torch.ones(1, PADDED_H, PADDED_W)
    got, report = run_cut(model, latent, steps=2, conds=conds, patch_size=PATCH)
    assert report.plan.grid.pad_h and got.shape == (1, 4, PADDED_H // 8, PADDED_W // 8)
    assert torch.isfinite(got).all()


# -- a schedule split across two sampler nodes -------------------------------------------------------

def _reports_of_segments(model, conds, latent, segments, steps):
    """Run a KSamplerAdvanced chain over `segments` of a `steps`-step schedule; (result, reports)."""
    import nodes
    reports = []
    current = latent
    for i, (start, end) in enumerate(segments):
        report = RunReport()
        patched = apply_cutdiffusion(model, CutDiffusionConfig(layout="patches", patch_size=PATCH), report)
        with torch.inference_mode():
            (current,) = nodes.common_ksampler(patched, 3, steps, 5.0, "euler", "normal", *conds, current,
                                               disable_noise=i > 0, start_step=start, last_step=end,
                                               force_full_denoise=end == steps)
        reports.append(report)
    return current["samples"], reports


@pytest.mark.parametrize("segments", [[(0, 3), (3, 6)], [(0, 2), (2, 4), (4, 6)], [(0, 1), (1, 6)]])
def test_ksampler_advanced_segments_split_like_one_node(model, conds, segments):
    """Each segment is its own run with its own random streams, so only a split at the stage
    boundary draws the same permutations and window offsets as the run in one node."""
    latent = rt.empty_latent(2 * PATCH, 2 * PATCH)
    whole, whole_report = run_cut(model, latent, seed=3, steps=6, conds=conds, patch_size=PATCH)
    t1 = whole_report.plan.stage1_steps
    assert whole_report.plan.stage2_steps == 6 - t1 == 3
    with CountingModel(model) as counter:
        got, reports = _reports_of_segments(model, conds, latent, segments, 6)
    stage1 = sum(r.plan.stage1_steps for r in reports)
    stage2 = sum(r.plan.stage2_steps for r in reports)
    assert (stage1, stage2) == (t1, 6 - t1)
    for (start, end), report in zip(segments, reports):
        assert report.plan.stage1_steps == max(0, min(end, t1) - start)
    grid, layout = whole_report.plan.grid, whole_report.plan.layout
    assert counter.images == 2 * (t1 * grid.n + (6 - t1) * layout.count)
    if [end for _, end in segments[:-1]] == [t1]:
        # The same draws: only the latent's round trip through the node boundary differs.
        torch.testing.assert_close(got, whole, atol=1e-4 * float(whole.abs().max()), rtol=1e-4)


def test_split_sigmas_segments_split_like_one_run(model, conds):
    latent = rt.empty_latent(2 * PATCH, 2 * PATCH)["samples"]
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", 6)
    noise = comfy.sample.prepare_noise(latent, 3)

    def run(sigma_list, start_noise, start_latent):
        report = RunReport()
        guider = comfy.samplers.CFGGuider(apply_cutdiffusion(model, CutDiffusionConfig(layout="patches", patch_size=PATCH), report))
        guider.set_conds(*conds)
        guider.set_cfg(5.0)
        with torch.inference_mode():
            out = guider.sample(start_noise, start_latent, comfy.samplers.sampler_object("euler"), sigma_list,
                                disable_pbar=True, seed=3)
        return out, report.plan

    whole, whole_plan = run(sigmas, noise, latent)
    high, low = sigmas[:4], sigmas[3:]          # SplitSigmas at step 3
    mid, high_plan = run(high, noise, latent)
    got, low_plan = run(low, torch.zeros_like(noise), mid)
    t1 = whole_plan.stage1_steps
    assert 0 < t1 < 6
    assert (high_plan.stage1_steps, low_plan.stage1_steps) == (min(3, t1), max(0, t1 - 3))
    assert high_plan.stage1_steps + low_plan.stage1_steps == t1
    torch.testing.assert_close(got, whole, atol=1e-4 * float(whole.abs().max()), rtol=1e-4)


# -- per-run state on shallow model clones ------------------------------------------------------------

def _options_snapshot(model):
    """model_options as plain values and object identities: what a run must leave as it found it.
    Frozen dataclasses (the patches' settings, copied with every clone) compare by value."""
    def walk(value):
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v) for v in value]
        if dataclasses.is_dataclass(value) and type(value).__dataclass_params__.frozen:
            return ("value", value)
        return ("object", id(value), type(value).__name__)
    return walk(model.model_options)


def _sample(patched, conds, latent, seed, steps=4):
    samples = latent["samples"]
    with torch.inference_mode():
        return comfy.sample.sample(patched, comfy.sample.prepare_noise(samples, seed), steps, 5.0, "euler", "normal",
                                   *conds, samples, disable_pbar=True, seed=seed).clone()


def test_clones_of_one_patched_model_share_no_run_state(model, conds):
    """Two clones sampled one after the other (as two KSamplers of one graph) give what each gives alone."""
    from cutdiff_core.adaptive_patch import apply_adaptive
    from cutdiff_core.adaptive import AdaptiveConfig
    patched = apply_adaptive(apply_cutdiffusion(model, CutDiffusionConfig(layout="patches", patch_size=PATCH)), AdaptiveConfig())
    before = _options_snapshot(patched)
    small, big = rt.empty_latent(2 * PATCH, PATCH), rt.empty_latent(2 * PATCH, 2 * PATCH)
    alone_a = _sample(patched.clone(), conds, small, seed=1, steps=8)
    alone_b = _sample(patched.clone(), conds, big, seed=2, steps=8)
    first, second = patched.clone(), patched.clone()
    a = _sample(first, conds, small, seed=1, steps=8)
    b = _sample(second, conds, big, seed=2, steps=8)
    assert torch.equal(a, alone_a) and torch.equal(b, alone_b)
    for m in (patched, first, second):
        assert _options_snapshot(m) == before
        assert cutdiffusion_patch.RUN_KEY not in m.model_options.get("transformer_options", {})


def test_interrupted_run_then_a_normal_one_share_no_state(model, conds):
    patched = apply_cutdiffusion(model, CutDiffusionConfig(layout="patches", patch_size=PATCH, window_batch_size=1))
    before = _options_snapshot(patched)
    latent = rt.empty_latent(2 * PATCH, 2 * PATCH)
    expected = _sample(patched.clone(), conds, latent, seed=4, steps=6)
    samples = latent["samples"]

    def interrupt_in_stage2(step, x0, x, total):
        if step == 4:
            comfy.model_management.interrupt_current_processing(True)

    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            with torch.inference_mode():
                comfy.sample.sample(patched, comfy.sample.prepare_noise(samples, 4), 6, 5.0, "euler", "normal",
                                    *conds, samples, callback=interrupt_in_stage2, disable_pbar=True, seed=4)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert _options_snapshot(patched) == before
    assert torch.equal(_sample(patched, conds, latent, seed=4, steps=6), expected)
    assert copy.deepcopy(model.model_options).get("transformer_options", {}).get(cutdiffusion_patch.RUN_KEY) is None


# -- the plan preview's MultiDiffusion comparison --------------------------------------------------

@pytest.mark.parametrize("mode", ["overlap", "shifted"])
def test_preview_counts_multidiffusion_with_its_own_windows(mode):
    from comfyui_cutdiffusion.nodes.plan_route import preview_plan
    plan = preview_plan({"width": 4096, "height": 4096, "steps": 30, "stage2_mode": mode, "layout": "patches"})
    assert plan["multidiffusion_evaluations"] == 30 * 49   # spec 3.6: 7 x 7 windows at 4096^2
    assert plan["windows"]["count"] == (49 if mode == "overlap" else 16)


def test_segment_that_stops_with_noise_left_takes_its_stages_from_the_noise_levels():
    from cutdiff_core.plan import stage1_steps
    full = [10.0, 8.0, 6.0, 4.0, 2.0, 1.0, 0.0]
    split = 3.0
    assert stage1_steps(full, split, 0.5) == 4
    assert stage1_steps(full[:4], split, 0.5) == 3      # ends above the split: all stage 1
    assert stage1_steps(full[4:], split, 0.5) == 0      # starts below it: all stage 2
    assert stage1_steps(full[2:], split, 0.5) == 2
    # A whole run still gives each stage a step, however few steps it has.
    assert stage1_steps([10.0, 8.0, 0.0], 1.0, 0.5) == 1


def _two_sampler_graph(samplers: dict) -> dict:
    """One CutDiffusion-patched MODEL feeding the given KSamplers (id -> (width, seed)), each saved."""
    patch = {"patch_size": PATCH, "window_stride": 0, "stage_split": 0.5, "window_batch_size": 0,
             "window_jitter": True, "pixel_interaction": True, "stage2_mode": "overlap",
             "window_weights": "uniform", "min_stage1_steps": 0, "global_guidance": 0.0, "layout": "patches",
             "layout_denoise": 0.3}
    prompt = {
        "model": {"class_type": rt.TINY_MODEL_NODE, "inputs": {"kind": "sdxl", "seed": 0}},
        "conds": {"class_type": rt.TINY_CONDS_NODE, "inputs": {"seed": 3, "batch": 1, "tokens": 8, "sdxl": True}},
        "patch": {"class_type": "CutDiffusion", "inputs": {"model": ["model", 0], **patch}},
    }
    for name, (width, seed) in samplers.items():
        prompt[f"latent_{name}"] = {"class_type": "EmptyLatentImage",
                                    "inputs": {"width": width, "height": PATCH, "batch_size": 1}}
        prompt[name] = {"class_type": "KSampler", "inputs": {
            "model": ["patch", 0], "seed": seed, "steps": 4, "cfg": 5.0, "sampler_name": "dpmpp_2m",
            "scheduler": "normal", "positive": ["conds", 0], "negative": ["conds", 1],
            "latent_image": [f"latent_{name}", 0], "denoise": 1.0}}
        prompt[f"save_{name}"] = {"class_type": "SaveLatent",
                                  "inputs": {"samples": [name, 0], "filename_prefix": f"reliability/{name}"}}
    return prompt


def test_one_patched_model_in_two_samplers_of_one_graph():
    """Two KSamplers on one CutDiffusion MODEL in one graph give what each gives in a graph of its own."""
    both = rt.run_prompt(_two_sampler_graph({"a": (2 * PATCH, 1), "b": (3 * PATCH, 2)}))
    (a,), (b,) = rt.saved_latents(both, "save_a"), rt.saved_latents(both, "save_b")
    (alone_a,) = rt.saved_latents(rt.run_prompt(_two_sampler_graph({"a": (2 * PATCH, 1)})), "save_a")
    (alone_b,) = rt.saved_latents(rt.run_prompt(_two_sampler_graph({"b": (3 * PATCH, 2)})), "save_b")
    assert a.shape[-1] == 2 * NATIVE and b.shape[-1] == 3 * NATIVE
    assert torch.equal(a, alone_a) and torch.equal(b, alone_b)
