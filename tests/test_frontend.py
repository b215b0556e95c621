"""What the frontend shows, checked in-process: the plan preview served to the web extension
(nodes/plan_route.py) and the node help pages (web/docs/<node id>.md)."""
import re

import pytest

from cutdiff_dev import comfy_runtime as rt
from cutdiff_dev import ui_workflow as uw

from comfyui_cutdiffusion.nodes.plan_route import PlanRequestError, preview_plan, saved_workflow_settings

DOCS = rt.REPO_ROOT / "web" / "docs"
PATCH_PX = 64  # the smallest patch the node accepts: tiny latents keep the real runs fast


def _pack_nodes() -> dict:
    import nodes
    status = rt.init_nodes()
    assert status["loaded"], status["error"]
    return {name: nodes.NODE_CLASS_MAPPINGS[name] for name in status["nodes"]}


@pytest.mark.parametrize("size, patches, windows", [
    # spec 3.6 with SDXL and stride 64 latent px
    ((1024, 2048), (1, 2), 3), ((2048, 2048), (2, 2), 9), ((3072, 3072), (3, 3), 25), ((4096, 4096), (4, 4), 49),
])
def test_preview_geometry_matches_the_spec(size, patches, windows):
    plan = preview_plan({"height": size[0], "width": size[1], "steps": 50, "layout": "patches"})
    assert (plan["grid"]["rows"], plan["grid"]["cols"]) == patches
    assert plan["windows"]["count"] == windows == len(plan["windows"]["rects"])
    assert plan["evaluations_per_image"] == 25 * patches[0] * patches[1] + 25 * windows
    assert plan["evaluations_with_cfg"] == 2 * plan["evaluations_per_image"]


def test_preview_split_is_a_noise_level():
    """Spec 3.5: normal/50 = the paper's 25/25; karras reaches that noise level at a different step."""
    normal = preview_plan({"width": 2048, "height": 2048, "steps": 50, "scheduler": "normal", "layout": "patches"})
    karras = preview_plan({"width": 2048, "height": 2048, "steps": 50, "scheduler": "karras", "layout": "patches"})
    assert (normal["stage1_steps"], normal["stage2_steps"]) == (25, 25)
    assert karras["stage1_steps"] != 25 and karras["stage1_steps"] + karras["stage2_steps"] == 50
    few = preview_plan({"width": 2048, "height": 2048, "steps": 2, "cfg": 1.0, "layout": "patches"})
    assert (few["stage1_steps"], few["stage2_steps"]) == (1, 1)          # each stage gets a step
    assert few["evaluations_with_cfg"] == few["evaluations_per_image"]   # cfg 1: no uncond pass


def test_preview_refuses_what_the_node_refuses():
    with pytest.raises(PlanRequestError, match="window_stride"):
        preview_plan({"width": 2048, "height": 2048, "patch_size": 1024, "window_stride": 2048})
    with pytest.raises(PlanRequestError, match="patch_size"):
        preview_plan({"width": 2048, "height": 2048, "patch_size": 1001})
    with pytest.raises(PlanRequestError, match="scheduler"):
        preview_plan({"scheduler": "no_such_scheduler"})


def test_preview_greys_the_inputs_the_layout_does_not_use():
    default = preview_plan({"width": 2048, "height": 2048, "steps": 30})   # native first, whole frame
    assert set(default["settings"]) - set(default["inactive"]) == {"patch_size", "layout", "layout_denoise",
                                                                   "target_pass"}
    assert default["target_pass"] == "whole frame" and default["evaluations_per_image"] == 30 + 15 * 4
    tiles = preview_plan({"width": 2048, "height": 2048, "steps": 30, "target_pass": "tiles"})
    assert set(tiles["inactive"]) == {"window_stride", "window_jitter", "stage2_mode", "window_weights",
                                      "global_guidance", "stage_split"}
    late = preview_plan({"width": 2048, "height": 2048, "steps": 30, "target_pass": "tiles", "stage_split": 0.9})
    assert "stage_split" not in late["inactive"] and late["stage1_steps"] > 0   # a split after the re-entry acts
    paper = preview_plan({"width": 2048, "height": 2048, "steps": 30, "layout": "patches"})
    assert set(paper["inactive"]) == {"layout_denoise", "layout_guidance", "target_pass"}
    shifted = preview_plan({"width": 2048, "height": 2048, "steps": 30, "layout": "patches", "stage2_mode": "shifted"})
    assert {"window_stride", "window_jitter", "window_weights"} <= set(shifted["inactive"])
    direct = preview_plan({"width": 1536, "height": 512, "steps": 30})    # within the native area: sampled directly
    assert set(direct["inactive"]) == set(direct["settings"]) - {"layout", "patch_size"}


