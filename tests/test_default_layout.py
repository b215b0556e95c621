"""What users run by default (layout native first, its target pass on the whole frame) and its tiled
path keep the guarantees the paper's layout has (issue 24): every sampler counts its evaluations, a
batch keeps per-image conds apart, a cancelled run leaves nothing behind, AdaptiveDiffusion chains,
SDXL size conditioning says what each pass samples."""
import pytest
import torch

import comfy.model_management
import comfy.patcher_extension
import comfy.sample

from cutdiff_dev import comfy_runtime as rt
from helpers import CountingModel, run_cut

from cutdiff_core.adaptive import AdaptiveConfig
from cutdiff_core.adaptive_patch import AdaptiveReport, apply_adaptive
from cutdiff_core.cutdiffusion_patch import RUN_KEY, CutDiffusionConfig, RunReport, apply_cutdiffusion, sample
from cutdiff_core.plan import EVALUATIONS_PER_STEP

PATCH = 128           # the tiny model's "native" size here: 16 latent px
LAYOUT_HW = (16, 16)  # the layout pass of a 2x2 target: the native area
TARGET_PASSES = ["whole frame", "tiles"]


def _default(**overrides):
    """The default settings (only the test model's native size set), or the tiled target pass at the
    re-entry it was measured at (0.3: the target pass starts below the stage split)."""
    tiled = {"layout_denoise": 0.3} if overrides.get("target_pass") == "tiles" else {}
    return {"patch_size": PATCH, **tiled, **overrides, "layout": "native first"}


def test_the_default_is_native_first_on_the_whole_frame():
    defaults = CutDiffusionConfig()
    assert (defaults.layout, defaults.target_pass, defaults.layout_denoise) == ("native first", "whole frame", 0.5)


@pytest.mark.parametrize("target_pass", TARGET_PASSES)
@pytest.mark.parametrize("sampler, scheduler", [
    ("euler", "normal"), ("dpmpp_2m", "karras"), ("euler_ancestral", "exponential"), ("heun", "sgm_uniform"),
    ("dpmpp_sde", "simple"), ("uni_pc", "beta"), ("lcm", "normal"), ("ddim", "ddim_uniform"),
])
def test_every_sampler_and_scheduler_runs_and_counts_its_evaluations(model, conds, sampler, scheduler, target_pass):
    steps, per_step = 7, EVALUATIONS_PER_STEP.get(sampler, 1)
    with CountingModel(model) as counter:
        out, report = run_cut(model, rt.empty_latent(2 * PATCH, 2 * PATCH), steps=steps, sampler=sampler,
                              scheduler=scheduler, conds=conds, **_default(target_pass=target_pass))
    first = report.layout
    assert first is not None and (first.height, first.width) == LAYOUT_HW   # ddim_uniform too (KSampler's denoise 1)
    assert torch.isfinite(out).all() and counter.shapes[0][-2:] == LAYOUT_HW
    tail = first.steps - first.refine_from                   # first.steps: the scheduler's (ddim_uniform's) count
    evaluations = lambda n: n * per_step - (per_step - 1)    # a two-evaluation step ends with one at sigma 0
    layout_images = 2 * evaluations(first.steps)             # cond + uncond, one native-size image
    if target_pass == "whole frame":
        assert report.plan is None and counter.shapes[-1][-2:] == (32, 32)
        assert counter.images == layout_images + 2 * evaluations(tail)
        return
    plan = report.plan
    assert plan.steps == tail and plan.stage1_steps == 0 and plan.guidance == "layout"
    target_images = 2 * evaluations(tail) * (plan.layout.count + plan.grid.n)   # tiles + the guiding patches
    assert counter.images == layout_images + target_images
    assert 2 * (report.stage1_evaluations + report.stage2_evaluations) == target_images


def _per_image(conds_a, conds_b):
    """CONDITIONING whose batch holds image 0's conds from `conds_a` and image 1's from `conds_b`."""
    def join(a, b):
        return [[torch.cat([a[0][0], b[0][0]]),
                 {"pooled_output": torch.cat([a[0][1]["pooled_output"], b[0][1]["pooled_output"]])}]]
    return tuple(join(a, b) for a, b in zip(conds_a, conds_b))


