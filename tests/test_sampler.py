"""CutDiffusion sampling against ComfyUI's own KSampler and independent references (tiny models, CPU)."""
import copy
import types

import pytest
import torch

import comfy.latent_formats
import comfy.model_management
import comfy.sample
import comfy.samplers

from cutdiff_dev import comfy_runtime as rt
from helpers import (CountingModel, assert_matches_reference, reference_cutdiffusion, reference_windows, run_cut,
                     schedule)

from cutdiff_core import cutdiffusion_patch
from cutdiff_core.plan import stage1_steps

PATCH = 256          # px: the tiny tests' "native" size (32 latent px)
NATIVE = PATCH // 8


EXACT_SAMPLERS = ["euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "ddim", "uni_pc", "heun",
                  "lcm", "dpm_2"]


@pytest.mark.parametrize("sampler", EXACT_SAMPLERS)
@pytest.mark.parametrize("scheduler", ["normal", "karras"])
def test_native_size_equals_ksampler(model, conds, sampler, scheduler):
    latent = rt.empty_latent(PATCH, PATCH)
    expected = rt.ksampler(model, 7, 5, 4.5, sampler, scheduler, *conds, latent)
    got, report = run_cut(model, latent, seed=7, steps=5, cfg=4.5, sampler=sampler, scheduler=scheduler, conds=conds,
                          patch_size=PATCH)
    assert report.plan.grid.n == 1 and report.plan.layout.count == 1
    assert torch.equal(got, expected), (got - expected).abs().max()


def test_native_size_equals_ksampler_with_denoise_and_batch(model, conds):
    init = {"samples": torch.randn(2, 4, NATIVE, NATIVE, generator=torch.Generator().manual_seed(5))}
    expected = rt.ksampler(model, 11, 6, 3.0, "dpmpp_2m", "karras", *conds, init, denoise=0.6)
    got, _ = run_cut(model, init, seed=11, steps=6, cfg=3.0, sampler="dpmpp_2m", scheduler="karras", conds=conds,
                     denoise=0.6, patch_size=PATCH)
    assert torch.equal(got, expected)


def test_auto_patch_size_is_the_model_native_size(model):
    assert cutdiffusion_patch.native_size_px(model) == 1024
    assert cutdiffusion_patch.native_size_px(rt.tiny_sd15()) == 512