def test_saved_workflows_are_read_with_what_their_prompts_run():
    """The web extension loads saves of earlier versions with these values; a saved API prompt gets the
    same ones from config_from_inputs, so a workflow and its prompt run the same settings."""
    from comfyui_cutdiffusion.cutdiff_core.config import SETTINGS, config_from_inputs

    served = saved_workflow_settings()
    assert served["layouts"] == ["native first", "patches"]
    earlier = served["order_saved_before_layout_first"]
    assert len(set(earlier)) == len(earlier) and set(earlier) <= {s.name for s in SETTINGS}
    defaults = config_from_inputs({})
    old_prompt = config_from_inputs({name: getattr(defaults, name) for name in earlier
                                     if name not in served["when_absent"]})
    assert {name: getattr(old_prompt, name) for name in served["when_absent"]} == served["when_absent"]
    assert served["when_absent"]["layout"] == "patches"   # what every workflow saved before native first ran
    # Where `layout` is a dynamic combo the extension re-reads flat saves by name into each layout's inputs.
    assert served["order"] == [s.name for s in SETTINGS]
    assert served["defaults"] == {s.name: s.default for s in SETTINGS}
    assert served["defaults"]["layout"] == "native first" != served["when_absent"]["layout"]
    assert set(served["shown_by_layout"]) == set(served["layouts"])
    assert set().union(*served["shown_by_layout"].values()) == set(served["order"]) - {"layout"}


def test_a_dynamic_combos_inputs_and_a_flat_saves_settings_make_one_config():
    """config_from_layout_choice, what the nodes read where `layout` is a dynamic combo: the chosen
    layout's inputs, plus the top-level settings of a prompt saved before the combo (unchecked by
    ComfyUI's schema there: converted as ComfyUI converts widgets, refused with the field named)."""
    from comfyui_cutdiffusion.cutdiff_core.config import CutDiffusionConfig, config_from_layout_choice

    shown = {"layout": "patches", "stage_split": 0.6, "window_stride": None}   # None: left out of the prompt
    assert config_from_layout_choice(shown, {}) == CutDiffusionConfig(layout="patches", stage_split=0.6)
    # A flat save: top-level values, as JSON gave them; the combo's own value wins where both are set.
    flat = {"window_stride": 256, "stage_split": "0.7", "window_jitter": False, "patch_size": 512.0,
            "model": ["4", 0], "seed": 3}   # other inputs of the prompt are not settings
    assert config_from_layout_choice({"layout": "patches"}, flat) == CutDiffusionConfig(
        layout="patches", window_stride=256, stage_split=0.7, window_jitter=False, patch_size=512)
    assert config_from_layout_choice(shown, flat).stage_split == 0.6
    # An input its layout shows but the save predates ran as it did then (target_pass: tiles); one its
    # layout does not show takes its default (and is not reported as ignored).
    assert config_from_layout_choice({"layout": "native first"}, {}).target_pass == "tiles"
    assert config_from_layout_choice({"layout": "patches"}, {}).target_pass == CutDiffusionConfig().target_pass
    assert config_from_layout_choice({}, {"stage_split": 0.6}) == CutDiffusionConfig(layout="patches",
                                                                                       stage_split=0.6)
    for name, bad, expected in [("stage_split", "high", "a number"), ("window_jitter", "yes", "true or false"),
                                ("stage2_mode", 3, "one of"), ("patch_size", True, "a number")]:
        with pytest.raises(ValueError, match=rf"CutDiffusion: {name} = .* must be {expected}"):
            config_from_layout_choice({"layout": "patches"}, {name: bad})