@pytest.mark.parametrize("target_pass", TARGET_PASSES)
def test_a_batch_keeps_each_images_conds(model, conds, target_pass):
    other = rt.tiny_conds(seed=11)
    latent = rt.empty_latent(2 * PATCH, 2 * PATCH, batch=2)
    settings = _default(target_pass=target_pass)
    mixed, _ = run_cut(model, latent, seed=4, steps=4, conds=_per_image(conds, other), **settings)
    same, _ = run_cut(model, latent, seed=4, steps=4, conds=_per_image(conds, conds), **settings)
    torch.testing.assert_close(mixed[0], same[0], atol=1e-5 * float(same.abs().max()), rtol=1e-4)
    assert (mixed[1] - same[1]).abs().mean() > 1e-2


@pytest.mark.parametrize("target_pass", TARGET_PASSES)
def test_a_cancelled_run_leaves_nothing_and_the_rerun_equals_a_fresh_one(model, conds, target_pass):
    report = RunReport()
    settings = _default(window_batch_size=1, target_pass=target_pass)
    patched = apply_cutdiffusion(model, CutDiffusionConfig(**settings), report)
    latent = rt.empty_latent(2 * PATCH, 2 * PATCH)
    noise = comfy.sample.prepare_noise(latent["samples"], 1)
    steps = 6
    shapes = []

    def cancel_in_the_target_pass(step, x0, x, total):
        shapes.append(tuple(x.shape[-2:]))
        if step == 6 - round(CutDiffusionConfig(**settings).layout_denoise * 6):   # the target pass's first step
            comfy.model_management.interrupt_current_processing(True)

    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            with torch.inference_mode():
                comfy.sample.sample(patched, noise, steps, 5.0, "euler", "normal", *conds, latent["samples"],
                                    callback=cancel_in_the_target_pass, disable_pbar=True, seed=1)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert shapes[-1] == (32, 32) and report.layout is not None    # cancelled inside the target pass
    assert RUN_KEY not in patched.model_options.get("transformer_options", {})
    with torch.inference_mode():
        rerun = sample(patched, 1, steps, 5.0, "euler", "normal", *conds, latent)["samples"]
    fresh, _ = run_cut(model, latent, seed=1, steps=steps, conds=conds, **settings)
    assert torch.equal(rerun, fresh)


@pytest.mark.parametrize("target_pass", TARGET_PASSES)
def test_adaptive_diffusion_chains_with_native_first(model, conds, target_pass):
    latent = rt.empty_latent(2 * PATCH, 2 * PATCH)
    settings = dict(steps=8, sampler="dpmpp_2m", conds=conds, **_default(target_pass=target_pass))
    plain, _ = run_cut(model, latent, **settings)
    unskipping = apply_adaptive(model, AdaptiveConfig(threshold=0.0, warmup_steps=0))
    assert torch.equal(run_cut(unskipping, latent, **settings)[0], plain)

    adaptive_report = AdaptiveReport()
    skipping = apply_adaptive(model, AdaptiveConfig(threshold=0.3, max_skip_steps=3, warmup_steps=2), adaptive_report)
    with CountingModel(model) as counter:
        got, report = run_cut(skipping, latent, **settings)
    first = report.layout
    assert adaptive_report.skipped > 0 and not torch.equal(got, plain)
    assert adaptive_report.evaluated + adaptive_report.skipped == first.steps + (first.steps - first.refine_from)
    if target_pass == "whole frame":   # one call per evaluation made, cond + uncond
        assert counter.batches == [2] * adaptive_report.evaluated
        return
    # Whole evaluations are skipped: what reached the model is the layout pass's evaluations made
    # (2 images each: the target pass batches its 4 tiles and its 4 patches) and the target pass's,
    # each with every tile and patch.
    per_target_evaluation = report.plan.layout.count + report.plan.grid.n
    layout_made = sum(1 for shape in counter.shapes if shape[0] == 2 and shape[-2:] == LAYOUT_HW)
    target_images = counter.images - 2 * layout_made
    assert target_images == 2 * (report.stage1_evaluations + report.stage2_evaluations)
    assert target_images % (2 * per_target_evaluation) == 0
    assert layout_made + target_images // (2 * per_target_evaluation) == adaptive_report.evaluated


