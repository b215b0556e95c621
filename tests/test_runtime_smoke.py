"""Smoke tests for the in-process ComfyUI harness (cutdiff_dev/comfy_runtime.py). CPU only."""

import os
from pathlib import Path

import pytest
import torch

from cutdiff_dev import comfy_runtime as rt  # noqa: E402

rt.bootstrap()


def _forward(model, seed):
    """One raw UNet call at batch 2 on a 32x32 latent with SDXL-style conditioning."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 32, 32, generator=gen)
    context = torch.randn(2, 8, 64, generator=gen)
    y = torch.randn(2, 2816, generator=gen)
    with torch.inference_mode():
        return model.model.diffusion_model(x, timesteps=torch.tensor([500.0, 500.0]), context=context, y=y)


def test_bootstrap_is_cpu_and_idempotent():
    import comfy.model_management as mm

    rt.bootstrap()
    assert mm.get_torch_device().type == "cpu"
    assert os.path.islink(os.path.join(rt.PACK_PARENT, rt.PACK_NAME))
    assert os.path.isdir(os.path.join(rt.BASE, "output"))


def test_tiny_sdxl_forward_is_nontrivial_and_seed_dependent():
    model = rt.tiny_sdxl(seed=0)
    assert next(model.model.parameters()).dtype == torch.float32
    out0 = _forward(model, seed=123)
    out1 = _forward(rt.tiny_sdxl(seed=1), seed=123)
    assert out0.shape == (2, 4, 32, 32)
    assert torch.isfinite(out0).all()
    assert out0.std() > 0.05
    assert not torch.allclose(out0, out1)
    assert torch.equal(out0, _forward(rt.tiny_sdxl(seed=0), seed=123))


def test_ksampler_shape_and_determinism():
    model = rt.tiny_sdxl()
    positive, negative = rt.tiny_conds()
    latent = rt.empty_latent(256, 256)
    a = rt.ksampler(model, 42, 3, 5.0, "euler", "normal", positive, negative, latent)
    b = rt.ksampler(model, 42, 3, 5.0, "euler", "normal", positive, negative, latent)
    assert a.shape == (1, 4, 32, 32)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)


def test_tiny_sd15_samples():
    positive, negative = rt.tiny_conds(sdxl=False)
    assert "pooled_output" not in positive[0][1]
    out = rt.ksampler(rt.tiny_sd15(), 1, 2, 5.0, "euler", "normal", positive, negative, rt.empty_latent(128, 128))
    assert out.shape == (1, 4, 16, 16)


def _latent_prompt(width=64):
    return {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": 64, "batch_size": 1}},
        "2": {"class_type": "LatentUpscale", "inputs": {
            "samples": ["1", 0], "upscale_method": "nearest-exact", "width": 128, "height": 128, "crop": "disabled"}},
        "3": {"class_type": "SaveLatent", "inputs": {"samples": ["2", 0], "filename_prefix": "smoke/latent"}},
    }


def test_run_prompt_builtin_nodes_twice():
    for _ in range(2):  # the event loop and node registry must survive repeated use
        result = rt.run_prompt(_latent_prompt())
        assert any(event == "execution_success" for event, _ in result["status_messages"])
        saved = result["outputs"]["3"]["latents"][0]
        assert os.path.isfile(os.path.join(rt.BASE, "output", saved["subfolder"], saved["filename"]))
        assert {event for event, _ in result["events"]} >= {"executing", "executed"}


def test_run_prompt_invalid_prompt_raises_readable_error():
    with pytest.raises(rt.PromptError, match=r"node 1 \(EmptyLatentImage\).*width"):
        rt.run_prompt(_latent_prompt(width="not a number"))
    # The unknown type is named in the error, in the running version's own words:
    # 0.3.75 "Cannot execute because node NoSuchNode does not exist.",
    # 0.33.0 "Node 'NoSuchNode' not found. The custom node may not be installed." (the node's
    # title, which is its type when the prompt gives no _meta.title). Which one is this
    # version's is read from its execution.py, not guessed from the version number.
    new_wording = "The custom node may not be installed." in Path(rt.COMFY_DIR, "execution.py").read_text()
    unknown = (r"Node 'NoSuchNode' not found\. The custom node may not be installed\."
               if new_wording else r"Cannot execute because node NoSuchNode does not exist\.")
    with pytest.raises(rt.PromptError, match=unknown):
        rt.run_prompt({"1": {"class_type": "NoSuchNode", "inputs": {}}})


def _sampling_prompt(steps=3):
    return {
        "m": {"class_type": rt.TINY_MODEL_NODE, "inputs": {"kind": "sdxl", "seed": 0}},
        "c": {"class_type": rt.TINY_CONDS_NODE, "inputs": {"seed": 0, "batch": 1, "tokens": 8, "sdxl": True}},
        "l": {"class_type": "EmptyLatentImage", "inputs": {"width": 256, "height": 256, "batch_size": 1}},
        "k": {"class_type": "KSampler", "inputs": {
            "model": ["m", 0], "positive": ["c", 0], "negative": ["c", 1], "latent_image": ["l", 0],
            "seed": 42, "steps": steps, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "s": {"class_type": "SaveLatent", "inputs": {"samples": ["k", 0], "filename_prefix": "smoke/ksampler"}},
    }


def test_run_prompt_ksampler_matches_direct_call_and_reports_progress():
    result = rt.run_prompt(_sampling_prompt(steps=3))
    progress = [data for event, data in result["events"] if event == "progress"]
    rt.check_progress([p["value"] for p in progress], 3)
    assert all(p["node"] == "k" and p["max"] == 3 for p in progress)
    (saved,) = rt.saved_latents(result, "s")
    positive, negative = rt.tiny_conds()
    direct = rt.ksampler(rt.tiny_sdxl(), 42, 3, 5.0, "euler", "normal", positive, negative, rt.empty_latent(256, 256))
    assert torch.equal(saved, direct)


def test_interrupt_cancels_a_running_prompt():
    def cancel_on_first_progress(event, data):
        if event == "progress":
            rt.interrupt()

    with pytest.raises(rt.PromptInterrupted, match="node k"):
        rt.run_prompt(_sampling_prompt(steps=5), on_event=cancel_on_first_progress)
    rt.run_prompt(_latent_prompt())  # the interrupt flag does not leak into the next run


PACK_NODE_IDS = {"CutDiffusion", "CutDiffusionKSampler", "AdaptiveDiffusion",
                 "CutDiffusionDemoModel", "CutDiffusionDemoDecode"}


def test_pack_loads_and_registers_its_nodes():
    import nodes

    status = rt.init_nodes()
    assert status["error"] is None and status["loaded"], status["error"]
    assert PACK_NODE_IDS <= set(status["nodes"])
    for node_id in PACK_NODE_IDS:   # registered under the pack's module, as ComfyUI attributes them
        assert nodes.NODE_CLASS_MAPPINGS[node_id].RELATIVE_PYTHON_MODULE == f"custom_nodes.{rt.PACK_NAME}"
    assert nodes.NODE_DISPLAY_NAME_MAPPINGS["CutDiffusionKSampler"] == "CutDiffusion KSampler"
