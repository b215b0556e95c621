"""The default users run (layout native first) keeps the guarantees the paper's layout has (issue 24):
every sampler counts its evaluations, a batch keeps per-image conds apart, a cancelled run leaves
nothing behind, AdaptiveDiffusion chains, SDXL size conditioning says what each pass samples."""
import pytest
import torch

import comfy.model_management
import comfy.sample

from cutdiff_dev import comfy_runtime as rt
from helpers import CountingModel, run_cut

from cutdiff_core.adaptive import AdaptiveConfig
from cutdiff_core.adaptive_patch import AdaptiveReport, apply_adaptive
from cutdiff_core.cutdiffusion_patch import RUN_KEY, CutDiffusionConfig, RunReport, apply_cutdiffusion, sample
from cutdiff_core.plan import EVALUATIONS_PER_STEP

PATCH = 128           # the tiny model's "native" size here: 16 latent px
LAYOUT_HW = (16, 16)  # the layout pass of a 2x2 target: the native area


def _default(**overrides):
    """The default settings (nothing but the test model's native size is set)."""
    return {"patch_size": PATCH, **overrides, "layout": "native first"}


@pytest.mark.parametrize("sampler, scheduler", [
    ("euler", "normal"), ("dpmpp_2m", "karras"), ("euler_ancestral", "exponential"), ("heun", "sgm_uniform"),
    ("dpmpp_sde", "simple"), ("uni_pc", "beta"), ("lcm", "normal"), ("ddim", "ddim_uniform"),
])
def test_every_sampler_and_scheduler_runs_and_counts_its_evaluations(model, conds, sampler, scheduler):
    steps, per_step = 7, EVALUATIONS_PER_STEP.get(sampler, 1)
    with CountingModel(model) as counter:
        _, report = run_cut(model, rt.empty_latent(2 * PATCH, 2 * PATCH), steps=steps, sampler=sampler,
                            scheduler=scheduler, conds=conds, **_default())
    first, plan = report.layout, report.plan
    assert first is not None and (first.height, first.width) == LAYOUT_HW   # ddim_uniform too (KSampler's denoise 1)
    tail = first.steps - first.refine_from                   # first.steps: the scheduler's (ddim_uniform's) count
    assert plan.steps == tail and plan.stage1_steps == 0 and plan.guidance == "layout"
    evaluations = lambda n: n * per_step - (per_step - 1)    # a two-evaluation step ends with one at sigma 0
    layout_images = 2 * evaluations(first.steps)             # cond + uncond, one native-size image
    target_images = 2 * evaluations(tail) * (plan.layout.count + plan.grid.n)   # tiles + the guiding patches
    assert counter.images == layout_images + target_images
    assert 2 * (report.stage1_evaluations + report.stage2_evaluations) == target_images
    assert counter.shapes[0][-2:] == LAYOUT_HW


def _per_image(conds_a, conds_b):
    """CONDITIONING whose batch holds image 0's conds from `conds_a` and image 1's from `conds_b`."""
    def join(a, b):
        return [[torch.cat([a[0][0], b[0][0]]),
                 {"pooled_output": torch.cat([a[0][1]["pooled_output"], b[0][1]["pooled_output"]])}]]
    return tuple(join(a, b) for a, b in zip(conds_a, conds_b))


def test_a_batch_keeps_each_images_conds(model, conds):
    other = rt.tiny_conds(seed=11)
    latent = rt.empty_latent(2 * PATCH, 2 * PATCH, batch=2)
    mixed, _ = run_cut(model, latent, seed=4, steps=4, conds=_per_image(conds, other), **_default())
    same, _ = run_cut(model, latent, seed=4, steps=4, conds=_per_image(conds, conds), **_default())
    torch.testing.assert_close(mixed[0], same[0], atol=1e-5 * float(same.abs().max()), rtol=1e-4)
    assert (mixed[1] - same[1]).abs().mean() > 1e-2