@pytest.mark.parametrize("target_pass", TARGET_PASSES)
def test_sdxl_size_conditioning_says_what_each_pass_samples(model, conds, target_pass):
    """The layout pass is conditioned on its own size; the target pass on the target size, the whole
    frame at crop 0 and each tile at its crop (where the rolled tile starts), as the paper's windows."""
    embed = model.model.embedder
    emb = lambda v: embed(torch.tensor([float(v)]))[0]
    with CountingModel(model) as counter:
        _, report = run_cut(model, rt.empty_latent(2 * PATCH, 2 * PATCH), steps=5, conds=conds,
                            **_default(window_batch_size=1, layout_guidance=0.0, target_pass=target_pass))
    first = report.layout
    layout_ys, target_ys = counter.ys[:first.steps], counter.ys[first.steps:]
    for ys in layout_ys:
        for row in ys:
            sizes = row[1280:].view(6, 256)
            for got, want in zip(sizes, [emb(PATCH), emb(PATCH), emb(0), emb(0), emb(PATCH), emb(PATCH)]):
                torch.testing.assert_close(got, want)
    tail = first.steps - first.refine_from
    assert len(target_ys) == tail * (1 if target_pass == "whole frame" else report.plan.layout.count)
    crops = set()
    for ys in target_ys:
        for row in ys:
            sizes = row[1280:].view(6, 256)
            for got, want in zip([sizes[0], sizes[1], sizes[4], sizes[5]], [emb(2 * PATCH)] * 4):
                torch.testing.assert_close(got, want)
            crops.add(tuple(next(v for v in range(0, 2 * PATCH, 8) if torch.allclose(s, emb(v), atol=1e-5))
                            for s in sizes[2:4]))
    assert crops == {(0, 0)} if target_pass == "whole frame" else len(crops) > 1   # rolled tiles start anywhere


def _out_of_memory_above(patched, side: int):
    """`patched` with a UNet wrapper that runs out of memory on latents larger than `side` x `side`,
    as a card would on a whole frame it cannot hold."""
    def unet(executor, x, *args, **kwargs):
        if x.shape[-2] * x.shape[-1] > side * side:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return executor(x, *args, **kwargs)
    patched = patched.clone()
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_oom", unet)
    return patched


def test_a_whole_frame_too_large_for_memory_names_the_tiled_path(model, conds):
    latent = rt.empty_latent(2 * PATCH, 2 * PATCH)
    whole = _out_of_memory_above(apply_cutdiffusion(model, CutDiffusionConfig(**_default())), PATCH // 8)
    with pytest.raises(RuntimeError, match=r"whole-frame target pass at 256x256 px ran out of memory; set "
                                           r"target_pass to tiles") as caught:
        sample(whole, 1, 4, 5.0, "euler", "normal", *conds, latent)
    assert isinstance(caught.value.__cause__, torch.OutOfMemoryError)
    # The path it names holds every model call to the native size, so the same card runs it.
    tiled = _out_of_memory_above(apply_cutdiffusion(model, CutDiffusionConfig(**_default(target_pass="tiles"))),
                                 PATCH // 8)
    out = sample(tiled, 1, 4, 5.0, "euler", "normal", *conds, latent)["samples"]
    assert out.shape[-2:] == (32, 32) and torch.isfinite(out).all()


@pytest.mark.parametrize("target_pass", TARGET_PASSES)
def test_clones_of_a_patched_model_run_the_patch_and_fill_its_report(model, conds, target_pass):
    """Other nodes clone the MODEL between the patch and the sampler (ModelPatcher.clone deep-copies
    the options): the clone samples exactly like the patched model and the patcher still reads its
    report; the patch keeps no report alive that nobody reads."""
    latent = rt.empty_latent(2 * PATCH, 2 * PATCH)
    report = RunReport()
    patched = apply_cutdiffusion(model, CutDiffusionConfig(**_default(target_pass=target_pass)), report)
    direct = sample(patched, 3, 4, 5.0, "euler", "normal", *conds, latent)["samples"]
    notes = list(report.notes)
    report.notes = []
    cloned = sample(patched.clone().clone(), 3, 4, 5.0, "euler", "normal", *conds, latent)["samples"]
    assert torch.equal(direct, cloned)
    assert report.notes == notes and report.layout is not None
    unread = apply_cutdiffusion(model, CutDiffusionConfig(**_default(target_pass=target_pass)), RunReport())
    assert torch.equal(sample(unread, 3, 4, 5.0, "euler", "normal", *conds, latent)["samples"], direct)
