"""Native-first layout (issue 17): a layout pass at about native size, upscaled, then the pack on
the tail of the same schedule. Checked against an independent composition of ComfyUI's own
sampling calls, and where it must not apply (native size, img2img, saved prompts without it)."""
import pytest
import torch

import comfy.sample
import comfy.samplers

from cutdiff_dev import comfy_runtime as rt
from helpers import CountingModel, run_cut, schedule

from cutdiff_core.cutdiffusion_patch import CutDiffusionConfig, RunReport, apply_cutdiffusion
from cutdiff_core.layout import native_first, upscale

PATCH = 128          # px: the tiny model's "native" size in these tests
NATIVE = PATCH // 8


@pytest.mark.parametrize("size, layout_hw", [
    ((32, 32), (16, 16)),     # 4x area: the native size
    ((48, 48), (16, 16)),     # 9x
    ((16, 48), (16, 48)),     # 3:1 with a native short side: the target itself
    ((32, 64), (16, 32)),     # 1:2 above native: short side native, the target's aspect
])
def test_layout_pass_has_a_native_short_side_and_the_targets_aspect(size, layout_hw):
    first = native_first(*size, NATIVE, 20, 0.3)
    assert (first.height, first.width) == layout_hw
    assert (first.steps, first.refine_from) == (20, 14)          # the last 6 of 20 steps at the target size
    assert first.layout_evaluations == 20 * round(layout_hw[0] * layout_hw[1] / NATIVE ** 2)


def test_no_layout_pass_where_the_target_fits_the_native_size():
    assert native_first(16, 16, NATIVE, 20, 0.3) is None
    assert native_first(8, 16, NATIVE, 20, 0.3) is None


def _reference(model, conds, latent, seed, steps, cfg, layout_denoise):
    """Native first from ComfyUI's own calls: KSampler at the layout size, bicubic upscale, then the
    paper's CutDiffusion on the last part of the same sigmas with fresh noise from seed + 1."""
    pos, neg = conds
    samples = latent["samples"]
    first = native_first(samples.shape[-2], samples.shape[-1], NATIVE, steps, layout_denoise)
    small = torch.zeros(*samples.shape[:-2], first.height, first.width)
    sigmas = schedule(model, steps)
    sampler = comfy.samplers.sampler_object("euler")
    with torch.inference_mode():
        layout = comfy.sample.sample_custom(model, comfy.sample.prepare_noise(small, seed), cfg, sampler, sigmas,
                                            pos, neg, small, disable_pbar=True, seed=seed)
        up = upscale(layout, *samples.shape[-2:])
        paper = apply_cutdiffusion(model, CutDiffusionConfig(patch_size=PATCH, layout="patches"))
        return comfy.sample.sample_custom(paper, comfy.sample.prepare_noise(up, seed + 1), cfg, sampler,
                                          sigmas[first.refine_from:], pos, neg, up, disable_pbar=True, seed=seed)


@pytest.mark.parametrize("size_px", [(256, 256), (384, 256)])
def test_native_first_is_layout_pass_upscale_and_the_pack_on_the_tail(model, conds, size_px):
    latent = rt.empty_latent(*size_px)
    with CountingModel(model) as counter:
        got, report = run_cut(model, latent, seed=4, steps=10, cfg=5.0, conds=conds, patch_size=PATCH,
                              layout="native first", layout_denoise=0.3)
    expected = _reference(model, conds, latent, 4, 10, 5.0, 0.3)
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, atol=1e-5 * scale, rtol=1e-4)
    # Images through the model: the layout pass (one image per step and CFG half) and the tail's plan.
    assert report.layout is not None and report.plan.steps == 3 and report.plan.stage1_steps == 0
    assert sum(counter.batches) == 2 * 10 + report.plan.model_evaluations()
    assert "native-first layout" in report.summary()


def test_native_first_at_native_size_is_ksampler(model, conds):
    latent = rt.empty_latent(PATCH, PATCH)
    got, report = run_cut(model, latent, seed=2, steps=6, conds=conds, patch_size=PATCH, layout="native first")
    assert report.layout is None
    assert torch.equal(got, rt.ksampler(model, 2, 6, 5.0, "euler", "normal", *conds, latent))


def test_img2img_keeps_the_papers_layout(model, conds):
    # A run that does not start from pure noise already has its layout: the input image.
    gen = torch.Generator().manual_seed(5)
    latent = {"samples": torch.randn(1, 4, 32, 32, generator=gen)}
    native, report = run_cut(model, latent, seed=3, steps=6, conds=conds, patch_size=PATCH, denoise=0.6,
                             layout="native first")
    paper, _ = run_cut(model, latent, seed=3, steps=6, conds=conds, patch_size=PATCH, denoise=0.6, layout="patches")
    assert report.layout is None and torch.equal(native, paper)


def test_saved_prompt_without_layout_runs_the_papers_layout(model, conds):
    """A prompt saved before the layout input existed keeps what it ran; a new node defaults to native first."""
    from cutdiff_core.config import config_from_inputs
    old = config_from_inputs({"patch_size": PATCH, "stage_split": 0.5})
    assert (old.layout, CutDiffusionConfig().layout) == ("patches", "native first")


def test_preview_counts_the_layout_pass():
    from comfyui_cutdiffusion.nodes.plan_route import preview_plan
    plan = preview_plan({"width": 2048, "height": 2048, "steps": 50})
    assert plan["layout"] == {"w": 1024, "h": 1024, "steps": 50, "evaluations": 50,
                              "summary": plan["layout"]["summary"]}
    assert (plan["stage1_steps"], plan["stage2_steps"]) == (0, 15)
    assert plan["evaluations_per_image"] == 50 + 15 * 9 == 185     # BENCHMARKS.md: 185 SDXL evaluations
    assert plan["multidiffusion_evaluations"] == 50 * 9
    paper = preview_plan({"width": 2048, "height": 2048, "steps": 50, "layout": "patches"})
    assert paper["layout"] is None and paper["evaluations_per_image"] == 325
