"""Native-first layout (issue 17): a layout pass at about native size, upscaled, then the pack on
the tail of the same schedule. Checked against an independent composition of ComfyUI's own
sampling calls, and where it must not apply (native size, img2img, saved prompts without it)."""
import pytest
import torch
import torch.nn.functional as F

import comfy.sample
import comfy.samplers
import comfy.utils

from cutdiff_dev import comfy_runtime as rt
from helpers import CountingModel, run_cut, schedule

from cutdiff_core.cutdiffusion_patch import CutDiffusionConfig, RunReport, apply_cutdiffusion, sample
from cutdiff_core.layout import native_first

PATCH = 128          # px: the tiny model's "native" size in these tests
NATIVE = PATCH // 8


@pytest.mark.parametrize("size, layout_hw", [
    ((32, 32), (16, 16)),     # 4x area: the native size
    ((48, 48), (16, 16)),     # 9x
    ((32, 64), (11, 23)),     # 1:2: the native area (256 latent px) at the target's aspect
    ((16, 48), (9, 28)),      # 3:1 with a native short side: the native area too, not the target
])
def test_layout_pass_has_the_native_area_and_the_targets_aspect(size, layout_hw):
    first = native_first(*size, NATIVE, 20, 0.3)
    assert (first.height, first.width) == layout_hw
    assert (first.steps, first.refine_from) == (20, 14)          # the last 6 of 20 steps at the target size
    assert first.layout_evaluations == 20 * round(layout_hw[0] * layout_hw[1] / NATIVE ** 2)