def test_a_cancelled_run_leaves_nothing_and_the_rerun_equals_a_fresh_one(model, conds):
    report = RunReport()
    patched = apply_cutdiffusion(model, CutDiffusionConfig(**_default(window_batch_size=1)), report)
    latent = rt.empty_latent(2 * PATCH, 2 * PATCH)
    noise = comfy.sample.prepare_noise(latent["samples"], 1)
    steps = 6

    def cancel_in_the_target_pass(step, x0, x, total):
        if step == steps - 2:   # the target pass's first step (the layout pass reports 0-3 of 6)
            comfy.model_management.interrupt_current_processing(True)

    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            with torch.inference_mode():
                comfy.sample.sample(patched, noise, steps, 5.0, "euler", "normal", *conds, latent["samples"],
                                    callback=cancel_in_the_target_pass, disable_pbar=True, seed=1)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert report.plan is not None                     # it was cancelled inside the target pass
    assert RUN_KEY not in patched.model_options.get("transformer_options", {})
    with torch.inference_mode():
        rerun = sample(patched, 1, steps, 5.0, "euler", "normal", *conds, latent)["samples"]
    fresh, _ = run_cut(model, latent, seed=1, steps=steps, conds=conds, **_default(window_batch_size=1))
    assert torch.equal(rerun, fresh)


def test_adaptive_diffusion_chains_with_the_default(model, conds):
    latent = rt.empty_latent(2 * PATCH, 2 * PATCH)
    plain, _ = run_cut(model, latent, steps=8, sampler="dpmpp_2m", conds=conds, **_default())
    unskipping = apply_adaptive(model, AdaptiveConfig(threshold=0.0, warmup_steps=0))
    assert torch.equal(run_cut(unskipping, latent, steps=8, sampler="dpmpp_2m", conds=conds, **_default())[0], plain)

    adaptive_report = AdaptiveReport()
    skipping = apply_adaptive(model, AdaptiveConfig(threshold=0.3, max_skip_steps=3, warmup_steps=2), adaptive_report)
    with CountingModel(model) as counter:
        got, report = run_cut(skipping, latent, steps=8, sampler="dpmpp_2m", conds=conds, **_default())
    assert adaptive_report.skipped > 0 and not torch.equal(got, plain)
    # Whole evaluations are skipped: what reached the model is the layout pass's evaluations made
    # (one image and CFG half each) and the target pass's, each with every tile and patch.
    per_target_evaluation = report.plan.layout.count + report.plan.grid.n
    # (the target pass batches its 4 tiles and its 4 patches: only the layout pass calls with 2 images)
    layout_made = sum(1 for shape in counter.shapes if shape[0] == 2 and shape[-2:] == LAYOUT_HW)
    target_images = counter.images - 2 * layout_made
    assert target_images == 2 * (report.stage1_evaluations + report.stage2_evaluations)
    assert target_images % (2 * per_target_evaluation) == 0
    assert layout_made + target_images // (2 * per_target_evaluation) == adaptive_report.evaluated
    assert adaptive_report.evaluated + adaptive_report.skipped == 8 + report.plan.steps


def test_sdxl_size_conditioning_says_what_each_pass_samples(model, conds):
    """The layout pass is conditioned on its own size; the target pass's tiles on the target size and
    their crop (where the rolled tile starts), as the paper's windows are."""
    embed = model.model.embedder
    emb = lambda v: embed(torch.tensor([float(v)]))[0]
    with CountingModel(model) as counter:
        _, report = run_cut(model, rt.empty_latent(2 * PATCH, 2 * PATCH), steps=5, conds=conds,
                            **_default(window_batch_size=1, layout_guidance=0.0))
    steps_before = report.layout.refine_from
    layout_ys, target_ys = counter.ys[:steps_before], counter.ys[report.layout.steps:]
    for ys in layout_ys:
        for row in ys:
            sizes = row[1280:].view(6, 256)
            for got, want in zip(sizes, [emb(PATCH), emb(PATCH), emb(0), emb(0), emb(PATCH), emb(PATCH)]):
                torch.testing.assert_close(got, want)
    assert len(target_ys) == report.plan.steps * report.plan.layout.count
    crops = set()
    for ys in target_ys:
        for row in ys:
            sizes = row[1280:].view(6, 256)
            for got, want in zip([sizes[0], sizes[1], sizes[4], sizes[5]], [emb(2 * PATCH)] * 4):
                torch.testing.assert_close(got, want)
            crops.add(tuple(next(v for v in range(0, 2 * PATCH, 8) if torch.allclose(s, emb(v), atol=1e-5))
                            for s in sizes[2:4]))
    assert len(crops) > 1   # the rolled tiles start at several places
