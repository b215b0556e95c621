"""The shipped demo model through the demo nodes, in the real ComfyUI executor."""
import pytest
import torch

from cutdiff_dev import comfy_runtime as rt

from cutdiff_demo import metrics as demo_metrics
from cutdiff_demo import model as dm

NATIVE = dm.NATIVE_SIZE_PX


def _graph(prompt="red circle on sand", size=NATIVE, seed=0, steps=12, batch=1):
    return {
        "demo": {"class_type": "CutDiffusionDemoModel", "inputs": {"prompt": prompt}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": batch}},
        "sampler": {"class_type": "KSampler", "inputs": {
            "model": ["demo", 0], "positive": ["demo", 1], "negative": ["demo", 2], "latent_image": ["latent", 0],
            "seed": seed, "steps": steps, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0}},
        "decode": {"class_type": "CutDiffusionDemoDecode", "inputs": {"samples": ["sampler", 0]}},
        "preview": {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sampler", 0], "filename_prefix": "demo/out"}},
    }


def test_model_file_is_small():
    assert dm.MODEL_PATH.stat().st_size <= 8 * 2 ** 20


def test_demo_nodes_are_registered():
    status = rt.init_nodes()
    assert {"CutDiffusionDemoModel", "CutDiffusionDemoDecode"} <= set(status["nodes"]), status["error"]


def test_loaded_model_looks_like_sdxl_and_declares_its_native_size():
    import comfy.model_base

    demo = dm.load_demo_model()
    base = demo.model.model
    assert isinstance(base, comfy.model_base.SDXL)
    assert base.model_config.native_size_px == NATIVE
    assert base.latent_format.scale_factor == 1.0    # KSampler's output is the decoder's input
    context, extra = demo.text.conditioning("blue ring on night")[0]
    assert context.shape == (1, 3, dm.CONTEXT_DIM) and extra["pooled_output"].shape == (1, dm.POOLED_DIM)
    assert base.encode_adm(pooled_output=extra["pooled_output"], width=NATIVE, height=NATIVE).shape == (1, 2816)


def test_native_size_samples_mostly_hold_one_object():
    """Issue 4's bar: one object in at least 90% of native-size samples, at the 20 euler steps the
    training record and the benchmarks use. The shipped model draws exactly one in 63 of these 64
    fixed samples (58 with 12 steps, too close to the bar for a check that must not flip)."""
    import comfy.sample

    demo = dm.load_demo_model()
    counts = []
    for k in range(8):
        prompt = f"{list(dm.COLOURS)[k % 5]} {dm.SHAPES[k // 2 % 5]} on {list(dm.BACKGROUNDS)[k % 4]}"
        latent = torch.zeros(8, 4, NATIVE // 8, NATIVE // 8)
        with torch.inference_mode():
            out = comfy.sample.sample(demo.model, comfy.sample.prepare_noise(latent, k), 20, 5.0, "euler", "normal",
                                      demo.text.conditioning(prompt), demo.text.conditioning(""), latent,
                                      disable_pbar=True, seed=k)
        counts += [demo_metrics.count_objects(image) for image in demo.decoder(out).numpy()]
    assert sum(c == 1 for c in counts) >= 0.9 * len(counts), counts


def test_decode_gives_an_image_batch_in_range():
    result = rt.run_prompt(_graph(size=NATIVE + 64, steps=2, batch=2), outputs=["preview"])
    assert len(result["outputs"]["preview"]["images"]) == 2
    decoded = dm.load_decoder()(torch.randn(2, 4, 24, 16))
    assert decoded.shape == (2, 192, 128, 3)
    assert decoded.min() >= 0 and decoded.max() <= 1


def test_decoder_inverts_the_latent_mix():
    rgb = torch.rand(1, 3, 8, 8)
    texture = torch.zeros(1, 1, 8, 8)
    features = torch.cat([rgb, texture], dim=1) * 2 - 1
    latent = torch.einsum("cf,bfhw->bchw", dm.LATENT_MIX, features)
    torch.testing.assert_close(dm.load_decoder().features(latent)[:, :3], rgb)


@pytest.mark.parametrize("prompt, problem", [
    ("green circle", "unexpected word 'green'"),
    ("red circle on", "'on' must be followed by a background"),
    ("circle red", "unexpected word 'red'"),
])
def test_prompt_outside_the_vocabulary_is_a_clear_validation_error(prompt, problem):
    with pytest.raises(rt.PromptError) as info:
        rt.run_prompt(_graph(prompt))
    message = str(info.value)
    assert problem in message and "colours: red, yellow, blue, white, purple" in message


@pytest.mark.parametrize("prompt, ids", [
    ("", (0, 0, 0)),
    ("Red Circle on Sand", (1, 6, 11)),
    ("ring", (0, 9, 0)),
    ("white on night", (4, 0, 14)),
])
def test_prompt_parsing(prompt, ids):
    assert dm.parse_prompt(prompt) == ids
    assert [dm.VOCABULARY[i] for i in ids if i] == [w for w in prompt.lower().split() if w != "on"]
