"""The shipped demo DiT (issue 15 item 5): a tiny Flux-architecture model trained with rectified flow."""
import torch

from cutdiff_demo import dit as demo_dit
from cutdiff_demo import metrics as demo_metrics
from cutdiff_demo import model as dm

NATIVE = demo_dit.NATIVE_SIZE_PX
# Native-size one-object bar for test_native_size_samples_mostly_hold_one_object (see there).
ONE_OBJECT_BAR = 0.75


def test_model_file_is_small():
    assert demo_dit.MODEL_PATH.stat().st_size <= 8 * 2 ** 20


def test_loaded_model_is_comfys_flux_with_flow_sampling_and_declares_its_native_size():
    import comfy.ldm.flux.model
    import comfy.model_base
    import comfy.model_sampling
    from cutdiff_core.native_size import native_size_px

    demo = demo_dit.load_demo_dit()
    base = demo.model.model
    assert isinstance(base, comfy.model_base.Flux)
    assert isinstance(base.diffusion_model, comfy.ldm.flux.model.Flux)
    assert base.diffusion_model.img_in.weight.shape[1] == 4 * 2 * 2        # 4 latent channels, 2x2 patches
    assert not base.diffusion_model.params.guidance_embed
    assert isinstance(base.model_sampling, comfy.model_sampling.CONST)          # rectified flow, velocity
    assert isinstance(base.model_sampling, comfy.model_sampling.ModelSamplingFlux)
    assert torch.allclose(base.model_sampling.sigma(torch.tensor([0.25, 0.5])), torch.tensor([0.25, 0.5]))  # shift 1
    assert base.model_config.native_size_px == NATIVE and native_size_px(demo.model) == NATIVE
    assert base.latent_format.latent_channels == 4 and base.latent_format.scale_factor == 1.0
    context, extra = demo.text.conditioning("blue ring on night")[0]
    assert context.shape == (1, 3, dm.CONTEXT_DIM) and extra["pooled_output"].shape == (1, dm.POOLED_DIM)


def _native_counts(demo, prompts=4, per_prompt=4, cfg=3.0):
    import comfy.sample

    counts = []
    for k in range(prompts):
        prompt = f"{list(dm.COLOURS)[k % 5]} {dm.SHAPES[k // 2 % 5]} on {list(dm.BACKGROUNDS)[k % 4]}"
        latent = torch.zeros(per_prompt, 4, NATIVE // 8, NATIVE // 8)
        with torch.inference_mode():
            out = comfy.sample.sample(demo.model, comfy.sample.prepare_noise(latent, k), 20, cfg, "euler", "simple",
                                      demo.text.conditioning(prompt), demo.text.conditioning(""), latent,
                                      disable_pbar=True, seed=k)
        counts += [demo_metrics.count_objects(image) for image in demo.decoder(out).numpy()]
    return counts


def test_native_size_samples_mostly_hold_one_object():
    """At least ONE_OBJECT_BAR of 16 fixed native-size samples (4 prompts x 4 seeds, 20 euler/simple
    steps, cfg 3, as the benchmark samples) hold exactly one object. The shipped model draws one in
    all 16; the untrained model (scripts/train_demo_dit.py's init, seed 0) in 1 of 16."""
    counts = _native_counts(demo_dit.load_demo_dit())
    assert sum(c == 1 for c in counts) >= ONE_OBJECT_BAR * len(counts), counts


def test_cutdiffusion_runs_on_the_demo_dit_at_4x_area():
    """patch_size 0 plans from the declared native size; the output is a 4-channel latent of the target size."""
    import comfy.sample
    from cutdiff_core.cutdiffusion_patch import CutDiffusionConfig, RunReport, apply_cutdiffusion

    demo = demo_dit.load_demo_dit()
    report = RunReport()
    model = apply_cutdiffusion(demo.model, CutDiffusionConfig(layout="patches"), report)
    latent = torch.zeros(1, 4, 2 * NATIVE // 8, 2 * NATIVE // 8)
    with torch.inference_mode():
        out = comfy.sample.sample(model, comfy.sample.prepare_noise(latent, 0), 6, 4.0, "euler", "simple",
                                  demo.text.conditioning("red circle on sand"), demo.text.conditioning(""), latent,
                                  disable_pbar=True, seed=0)
    assert out.shape == latent.shape and torch.isfinite(out).all()
    assert report.plan is not None and report.plan.stage1_steps > 0


def test_shipped_dit_workflow_runs_in_the_executor_and_draws_the_packs_default():
    """workflows/cutdiffusion_demo_dit.json (fewer steps, for CPU time) through ComfyUI's executor:
    its image is the demo DiT sampled with the pack's defaults by the core directly."""
    import json
    from pathlib import Path

    import comfy.sample
    import numpy as np
    from PIL import Image

    from cutdiff_core.cutdiffusion_patch import CutDiffusionConfig, RunReport, apply_cutdiffusion
    from cutdiff_dev import comfy_runtime as rt
    from cutdiff_dev import ui_workflow

    prompt = ui_workflow.to_api_prompt(json.loads((rt.REPO_ROOT / "workflows" / "cutdiffusion_demo_dit.json")
                                                  .read_text()))
    by_type = {node["class_type"]: node_id for node_id, node in prompt.items()}
    sampler = prompt[by_type["CutDiffusionKSampler"]]["inputs"]
    sampler["steps"] = 6
    size = prompt[by_type["EmptyLatentImage"]]["inputs"]
    text = prompt[by_type["CutDiffusionDemoDiT"]]["inputs"]["prompt"]
    save = by_type["SaveImage"]
    prompt[save]["inputs"]["filename_prefix"] = "demo_dit/test"
    saved = rt.run_prompt(prompt)["outputs"][save]["images"][0]
    with Image.open(Path(rt.BASE) / "output" / saved["subfolder"] / saved["filename"]) as image:
        from_workflow = np.asarray(image.convert("RGB"), dtype=np.int16)

    demo = demo_dit.load_demo_dit()
    report = RunReport()
    latent = torch.zeros(1, 4, size["height"] // 8, size["width"] // 8)
    with torch.inference_mode():
        out = comfy.sample.sample(apply_cutdiffusion(demo.model, CutDiffusionConfig(), report),
                                  comfy.sample.prepare_noise(latent, sampler["seed"]), 6, sampler["cfg"],
                                  sampler["sampler_name"], sampler["scheduler"], demo.text.conditioning(text),
                                  demo.text.conditioning(""), latent, disable_pbar=True, seed=sampler["seed"])
        direct = np.clip(255.0 * demo.decoder(out)[0].numpy(), 0, 255).astype(np.uint8).astype(np.int16)
    assert report.layout is not None, "the workflow is meant to show the pack's default (native first)"
    assert from_workflow.shape == (size["height"], size["width"], 3)
    assert np.abs(from_workflow - direct).max() <= 1