@pytest.mark.parametrize("w_px, h_px", [
    (2 * PATCH, 3 * PATCH // 2),   # 64x48 latent: a 2x2 patch grid, no padding
    # 51x33: a 2x2 grid of 26x17 patches needs one padded row and column
    (408, 264),
    # 75x45, 1000x600's aspect: a 2x3 grid of 25x23 patches, one padded row
    (600, 360),
])
def test_multidiffusion_special_case_matches_reference(model, conds, w_px, h_px):
    # stage_split 0, jitter off: plain MultiDiffusion at the target size (spec 3.5), on sizes that
    # are not multiples of the patch grid too: the reference lays its windows over the requested
    # latent and gives SDXL the requested size, whatever padding stage 1 would need.
    latent = rt.empty_latent(w_px, h_px)
    sigmas = schedule(model, 4)
    expected = reference_cutdiffusion(model, latent, 3, sigmas, 0, conds, 5.0, NATIVE, NATIVE // 2)
    got, report = run_cut(model, latent, seed=3, steps=4, conds=conds, patch_size=PATCH, stage_split=0.0,
                          window_jitter=False)
    assert report.plan.stage1_steps == 0
    assert got.shape == expected.shape == (1, 4, h_px // 8, w_px // 8)
    assert_matches_reference(got, expected)


def test_stage1_only_matches_patch_stack_reference(model, conds):
    # stage_split 1: the paper's stage 1 on an explicit patch stack, then relocation.
    latent = rt.empty_latent(2 * PATCH, 2 * PATCH)
    sigmas = schedule(model, 4)
    expected = reference_cutdiffusion(model, latent, 9, sigmas, 4, conds, 5.0, NATIVE, NATIVE // 2)
    got, report = run_cut(model, latent, seed=9, steps=4, conds=conds, patch_size=PATCH, stage_split=1.0)
    assert report.plan.stage1_steps == 4
    assert_matches_reference(got, expected)


@pytest.mark.parametrize("pixel_interaction", [True, False])
def test_two_stages_match_reference(model, conds, pixel_interaction):
    latent = rt.empty_latent(3 * PATCH // 2 * 2, 2 * PATCH)   # 2x2 patches of 24x32, 3x? windows
    sigmas = schedule(model, 6)
    t1 = stage1_steps(sigmas.tolist(), model.model.model_sampling.percent_to_sigma(0.5), 0.5)
    expected = reference_cutdiffusion(model, latent, 4, sigmas, t1, conds, 5.0, NATIVE, NATIVE // 2,
                                      pixel_interaction=pixel_interaction)
    got, report = run_cut(model, latent, seed=4, steps=6, conds=conds, patch_size=PATCH, window_jitter=False,
                          pixel_interaction=pixel_interaction)
    assert 0 < report.plan.stage1_steps == t1 < 6
    assert_matches_reference(got, expected)


def test_pixel_interaction_changes_the_result(model, conds):
    latent = rt.empty_latent(2 * PATCH, 2 * PATCH)
    a, _ = run_cut(model, latent, seed=4, steps=4, conds=conds, patch_size=PATCH)
    b, _ = run_cut(model, latent, seed=4, steps=4, conds=conds, patch_size=PATCH, pixel_interaction=False)
    assert (a - b).abs().max() > 1e-3


def test_size_conditioning_reaching_the_model(model, conds):
    """Stage 1: original = target = full size, crop (0, 0); stage 2: crop = the window offset."""
    h_px, w_px = 2 * PATCH, 3 * PATCH
    latent = rt.empty_latent(w_px, h_px)
    embed = model.model.embedder
    with CountingModel(model) as counter:
        _, report = run_cut(model, latent, seed=2, steps=2, conds=conds, patch_size=PATCH, window_jitter=False,
                            window_batch_size=1)
    assert report.plan.stage1_steps == 1
    n = report.plan.grid.n
    emb = lambda v: embed(torch.tensor([float(v)]))[0]
    full = [emb(h_px), emb(w_px)]
    # window_batch_size 1 batches stage 1 one patch at a time too.
    stage1_ys, stage2_ys = torch.cat(counter.ys[:n]), counter.ys[n:]
    assert stage1_ys.shape[0] == 2 * n               # cond + uncond, every patch
    for row in stage1_ys:
        sizes = row[1280:].view(6, 256)
        for got, want in zip(sizes, full + [emb(0), emb(0)] + full):
            torch.testing.assert_close(got, want)
    ys0 = reference_windows(h_px // 8, NATIVE, NATIVE // 2)
    xs0 = reference_windows(w_px // 8, NATIVE, NATIVE // 2)
    windows = [(y, x) for y in ys0 for x in xs0]
    assert len(stage2_ys) == len(windows)           # window_batch_size 1: one call per window
    for (y0, x0), ys in zip(windows, stage2_ys):
        for row in ys:
            sizes = row[1280:].view(6, 256)
            for got, want in zip(sizes, full + [emb(y0 * 8), emb(x0 * 8)] + full):
                torch.testing.assert_close(got, want)


def _expected_t1(model, sampler, steps, split=0.5):
    sigmas = schedule(model, steps, sampler=sampler)   # as KSampler builds them for this sampler
    t = len(sigmas) - 1
    threshold = model.model.model_sampling.percent_to_sigma(split)
    t1 = sum(1 for s in sigmas[:-1] if float(s) > threshold)
    return min(max(t1, 1), t - 1), t


@pytest.mark.parametrize("sampler, evals_per_step", [("euler", 1), ("dpmpp_2m", 1), ("euler_ancestral", 1),
                                                     ("heun", 2), ("dpm_2", 2)])
def test_model_evaluations_match_the_plan(model, conds, sampler, evals_per_step):
    latent = rt.empty_latent(2 * PATCH, 2 * PATCH)    # n = 4 patches, 9 windows
    t1, steps = _expected_t1(model, sampler, 6)
    with CountingModel(model) as counter:
        run_cut(model, latent, seed=1, steps=6, sampler=sampler, conds=conds, patch_size=PATCH, window_batch_size=3)
    n, windows, cfg_halves = 4, 9, 2
    # Two-evaluation samplers make one evaluation in the last step (sigma_next = 0).
    stage1_calls = t1 * evals_per_step
    stage2_steps_evals = (steps - t1) * evals_per_step - (evals_per_step - 1)
    assert counter.images == cfg_halves * (stage1_calls * n + stage2_steps_evals * windows)
    # Stage-1 evaluations carry the patch stack in batches of 3 + 1 patches (6 + 2 images), stage-2
    # ones 3 windows a call (6): the extra evaluation of the last stage-1 step is still stage 1.
    assert counter.batches == [cfg_halves * 3, cfg_halves * 1] * stage1_calls + \
        [cfg_halves * 3] * (stage2_steps_evals * 3)


@pytest.mark.parametrize("stage_split", [0.0, 0.5])
def test_window_batches_bound_the_model_batch(model, conds, stage_split):
    # Peak memory proxy: the largest batch through the model grows neither with the window count
    # nor with the patch count (stage 1 is batched by window_batch_size too).
    largest = []
    for size in (2 * PATCH, 3 * PATCH):
        with CountingModel(model) as counter:
            run_cut(model, rt.empty_latent(size, size), seed=1, steps=2, conds=conds, patch_size=PATCH,
                    stage_split=stage_split, window_batch_size=2)
        largest.append(max(counter.batches))
    assert largest == [2 * 2, 2 * 2]


def test_automatic_window_batch_is_sane(model):
    run = types.SimpleNamespace(window_batches={}, window_batch_size=0)  # the RunState fields the sizing uses
    x, window = torch.zeros(1, 4, 256, 256), cutdiffusion_patch.Window(0, 0, 128, 128)
    chunk = cutdiffusion_patch.windows_per_call(run, model.model, x, window, 2)
    assert 1 <= chunk <= cutdiffusion_patch.MAX_AUTO_WINDOW_BATCH
    # Sized once per run and window shape, not on every step.
    assert list(run.window_batches.values()) == [chunk]
    assert cutdiffusion_patch.windows_per_call(run, model.model, x, window, 2) == chunk
    assert len(run.window_batches) == 1


@pytest.mark.parametrize("scheduler", ["normal", "karras", "exponential"])
def test_split_lands_at_the_same_noise_level(model, scheduler):
    ms = model.model.model_sampling
    threshold = ms.percent_to_sigma(0.5)
    sigmas = comfy.samplers.calculate_sigmas(ms, scheduler, 50).tolist()
    t1 = stage1_steps(sigmas, threshold, 0.5)
    assert sigmas[t1 - 1] > threshold >= sigmas[t1]
    # The split noise level is within one step of the threshold on every schedule.
    assert sigmas[t1] / threshold > min(s1 / s0 for s0, s1 in zip(sigmas[:-2], sigmas[1:-1])) - 1e-6


def test_sdxl_normal_50_steps_is_the_reference_25_25(model):
    ms = model.model.model_sampling
    sigmas = comfy.samplers.calculate_sigmas(ms, "normal", 50).tolist()
    assert stage1_steps(sigmas, ms.percent_to_sigma(0.5), 0.5) == 25


@pytest.mark.parametrize("scheduler", ["normal", "karras", "exponential", "sgm_uniform"])
def test_two_step_runs_give_each_stage_a_step(model, conds, scheduler):
    with CountingModel(model) as counter:
        _, report = run_cut(model, rt.empty_latent(2 * PATCH, 2 * PATCH), steps=2, scheduler=scheduler, conds=conds,
                            patch_size=PATCH, stage_split=0.5)
    assert report.plan.stage1_steps == 1 and report.plan.stage2_steps == 1
    assert counter.batches[0] == 2 * 4 and counter.images == 2 * (4 + 9)


def test_seeds(model, conds):
    latent = rt.empty_latent(2 * PATCH, PATCH)
    a, _ = run_cut(model, latent, seed=5, conds=conds, patch_size=PATCH)
    b, _ = run_cut(model, latent, seed=5, conds=conds, patch_size=PATCH)
    c, _ = run_cut(model, latent, seed=6, conds=conds, patch_size=PATCH)
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 1e-2


@pytest.mark.parametrize("w_px, h_px", [(384, 256), (320, 576), (512, 256), (256, 512), (264, 520), (1000, 200)])
def test_any_size_and_aspect_ratio(model, conds, w_px, h_px):
    # 1.5x / 1280x2304-like non-multiples, 2:1, 1:2, sizes that need padding, a panorama.
    got, report = run_cut(model, rt.empty_latent(w_px, h_px), steps=3, conds=conds, patch_size=PATCH,
                          sampler="dpmpp_2m_sde", scheduler="karras")
    assert got.shape == (1, 4, h_px // 8, w_px // 8)
    assert torch.isfinite(got).all() and got.std() > 0.05
    g = report.plan.grid
    assert g.pad_h < g.rows and g.pad_w < g.cols


def test_batch_matches_per_image_reference(model, conds):
    # Each image of a batch gets its own patch stack and permutations: image b of a batch-2 run is
    # the single-image reference run on image b alone (its slice of ComfyUI's batch noise and of
    # each evaluation's permutation draw), through both stages. Compared to float32 precision
    # (assert_matches_reference: atol 1e-5 of the latent's scale), not bit for bit: the batch
    # goes through the model in other batches than the reference's.
    latent = rt.empty_latent(2 * PATCH, 3 * PATCH // 2, batch=2)   # 48x64 latent: 2x2 patches of 24x32
    sigmas = schedule(model, 4)
    t1 = stage1_steps(sigmas.tolist(), model.model.model_sampling.percent_to_sigma(0.5), 0.5)
    got, report = run_cut(model, latent, seed=8, steps=4, conds=conds, patch_size=PATCH, window_jitter=False)
    assert 0 < report.plan.stage1_steps == t1 < 4 and report.plan.grid.n == 4
    assert got.shape == (2, 4, 3 * NATIVE // 2, 2 * NATIVE)
    for b in range(2):
        expected = reference_cutdiffusion(model, latent, 8, sigmas, t1, conds, 5.0, NATIVE, NATIVE // 2,
                                          batch_index=b)
        assert_matches_reference(got[b:b + 1], expected)
    assert (got[0] - got[1]).abs().mean() > 1e-2   # two different images, not one twice


def test_sixteen_channel_latents(conds):
    model16 = rt.tiny_sdxl(seed=1, in_channels=16, latent_format=comfy.latent_formats.SD3())
    latent = rt.empty_latent(PATCH, PATCH, channels=16)
    expected = rt.ksampler(model16, 2, 3, 4.0, "euler", "normal", *conds, latent)
    got, _ = run_cut(model16, latent, seed=2, steps=3, cfg=4.0, conds=conds, patch_size=PATCH)
    assert torch.equal(got, expected)
    big, _ = run_cut(model16, rt.empty_latent(2 * PATCH, PATCH, channels=16), steps=3, conds=conds, patch_size=PATCH)
    assert big.shape == (1, 16, NATIVE, 2 * NATIVE) and torch.isfinite(big).all()


def test_sd15_model(conds):
    sd15 = rt.tiny_sd15(seed=2)
    pos, neg = rt.tiny_conds(seed=3, sdxl=False)
    got, report = run_cut(sd15, rt.empty_latent(2 * PATCH, 2 * PATCH), steps=3, conds=(pos, neg), patch_size=PATCH)
    assert report.plan.grid.n == 4 and got.shape == (1, 4, 2 * NATIVE, 2 * NATIVE) and torch.isfinite(got).all()


def _custom_sample(model, conds, latent, seed, steps, sampler_name, scheduler, cfg):
    """SamplerCustomAdvanced's code path: CFGGuider + sampler object + sigmas."""
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(*conds)
    guider.set_cfg(cfg)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps)
    samples = latent["samples"]
    noise = comfy.sample.prepare_noise(samples, seed)
    with torch.inference_mode():
        return guider.sample(noise, samples, comfy.samplers.sampler_object(sampler_name), sigmas, disable_pbar=True,
                             seed=seed).clone()


def test_patch_with_sampler_custom_advanced(model, conds):
    latent = rt.empty_latent(PATCH, PATCH)
    patched = cutdiffusion_patch.apply_cutdiffusion(model, cutdiffusion_patch.CutDiffusionConfig(layout="patches", patch_size=PATCH))
    plain = _custom_sample(model, conds, latent, 4, 5, "dpmpp_2m_sde", "karras", 4.0)
    assert torch.equal(_custom_sample(patched, conds, latent, 4, 5, "dpmpp_2m_sde", "karras", 4.0), plain)
    # At 4x area the custom path and CutDiffusion KSampler's path are the same algorithm.
    big = rt.empty_latent(2 * PATCH, 2 * PATCH)
    via_custom = _custom_sample(patched, conds, big, 4, 5, "euler", "normal", 5.0)
    via_node, _ = run_cut(model, big, seed=4, steps=5, conds=conds, patch_size=PATCH)
    assert torch.equal(via_custom, via_node)


def _wrappers(model):
    return {kind: {key: list(fns) for key, fns in by_key.items()} for kind, by_key in model.wrappers.items()}


def test_input_model_is_not_modified(model, conds):
    options_before = copy.deepcopy(model.model_options)
    wrappers_before = _wrappers(model)
    run_cut(model, rt.empty_latent(2 * PATCH, 2 * PATCH), conds=conds, patch_size=PATCH)
    assert model.model_options == options_before
    assert _wrappers(model) == wrappers_before
    assert all(cutdiffusion_patch.WRAPPER_KEY not in by_key for by_key in model.wrappers.values())


def test_interrupted_run_leaves_models_clean(model, conds):
    patched = cutdiffusion_patch.apply_cutdiffusion(model, cutdiffusion_patch.CutDiffusionConfig(layout="patches", patch_size=PATCH,
                                                                                       window_batch_size=1))
    wrappers = _wrappers(patched)
    latent = rt.empty_latent(2 * PATCH, 2 * PATCH)
    noise = comfy.sample.prepare_noise(latent["samples"], 1)

    def interrupt_at_step_two(step, x0, x, total):
        if step == 2:
            comfy.model_management.interrupt_current_processing(True)

    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            with torch.inference_mode():
                comfy.sample.sample(patched, noise, 6, 5.0, "euler", "normal", *conds, latent["samples"],
                                    callback=interrupt_at_step_two, disable_pbar=True, seed=1)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert cutdiffusion_patch.RUN_KEY not in patched.model_options["transformer_options"]
    assert _wrappers(patched) == wrappers
    assert cutdiffusion_patch.RUN_KEY not in model.model_options.get("transformer_options", {})
    assert all(cutdiffusion_patch.WRAPPER_KEY not in by_key for by_key in model.wrappers.values())


@pytest.mark.parametrize("field, value, message", [
    ("stage_split", 1.5, "stage_split = 1.5 is outside the allowed range [0.0, 1.0]"),
    ("patch_size", 100, "patch_size = 100 must be a multiple of 8"),
    ("window_stride", 2048, "window_stride = 2048 must be in [8, 1024]"),
    ("window_batch_size", -1, "window_batch_size = -1 is outside the allowed range [0, 256]"),
])
def test_bad_input_is_a_clear_error(model, field, value, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        cutdiffusion_patch.apply_cutdiffusion(model, cutdiffusion_patch.CutDiffusionConfig(**{field: value}))