def test_preview_equals_the_plan_a_run_reports():
    """The preview and a real CutDiffusion KSampler run (tiny SDXL, its own discrete schedule)
    describe the same plan, word for word. One run (CPU time) that exercises the tricky parts:
    padding to the patch grid, a sampler that discards the penultimate sigma, karras, and
    the shortened schedule of denoise < 1."""
    width, height, steps, sampler, scheduler, denoise = 152, 64, 6, "uni_pc", "karras", 0.8
    _pack_nodes()
    prompt = {
        "model": {"class_type": rt.TINY_MODEL_NODE, "inputs": {"kind": "sdxl", "seed": 0}},
        "conds": {"class_type": rt.TINY_CONDS_NODE, "inputs": {"seed": 3, "batch": 1, "tokens": 8, "sdxl": True}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "sampler": {"class_type": "CutDiffusionKSampler", "inputs": {
            **{spec.name: uw.default_value(spec) for spec in uw.widget_specs("CutDiffusionKSampler")},
            "model": ["model", 0], "seed": 5, "steps": steps, "cfg": 5.0, "sampler_name": sampler,
            "scheduler": scheduler, "positive": ["conds", 0], "negative": ["conds", 1],
            "latent_image": ["latent", 0], "denoise": denoise, "patch_size": PATCH_PX}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sampler", 0], "filename_prefix": "fe/out"}},
    }
    report = rt.run_prompt(prompt)["outputs"]["sampler"]["cutdiffusion"][0]
    preview = preview_plan({"width": width, "height": height, "steps": steps, "sampler_name": sampler,
                            "scheduler": scheduler, "denoise": denoise, "patch_size": PATCH_PX})
    assert preview["summary"] in report


def test_preview_names_the_layouts_upscale():
    """Latent space without a VAE, pixel space through one, in the words of the run's report."""
    latent = preview_plan({"width": 2048, "height": 2048, "steps": 30})
    pixel = preview_plan({"width": 2048, "height": 2048, "steps": 30, "upscale": "pixel"})
    assert latent["layout"]["upscale"] == "latent" and "upscaled bicubically in latent space" in latent["summary"]
    assert pixel["layout"]["upscale"] == "pixel"
    assert "decoded by the VAE, upscaled bicubically in pixel space and encoded again" in pixel["summary"]
    assert pixel["evaluations_per_image"] == latent["evaluations_per_image"]


def test_demo_help_page_states_the_demo_models_native_size():
    from cutdiff_demo.model import NATIVE_SIZE_PX
    page = (DOCS / "CutDiffusionDemoModel.md").read_text()
    assert f"native size of {NATIVE_SIZE_PX} px" in page


def test_every_node_has_a_help_page_covering_its_inputs():
    for node_id, cls in _pack_nodes().items():
        page = DOCS / f"{node_id}.md"
        assert page.is_file(), f"{node_id}: no node help page {page}"
        text = page.read_text()
        assert text.startswith("# "), node_id
        documented = set(re.findall(r"`([a-z_0-9]+)`", text))
        inputs = {name for name, _, _ in uw.flat_inputs(node_id)}   # a dynamic combo's own inputs too
        assert inputs - documented == set(), f"{node_id}: inputs missing from {page.name}"


def test_readme_parameter_table_has_a_row_per_setting_in_node_order():
    from comfyui_cutdiffusion.cutdiff_core.config import SETTINGS
    readme = (rt.REPO_ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `([a-z_0-9]+)` \|", readme, flags=re.MULTILINE)
    assert [name for name in rows if name in {s.name for s in SETTINGS}] == [s.name for s in SETTINGS]
