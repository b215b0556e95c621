"""The example workflows in workflows/ against the live node definitions of the real ComfyUI.

Each must load in the frontend (UI format, every node type registered, links joining
outputs to inputs of the same type, widget values in the order and number the frontend
expects) and queue as a valid prompt: ComfyUI's own validate_prompt checks every value
against its input (combo options, min/max) and every link's type.
"""
import asyncio
import json
import shutil
from pathlib import Path

import pytest

from cutdiff_dev import comfy_runtime as rt
from cutdiff_dev import ui_workflow as uw

WORKFLOWS = rt.REPO_ROOT / "workflows"
REQUIRED = {  # the list: name -> node types it must show
    "cutdiffusion_sdxl_2048": {"CutDiffusionKSampler", "EmptyLatentImage"},
    "cutdiffusion_sdxl_panorama_4096x2048": {"CutDiffusionKSampler", "EmptyLatentImage"},
    "cutdiffusion_hires_fix": {"CutDiffusionKSampler", "LoadImage", "ImageScale", "VAEEncode"},
    "cutdiffusion_adaptivediffusion": {"CutDiffusionKSampler", "AdaptiveDiffusion"},
    "cutdiffusion_demo_model": {"CutDiffusionKSampler", "CutDiffusionDemoModel", "CutDiffusionDemoDecode"},
    "cutdiffusion_demo_dit": {"CutDiffusionKSampler", "CutDiffusionDemoDiT", "CutDiffusionDemoDecode"},
    "cutdiffusion_flux_2048": {"CutDiffusionKSampler", "UNETLoader", "DualCLIPLoader", "FluxGuidance",
                               "ModelSamplingFlux", "EmptySD3LatentImage"},
    "cutdiffusion_zimage_2048": {"CutDiffusionKSampler", "UNETLoader", "CLIPLoader", "ModelSamplingAuraFlow",
                                 "EmptySD3LatentImage"},
}
SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
# The model files the workflows name, by ComfyUI model folder (empty files: only the combo lists matter).
MODEL_FILES = {
    "checkpoints": [SDXL_CHECKPOINT],
    "diffusion_models": ["flux1-dev.safetensors", "z_image_turbo_bf16.safetensors"],
    "text_encoders": ["clip_l.safetensors", "t5xxl_fp16.safetensors", "qwen_3_4b.safetensors"],
    "vae": ["ae.safetensors"],
}


def _workflow_names():
    return sorted(p.stem for p in WORKFLOWS.glob("*.json"))


@pytest.fixture(scope="module")
def runtime():
    """The pack loaded, plus the files the workflows name (empty model files, an input image),
    so combo values are checked against real option lists instead of being waived."""
    status = rt.init_nodes()
    assert status["loaded"], status["error"]
    import folder_paths
    for folder, names in MODEL_FILES.items():
        directory = Path(folder_paths.get_folder_paths(folder)[0])
        directory.mkdir(parents=True, exist_ok=True)
        for name in names:
            (directory / name).touch()
    shutil.copy(Path(rt.COMFY_DIR) / "input" / "example.png", Path(folder_paths.get_input_directory()) / "example.png")
    return status


def test_every_required_workflow_is_shipped_with_a_thumbnail(runtime):
    import nodes

    shipped = set(_workflow_names())
    # A workflow is required once the pack has its nodes (the demo nodes land on their own).
    required = {name for name, types in REQUIRED.items() if types <= set(nodes.NODE_CLASS_MAPPINGS)}
    assert required - shipped == set(), "missing workflows"
    from PIL import Image
    for name in shipped:
        with Image.open(WORKFLOWS / f"{name}.jpg") as thumb:  # the frontend asks for .jpg only
            assert thumb.format == "JPEG" and min(thumb.size) >= 128, name


@pytest.mark.parametrize("name", _workflow_names())
def test_workflow_is_valid_for_the_live_nodes(runtime, name):
    import execution
    import nodes

    workflow = json.loads((WORKFLOWS / f"{name}.json").read_text())
    types = {n["type"] for n in workflow["nodes"]}
    assert types - set(nodes.NODE_CLASS_MAPPINGS) == set(), "unknown node types"
    assert REQUIRED.get(name, set()) <= types
    assert uw.link_errors(workflow) == []
    assert [e for node in workflow["nodes"] for e in uw.widget_value_errors(node)] == []
    prompt = uw.to_api_prompt(workflow)   # raises on a widget count or control value mismatch
    loop = asyncio.new_event_loop()
    try:
        valid, error, outputs, node_errors = loop.run_until_complete(
            execution.validate_prompt(f"workflow-{name}", prompt, None))
    finally:
        loop.close()
    assert valid, (error, node_errors)
    assert outputs, "the workflow has no output node"


def test_validation_catches_broken_workflows(runtime):
    """The checks above are not vacuous: a wrong link type, a missing widget value, an
    out-of-range, unknown or mistyped widget value are each caught."""
    import execution

    workflow = json.loads((WORKFLOWS / "cutdiffusion_sdxl_2048.json").read_text())
    bad_link = json.loads(json.dumps(workflow))
    bad_link["links"][0][5] = "IMAGE"
    bad_link["links"][0][2] = 2  # CheckpointLoaderSimple's VAE output into a MODEL input
    assert uw.link_errors(bad_link)

    sampler = next(n for n in workflow["nodes"] if n["type"] == "CutDiffusionKSampler")
    short = json.loads(json.dumps(sampler))
    short["widgets_values"].pop()
    with pytest.raises(ValueError, match="widget values"):
        uw.widget_values_by_name(short)

    names = [spec.name for spec in uw.widget_specs("CutDiffusionKSampler")]
    loop = asyncio.new_event_loop()
    try:
        for field, value in (("steps", 0), ("scheduler", "no_such_scheduler"), ("stage_split", 1.5),
                             ("window_jitter", "yes")):
            broken = json.loads(json.dumps(sampler))
            index = names.index(field) + (1 if names.index(field) > names.index("seed") else 0)  # seed's control value
            broken["widgets_values"][index] = value
            assert uw.widget_value_errors(broken), field
        prompt = uw.to_api_prompt(workflow)
        next(v for v in prompt.values() if v["class_type"] == "CutDiffusionKSampler")["inputs"]["steps"] = 0
        valid, *_ = loop.run_until_complete(execution.validate_prompt("broken", prompt, None))
        assert not valid
    finally:
        loop.close()