def test_a_target_within_the_native_area_is_sampled_directly(model, conds):
    """3:1 at 3/4 of the native area (a long side above native): the layout pass is the target
    itself, nothing is re-run, so the run is KSampler's bit for bit and costs what it costs."""
    first = native_first(8, 24, NATIVE, 20, 0.3)
    assert (first.height, first.width, first.refine_from) == (8, 24, 20) and first.is_whole_run
    assert first.layout_evaluations == 20
    latent = rt.empty_latent(3 * PATCH // 2, PATCH // 2)
    with CountingModel(model) as counter:
        got, report = run_cut(model, latent, seed=2, steps=6, conds=conds, patch_size=PATCH, layout="native first",
                              target_pass="tiles", layout_denoise=0.3)
    assert report.plan is None and report.layout.is_whole_run and "sampled directly" in report.summary()
    assert sum(counter.batches) == 2 * 6
    assert torch.equal(got, rt.ksampler(model, 2, 6, 5.0, "euler", "normal", *conds, latent))


def test_no_layout_pass_where_the_target_fits_the_native_size():
    assert native_first(16, 16, NATIVE, 20, 0.3) is None
    assert native_first(8, 16, NATIVE, 20, 0.3) is None


def _reference(model, conds, latent, seed, steps, cfg, layout_denoise):
    """Native first without layout guidance from ComfyUI's own calls: KSampler at the layout size,
    bicubic upscale, then the paper's stage 2 in shifted tiles on the last part of the same sigmas
    with fresh noise from seed + 1, each denoised prediction taking the upscaled layout's structure
    at half the layout size (the anchor; on ComfyUI's post-CFG hook, equal to anchoring each
    prediction before CFG since both are linear)."""
    pos, neg = conds
    samples = latent["samples"]
    first = native_first(samples.shape[-2], samples.shape[-1], NATIVE, steps, layout_denoise)
    small = torch.zeros(*samples.shape[:-2], first.height, first.width)
    sigmas = schedule(model, steps)
    sampler = comfy.samplers.sampler_object("euler")
    with torch.inference_mode():
        layout = comfy.sample.sample_custom(model, comfy.sample.prepare_noise(small, seed), cfg, sampler, sigmas,
                                            pos, neg, small, disable_pbar=True, seed=seed)
        up = torch.nn.functional.interpolate(layout, size=samples.shape[-2:], mode="bicubic")
        anchor = model.model.process_latent_in(up)
        coarse_hw = (first.height // 2, first.width // 2)

        def keep_layout(args):
            difference = anchor - args["denoised"]
            coarse = torch.nn.functional.interpolate(difference, size=coarse_hw, mode="area")
            return args["denoised"] + torch.nn.functional.interpolate(coarse, size=samples.shape[-2:], mode="bicubic")

        paper = apply_cutdiffusion(model, CutDiffusionConfig(patch_size=PATCH, layout="patches",
                                                             stage2_mode="shifted"))
        paper.set_model_sampler_post_cfg_function(keep_layout)
        return comfy.sample.sample_custom(paper, comfy.sample.prepare_noise(up, seed + 1), cfg, sampler,
                                          sigmas[first.refine_from:], pos, neg, up, disable_pbar=True, seed=seed)


@pytest.mark.parametrize("size_px", [(256, 256), (384, 256)])
def test_native_first_is_layout_pass_upscale_and_the_pack_on_the_tail(model, conds, size_px):
    latent = rt.empty_latent(*size_px)
    with CountingModel(model) as counter:
        got, report = run_cut(model, latent, seed=4, steps=10, cfg=5.0, conds=conds, patch_size=PATCH,
                              layout="native first", target_pass="tiles", layout_denoise=0.3, layout_guidance=0.0)
    expected = _reference(model, conds, latent, 4, 10, 5.0, 0.3)
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, atol=1e-5 * scale, rtol=1e-4)
    # Images through the model: the layout pass (one image per step and CFG half) and the tail's plan.
    assert report.layout is not None and report.plan.steps == 3 and report.plan.stage1_steps == 0
    assert sum(counter.batches) == 2 * 10 + report.plan.model_evaluations()
    assert "native-first layout" in report.summary()


def test_layout_guidance_runs_the_patches_on_square_grids_only(model, conds):
    """layout_guidance adds one patch set per target-pass step where the patch grid is square (2x2
    at 4x area) and changes the image; on a 2x3 grid it is off and the run is the unguided one."""
    square = rt.empty_latent(2 * PATCH, 2 * PATCH)
    with CountingModel(model) as counter:
        guided, report = run_cut(model, square, seed=4, steps=10, conds=conds, patch_size=PATCH,
                                 layout="native first", target_pass="tiles", layout_denoise=0.3, layout_guidance=1.0)
    plan = report.plan
    assert plan.guided and plan.layout.mode == "shifted" and (plan.grid.rows, plan.grid.cols) == (2, 2)
    assert sum(counter.batches) == 2 * 10 + 2 * plan.steps * (plan.layout.count + 4) == plan.model_evaluations() + 20
    unguided, _ = run_cut(model, square, seed=4, steps=10, conds=conds, patch_size=PATCH, layout="native first",
                          target_pass="tiles", layout_denoise=0.3,
                          layout_guidance=0.0)
    assert not torch.allclose(guided, unguided, atol=1e-3)

    wide = rt.empty_latent(3 * PATCH, 2 * PATCH)
    guided, report = run_cut(model, wide, seed=4, steps=10, conds=conds, patch_size=PATCH, layout="native first",
                          target_pass="tiles", layout_denoise=0.3,
                             layout_guidance=1.0)
    assert not report.plan.guided and (report.plan.grid.rows, report.plan.grid.cols) == (2, 3)
    unguided, _ = run_cut(model, wide, seed=4, steps=10, conds=conds, patch_size=PATCH, layout="native first",
                          target_pass="tiles", layout_denoise=0.3,
                          layout_guidance=0.0)
    assert torch.equal(guided, unguided)


def _outside_span(image: torch.Tensor, operator, size: tuple[int, int]) -> float:
    """How far each channel of `image` [C, H, W] is from every `operator(q)` with q of `size`
    (least squares over a basis of q), relative to the image's norm."""
    n = size[0] * size[1]
    span = operator(torch.eye(n, dtype=torch.float64).reshape(n, 1, *size)).reshape(n, -1).T
    target = image.reshape(image.shape[0], -1).T.double()
    fit = span @ torch.linalg.lstsq(span, target).solution
    return float((fit - target).norm() / target.norm())


def test_layout_guidance_moves_only_what_the_patches_agree_on(model, conds):
    """Under native first the patches replace only the tiles' block means (one element per patch,
    interpolated back), not their detail. In a one-step target pass the output is that step's
    prediction, and the step's input does not depend on the guidance, so guided - unguided is a
    block-scale image (latent / grid) passed through the layout anchor (which takes each
    prediction's structure at half the layout size from the layout): exactly in that operator's
    span, where a full-band difference is far from it."""
    latent = rt.empty_latent(2 * PATCH, 2 * PATCH)
    args = dict(seed=4, steps=10, conds=conds, patch_size=PATCH, layout="native first", target_pass="tiles",
                layout_denoise=0.1)
    guided, report = run_cut(model, latent, layout_guidance=1.0, **args)
    unguided, _ = run_cut(model, latent, layout_guidance=0.0, **args)
    plan = report.plan
    assert plan.steps == 1 and plan.guided and (plan.grid.rows, plan.grid.cols) == (2, 2)
    difference = (guided - unguided)[0]
    assert difference.abs().max() > 1e-2                      # the guidance does move the image
    height, width = difference.shape[-2:]
    anchor_hw = (report.layout.height // 2, report.layout.width // 2)

    def through_anchor(x):                                    # p -> p - coarse(p): the anchor's part in p
        return x - F.interpolate(F.interpolate(x, size=anchor_hw, mode="area"), size=x.shape[-2:], mode="bicubic")

    def block_scale(q):
        return through_anchor(F.interpolate(q, size=(height, width), mode="bicubic"))

    block_hw = (height // plan.grid.rows, width // plan.grid.cols)
    assert _outside_span(difference, block_scale, block_hw) < 0.01            # measured 5e-4
    full_band = torch.randn(1, *difference.shape, generator=torch.Generator().manual_seed(0))
    assert _outside_span(through_anchor(full_band)[0], block_scale, block_hw) > 0.5   # measured 0.88


def test_native_first_at_native_size_is_ksampler(model, conds):
    latent = rt.empty_latent(PATCH, PATCH)
    got, report = run_cut(model, latent, seed=2, steps=6, conds=conds, patch_size=PATCH, layout="native first",
                              target_pass="tiles", layout_denoise=0.3)
    assert report.layout is None
    assert torch.equal(got, rt.ksampler(model, 2, 6, 5.0, "euler", "normal", *conds, latent))


def test_img2img_keeps_the_papers_layout(model, conds):
    # A run that does not start from pure noise already has its layout: the input image.
    gen = torch.Generator().manual_seed(5)
    latent = {"samples": torch.randn(1, 4, 32, 32, generator=gen)}
    native, report = run_cut(model, latent, seed=3, steps=6, conds=conds, patch_size=PATCH, denoise=0.6,
                             layout="native first", target_pass="tiles", layout_denoise=0.3)
    paper, _ = run_cut(model, latent, seed=3, steps=6, conds=conds, patch_size=PATCH, denoise=0.6, layout="patches")
    assert report.layout is None and torch.equal(native, paper)


def test_saved_prompt_without_layout_runs_the_papers_layout(model, conds):
    """A prompt saved before the layout input existed keeps what it ran; a new node defaults to native first."""
    from cutdiff_core.config import config_from_inputs
    old = config_from_inputs({"patch_size": PATCH, "stage_split": 0.6})
    assert (old.layout, CutDiffusionConfig().layout) == ("patches", "native first")
    assert (old.target_pass, old.layout_denoise, old.stage_split) == ("tiles", 0.3, 0.6)
    # Every setting is an optional input (layout comes first): any other one absent is its default.
    assert config_from_inputs({"layout": "native first"}) == CutDiffusionConfig(layout="native first", target_pass="tiles",
                                                                                layout_denoise=0.3)


def test_preview_counts_the_layout_pass():
    from comfyui_cutdiffusion.nodes.plan_route import preview_plan
    plan = preview_plan({"width": 2048, "height": 2048, "steps": 50})
    assert plan["layout"] == {"w": 1024, "h": 1024, "steps": 50, "evaluations": 50, "direct": False,
                              "upscale": "latent", "summary": plan["layout"]["summary"]}
    # The default's target pass: the last 25 steps on the whole 2048² frame, 4 native areas each.
    assert plan["target_pass"] == "whole frame" and plan["evaluations_per_image"] == 50 + 25 * 4 == 150
    assert "on the whole frame" in plan["summary"]
    tiles = preview_plan({"width": 2048, "height": 2048, "steps": 50, "target_pass": "tiles", "layout_denoise": 0.3})
    assert (tiles["stage1_steps"], tiles["stage2_steps"], tiles["windows"]["mode"]) == (0, 15, "shifted")
    # BENCHMARKS.md: 170 SDXL evaluations (2x2 shifted tiles and the 2x2 patches' guidance, 15 steps)
    assert tiles["evaluations_per_image"] == 50 + 15 * (4 + 4) == 170
    assert plan["multidiffusion_evaluations"] == 50 * 9
    paper = preview_plan({"width": 2048, "height": 2048, "steps": 50, "layout": "patches"})
    assert paper["layout"] is None and paper["evaluations_per_image"] == 325
    wide = preview_plan({"width": 2048, "height": 512, "steps": 50})
    assert wide["layout"]["direct"] and wide["evaluations_per_image"] == 50 and wide["stage2_steps"] == 0
    panorama = preview_plan({"width": 4096, "height": 2048, "steps": 50, "target_pass": "tiles",
                             "layout_denoise": 0.3})   # 2x4 grid: no layout guidance
    assert (panorama["layout"]["w"], panorama["layout"]["h"]) == (1448, 728)
    assert panorama["evaluations_per_image"] == 50 + 15 * 8 == 170


def test_preview_and_run_agree_on_the_layout_pass_for_every_scheduler(model, conds):
    """The KSampler node at denoise 1 runs a scheduler's whole schedule: text-to-image, so the
    layout pass, with every scheduler (ddim_uniform's schedule starts below sigma_max). The preview
    decides it with the run's own test. Another sampler node gets only sigmas: there a schedule that
    starts below sigma_max is read as img2img."""
    from comfyui_cutdiffusion.nodes.plan_route import preview_plan
    latent = rt.empty_latent(2 * PATCH, 2 * PATCH)
    for scheduler in comfy.samplers.KSampler.SCHEDULERS:
        _, report = run_cut(model, latent, seed=1, steps=4, conds=conds, scheduler=scheduler, patch_size=PATCH,
                            layout="native first", target_pass="tiles", layout_denoise=0.3)
        preview = preview_plan({"width": 2 * PATCH, "height": 2 * PATCH, "steps": 4, "scheduler": scheduler,
                                "patch_size": PATCH})
        assert report.layout is not None and preview["layout"] is not None, scheduler
    _, report = run_cut(model, latent, seed=1, steps=4, conds=conds, scheduler="ddim_uniform", patch_size=PATCH,
                        layout="native first", target_pass="tiles", layout_denoise=0.3, denoise=0.9)
    preview = preview_plan({"width": 2 * PATCH, "height": 2 * PATCH, "steps": 4, "scheduler": "ddim_uniform",
                            "patch_size": PATCH, "denoise": 0.9})
    assert report.layout is None and preview["layout"] is None

    report = RunReport()
    patched = apply_cutdiffusion(model, CutDiffusionConfig(patch_size=PATCH, layout="native first", target_pass="tiles",
                                                           layout_denoise=0.3), report)
    sigmas = schedule(model, 4, scheduler="ddim_uniform")
    assert float(sigmas[0]) < float(model.get_model_object("model_sampling").sigma_max)
    pos, neg = conds
    noise = comfy.sample.prepare_noise(latent["samples"], 1)
    with torch.inference_mode():
        comfy.sample.sample_custom(patched, noise, 5.0, comfy.samplers.sampler_object("euler"), sigmas, pos, neg,
                                   latent["samples"], disable_pbar=True, seed=1)
    assert report.plan is not None and report.layout is None


def test_the_run_names_every_changed_setting_it_did_not_use(model, conds):
    """Inputs that act (issue 24): what the chosen layout ignores is said in the report, not dropped silently."""
    latent = rt.empty_latent(256, 256)
    _, whole = run_cut(model, latent, steps=3, conds=conds, patch_size=PATCH, layout="native first",
                       window_stride=64, layout_guidance=0.5, layout_denoise=0.4)
    assert "ignored by this run (native first, whole frame): layout_guidance = 0.5, window_stride = 64" \
        in whole.summary()   # in the node's input order
    _, tiles = run_cut(model, latent, steps=3, conds=conds, patch_size=PATCH, layout="native first",
                       target_pass="tiles", window_stride=64, global_guidance=0.5, layout_denoise=0.4)
    assert "ignored by this run (native first, tiles): window_stride = 64, global_guidance = 0.5" in tiles.summary()
    _, paper = run_cut(model, latent, steps=3, conds=conds, patch_size=PATCH, layout="patches", layout_denoise=0.4,
                       window_stride=64)
    assert "ignored by this run (patches): layout_denoise = 0.4" in paper.summary()
    _, defaults = run_cut(model, latent, steps=3, conds=conds, patch_size=PATCH, layout="native first")
    assert "ignored" not in defaults.summary()
    _, direct = run_cut(model, rt.empty_latent(3 * PATCH // 2, PATCH // 2), steps=2, conds=conds, patch_size=PATCH,
                        layout="native first", stage_split=0.7)
    assert "ignored by this run (sampled directly): stage_split = 0.7" in direct.summary()


def _hires_fix_of_core_calls(model, conds, latent, upscale):
    """KSampler at the native area with the target's aspect (seed 4, 10 euler steps), `upscale(layout)`
    to the target, then KSamplerAdvanced on the last 0.3 of the same schedule with fresh noise (seed 5);
    with the layout pass it ran."""
    pos, neg = conds
    first = native_first(*latent["samples"].shape[-2:], NATIVE, 10, 0.3)
    small = torch.zeros(1, 4, first.height, first.width)
    with torch.inference_mode():
        layout = comfy.sample.sample(model, comfy.sample.prepare_noise(small, 4), 10, 5.0, "euler", "normal", pos, neg,
                                     small, disable_pbar=True, seed=4)
        up = upscale(layout)
        return comfy.sample.sample(model, comfy.sample.prepare_noise(up, 5), 10, 5.0, "euler", "normal", pos, neg, up,
                                   start_step=first.refine_from, disable_pbar=True, seed=4), first


@pytest.mark.parametrize("size_px", [(256, 256), (384, 128)])
def test_whole_frame_target_pass_is_a_hires_fix_of_core_calls(model, conds, size_px):
    """target_pass whole frame is exactly what a user builds from ComfyUI's core nodes: KSampler at the
    native area with the target's aspect, LatentUpscale (bicubic), KSamplerAdvanced on the last
    layout_denoise of the same schedule with fresh noise (the seed + 1)."""
    latent = rt.empty_latent(*size_px)
    with CountingModel(model) as counter:
        got, report = run_cut(model, latent, seed=4, steps=10, conds=conds, patch_size=PATCH, layout="native first",
                              target_pass="whole frame", layout_denoise=0.3)
    h, w = latent["samples"].shape[-2:]
    expected, first = _hires_fix_of_core_calls(
        model, conds, latent, lambda layout: comfy.utils.common_upscale(layout, w, h, "bicubic", "disabled"))
    assert torch.equal(got, expected)
    assert report.plan is None and report.layout == first and "on the whole frame" in report.summary()
    assert counter.batches == [2] * 10 + [2] * 3 and counter.shapes[-1][-2:] == (h, w)   # one call per step


@pytest.fixture(scope="module")
def vae():
    return rt.tiny_vae()


@pytest.mark.parametrize("size_px", [(256, 256), (384, 128)])
def test_a_vae_upscales_the_layout_as_a_pixel_hires_fix_of_core_nodes(model, conds, vae, size_px):
    """With a VAE, native first's whole-frame run is exactly the pixel-space hires fix a user builds from
    ComfyUI's core nodes: KSampler at the native area, VAEDecode, ImageScale (bicubic), VAEEncode,
    KSamplerAdvanced on the last layout_denoise of the same schedule with fresh noise (the seed + 1)."""
    import nodes

    pos, neg = conds
    latent = rt.empty_latent(*size_px)
    report = RunReport()
    patched = apply_cutdiffusion(model, CutDiffusionConfig(patch_size=PATCH, layout_denoise=0.3), report, vae=vae)
    with torch.inference_mode():
        got = sample(patched, 4, 10, 5.0, "euler", "normal", pos, neg, latent)["samples"]
    h, w = latent["samples"].shape[-2:]

    def pixel_upscale(layout):
        image = nodes.VAEDecode().decode(vae, {"samples": layout})[0]
        image = nodes.ImageScale().upscale(image, "bicubic", w * 8, h * 8, "disabled")[0]
        return nodes.VAEEncode().encode(vae, image)[0]["samples"]
    expected, _ = _hires_fix_of_core_calls(model, conds, latent, pixel_upscale)
    assert torch.equal(got, expected)
    in_latent_space, _ = run_cut(model, latent, seed=4, steps=10, conds=conds, patch_size=PATCH,
                                 layout="native first", layout_denoise=0.3)
    assert not torch.allclose(got, in_latent_space)
    assert "decoded by the VAE, upscaled bicubically in pixel space and encoded again" in report.summary()


def test_a_vae_changes_only_the_layouts_upscale_of_the_tiled_target_pass(model, conds, vae):
    """target_pass tiles through a VAE: the same plan and model calls as in latent space, held to the
    pixel-space layout instead."""
    pos, neg = conds
    latent = rt.empty_latent(256, 256)
    runs = {}
    for name, vae_input in (("latent", None), ("pixel", vae)):
        report = RunReport()
        config = CutDiffusionConfig(patch_size=PATCH, target_pass="tiles", layout_denoise=0.3)
        patched = apply_cutdiffusion(model, config, report, vae=vae_input)
        with CountingModel(model) as counter, torch.inference_mode():
            out = sample(patched, 4, 10, 5.0, "euler", "normal", pos, neg, latent)["samples"]
        runs[name] = (out, counter.batches, report)
    (latent_out, latent_calls, latent_report), (pixel_out, pixel_calls, pixel_report) = runs["latent"], runs["pixel"]
    assert pixel_calls == latent_calls and pixel_report.plan == latent_report.plan
    assert pixel_report.plan.layout.mode == "shifted" and not torch.allclose(pixel_out, latent_out)
    assert "encoded again" in pixel_report.summary() and "in latent space" in latent_report.summary()


def test_a_vae_of_other_latents_is_refused_before_any_work(model):
    sd35_vae = type("SD35Vae", (), {"latent_channels": 16})()
    with pytest.raises(ValueError, match="vae makes 16-channel latents and this model samples 4-channel"):
        apply_cutdiffusion(model, CutDiffusionConfig(), vae=sd35_vae)
