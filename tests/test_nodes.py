"""The pack inside ComfyUI: registration, schemas, and graph execution through the real executor."""
import pytest
import torch

import comfy.sample

from cutdiff_dev import comfy_runtime as rt
from cutdiff_dev import ui_workflow as uw
from helpers import run_cut

from cutdiff_core import cutdiffusion_patch

PATCH = 256


def _prompt(sampler_node: dict, width=2 * PATCH, height=2 * PATCH, steps=4, patch_node: dict | None = None) -> dict:
    prompt = {
        "model": {"class_type": rt.TINY_MODEL_NODE, "inputs": {"kind": "sdxl", "seed": 0}},
        "conds": {"class_type": rt.TINY_CONDS_NODE, "inputs": {"seed": 3, "batch": 1, "tokens": 8, "sdxl": True}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "sampler": sampler_node,
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sampler", 0], "filename_prefix": "nodes/out"}},
    }
    if patch_node is not None:
        prompt["patch"] = patch_node
    return prompt


def _patch_inputs(**overrides):
    values = {"patch_size": PATCH, "window_stride": 0, "stage_split": 0.5, "window_batch_size": 0,
              "window_jitter": True, "pixel_interaction": True, "stage2_mode": "overlap",
              "window_weights": "uniform", "min_stage1_steps": 0,
              "global_guidance": 0.0, "layout": "patches", "layout_denoise": 0.3}
    values.update(overrides)
    return values


def _cut_ksampler(steps=4, **overrides):
    return {"class_type": "CutDiffusionKSampler", "inputs": {
        "model": ["model", 0], "seed": 5, "steps": steps, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
        "positive": ["conds", 0], "negative": ["conds", 1], "latent_image": ["latent", 0], "denoise": 1.0,
        **_patch_inputs(**overrides)}}


def test_pack_registers_its_nodes_with_tooltips():
    status = rt.init_nodes()
    assert status["loaded"], status["error"]
    assert {"CutDiffusion", "CutDiffusionKSampler"} <= set(status["nodes"])
    import nodes
    for name in ("CutDiffusion", "CutDiffusionKSampler"):
        schema = nodes.NODE_CLASS_MAPPINGS[name].GET_SCHEMA()
        assert schema.description and schema.category.startswith("sampling/cutdiffusion")
        for inp in schema.inputs:
            assert inp.tooltip, f"{name}.{inp.id} has no tooltip"


PATCH_INPUTS = ["layout", "target_pass", "layout_denoise", "layout_guidance", "patch_size", "window_stride",
                "stage_split", "window_batch_size", "window_jitter", "pixel_interaction", "stage2_mode",
                "window_weights", "min_stage1_steps", "global_guidance"]
# Every input in order: saved workflows store widget values by position, so names never change and an
# order change needs the frontend to read earlier saves by name (test_browser: saved earlier).
INPUT_ORDER = {
    "CutDiffusion": ["model", *PATCH_INPUTS, "vae"],
    "CutDiffusionKSampler": ["model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative",
                             "latent_image", "denoise", *PATCH_INPUTS, "vae"],
    "AdaptiveDiffusion": ["model", "threshold", "max_skip_steps", "warmup_steps", "start_percent", "end_percent"],
}
def _setting_inputs(node: str) -> list[tuple[str | None, object]]:
    """(layout option shown under, input) of a node's settings: None for a top-level input, an
    option of `layout` where it is a dynamic combo."""
    import nodes
    from comfy_api.latest import io
    out = []
    for given in nodes.NODE_CLASS_MAPPINGS[node].GET_SCHEMA().inputs:
        if hasattr(io, "DynamicCombo") and isinstance(given, io.DynamicCombo.Input):
            out.append((None, given))
            out += [(option.key, nested) for option in given.options for nested in option.inputs]
        elif given.id in PATCH_INPUTS:
            out.append((None, given))
    return out


def test_patch_inputs_are_the_configs_settings():
    # One definition: each input's default, range, options and tooltip are the config's.
    import dataclasses

    from comfy_api.latest import io
    from cutdiff_core.config import SETTINGS, CutDiffusionConfig, acts_on_note, settings_of_layout
    from cutdiff_core.layout import LAYOUTS
    assert [s.name for s in SETTINGS] == PATCH_INPUTS == [f.name for f in dataclasses.fields(CutDiffusionConfig)]
    defaults = CutDiffusionConfig()
    by_name = {s.name: s for s in SETTINGS}
    for node in ("CutDiffusion", "CutDiffusionKSampler"):
        inputs = _setting_inputs(node)
        if hasattr(io, "DynamicCombo"):   # 0.33.0: each layout shows the settings that act on it
            (_, layout), nested = inputs[0], inputs[1:]
            assert isinstance(layout, io.DynamicCombo.Input) and layout.id == "layout" and layout.optional
            assert [option.key for option in layout.options] == list(LAYOUTS)
            for option in LAYOUTS:
                assert [i.id for key, i in nested if key == option] == [s.name for s in settings_of_layout(option)]
        else:
            assert [i.id for _, i in inputs] == PATCH_INPUTS
            nested = inputs[1:]
            assert inputs[0][1].default == defaults.layout
        for _, given in nested:
            setting = by_name[given.id]
            assert given.default == getattr(defaults, setting.name)
            assert given.tooltip == setting.tooltip + acts_on_note(setting)   # which layouts it acts on
            if setting.bounds is not None:
                assert (given.min, given.max) == setting.bounds
            if setting.options is not None:
                assert list(given.options) == list(setting.options)


def test_each_layout_shows_the_settings_that_act_on_it():
    from cutdiff_core.config import SETTINGS, settings_of_layout
    native, paper = ([s.name for s in settings_of_layout(layout)] for layout in ("native first", "patches"))
    assert native == ["target_pass", "layout_denoise", "layout_guidance", "patch_size", "stage_split",
                      "window_batch_size", "pixel_interaction", "min_stage1_steps"]
    assert paper == ["patch_size", "window_stride", "stage_split", "window_batch_size", "window_jitter",
                     "pixel_interaction", "stage2_mode", "window_weights", "min_stage1_steps", "global_guidance"]
    assert set(native) | set(paper) == {s.name for s in SETTINGS[1:]}


# The expert inputs, hidden by the frontend until "Show advanced inputs" where ComfyUI can mark them.
ADVANCED = {
    "CutDiffusion": set(PATCH_INPUTS) - {"layout", "target_pass", "layout_denoise"},
    "CutDiffusionKSampler": set(PATCH_INPUTS) - {"layout", "target_pass", "layout_denoise"},
    "AdaptiveDiffusion": {"warmup_steps", "start_percent", "end_percent"},
}


def test_expert_inputs_are_advanced_where_comfyui_supports_it():
    """advanced=True on the expert inputs where this ComfyUI's V3 inputs take the parameter
    (0.33.0), none on 0.3.75, whose io.Input has no such parameter; names and order unchanged."""
    import inspect
    from comfy_api.latest import io

    status = rt.init_nodes()
    assert status["loaded"], status["error"]
    supported = "advanced" in inspect.signature(io.Int.Input.__init__).parameters
    for name, order in INPUT_ORDER.items():
        inputs = {k: options for k, _, options in uw.flat_inputs(name)}   # a dynamic combo's inputs merged
        assert list(inputs) == order, name
        flagged = {k for k, options in inputs.items() if options.get("advanced")}
        assert flagged == (ADVANCED[name] if supported else set()), name
    # The sampler keeps KSampler's widgets and the default's own inputs in view: seed (+ its control),
    # steps, cfg, sampler, scheduler, denoise, then layout, target_pass, layout_denoise.
    basic = [w.name for w in uw.widget_specs("CutDiffusionKSampler") if w.name not in ADVANCED["CutDiffusionKSampler"]]
    assert basic == ["seed", "steps", "cfg", "sampler_name", "scheduler", "denoise", "layout", "target_pass",
                     "layout_denoise"]


def test_cutdiffusion_ksampler_runs_in_the_executor_with_progress():
    result = rt.run_prompt(_prompt(_cut_ksampler(steps=4)))
    (latent,) = rt.saved_latents(result, "save")
    # The same run outside the executor gives the same latent.
    expected, report = run_cut(rt.tiny_sdxl(seed=0), rt.empty_latent(2 * PATCH, 2 * PATCH), seed=5, steps=4,
                               conds=rt.tiny_conds(seed=3), patch_size=PATCH)
    assert torch.equal(latent, expected)
    progress = [data["value"] for event, data in result["events"] if event == "progress" and data["node"] == "sampler"]
    rt.check_progress(progress, 4)
    summary = result["outputs"]["sampler"]["cutdiffusion"][0]
    assert "stage 1 2 steps on 2x2 patches" in summary and "stage 2 2 steps on 3x3 windows" in summary


@pytest.mark.parametrize("sampler_kind", ["KSampler", "KSamplerAdvanced", "SamplerCustomAdvanced"])
def test_patch_node_works_with_builtin_samplers(sampler_kind):
    common = {"positive": ["conds", 0], "negative": ["conds", 1], "latent_image": ["latent", 0]}
    extra = {}
    if sampler_kind == "KSampler":
        sampler = {"class_type": "KSampler", "inputs": {"model": ["patch", 0], "seed": 5, "steps": 4, "cfg": 5.0,
                                                        "sampler_name": "euler", "scheduler": "normal",
                                                        "denoise": 1.0, **common}}
    elif sampler_kind == "KSamplerAdvanced":
        sampler = {"class_type": "KSamplerAdvanced", "inputs": {
            "model": ["patch", 0], "add_noise": "enable", "noise_seed": 5, "steps": 4, "cfg": 5.0,
            "sampler_name": "euler", "scheduler": "normal", "start_at_step": 0, "end_at_step": 10000,
            "return_with_leftover_noise": "disable", **common}}
    else:
        sampler = {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["select", 0], "sigmas": ["sched", 0],
            "latent_image": ["latent", 0]}}
        extra = {
            "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}},
            "guider": {"class_type": "CFGGuider", "inputs": {"model": ["patch", 0], "positive": ["conds", 0],
                                                             "negative": ["conds", 1], "cfg": 5.0}},
            "select": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
            "sched": {"class_type": "BasicScheduler", "inputs": {"model": ["patch", 0], "scheduler": "normal",
                                                                 "steps": 4, "denoise": 1.0}},
        }
    patch = {"class_type": "CutDiffusion", "inputs": {"model": ["model", 0], **_patch_inputs()}}
    prompt = _prompt(sampler, patch_node=patch)
    prompt.update(extra)
    (latent,) = rt.saved_latents(rt.run_prompt(prompt), "save")
    # Same seed, sampler and schedule: the patch under any sampler node is CutDiffusion KSampler.
    (reference,) = rt.saved_latents(rt.run_prompt(_prompt(_cut_ksampler(steps=4))), "save")
    assert torch.equal(latent, reference)


def _as_sent_by_a_dynamic_combo_frontend(inputs: dict) -> dict:
    """A node's inputs as frontends with a dynamic combo send them: the chosen layout's settings named
    "layout.<setting>", the others left out."""
    from cutdiff_core.config import SETTINGS, settings_of_layout
    shown = settings_of_layout(inputs["layout"])
    out = {k: v for k, v in inputs.items() if k not in {s.name for s in SETTINGS[1:]}}
    return out | {f"layout.{s.name}": inputs.get(s.name, s.default) for s in shown}


def test_layout_shows_its_own_inputs_and_prompts_saved_flat_keep_what_they_ran():
    """Where ComfyUI has V3's DynamicCombo (0.33.0), a prompt names the chosen layout's settings
    "layout.<setting>"; a prompt saved with every setting at the top level (as on 0.3.75, or before
    the combo) runs the same, settings its layout does not show included."""
    from comfy_api.latest import io
    if not hasattr(io, "DynamicCombo"):
        pytest.skip("this ComfyUI has no DynamicCombo: every setting is a top-level input (the flat prompts of the "
                    "other tests)")
    changed = dict(window_stride=128, stage_split=0.6, window_weights="feathered")
    flat = _cut_ksampler(**changed)
    nested = dict(flat, inputs=_as_sent_by_a_dynamic_combo_frontend(flat["inputs"]))
    assert "layout.window_stride" in nested["inputs"] and "window_stride" not in nested["inputs"]
    (from_flat,) = rt.saved_latents(rt.run_prompt(_prompt(flat)), "save")
    (from_nested,) = rt.saved_latents(rt.run_prompt(_prompt(nested)), "save")
    (defaults,) = rt.saved_latents(rt.run_prompt(_prompt(_cut_ksampler())), "save")
    assert torch.equal(from_flat, from_nested) and not torch.equal(from_flat, defaults)

    # Native first shows no window_stride: a flat prompt's value still reaches the run (it acts on the
    # paper's layout that native first runs for image-to-image).
    img2img = dict(layout="native first", **changed)
    flat = _cut_ksampler(**img2img)
    flat["inputs"]["denoise"] = 0.8
    (with_stride,) = rt.saved_latents(rt.run_prompt(_prompt(flat)), "save")
    nested = dict(flat, inputs=_as_sent_by_a_dynamic_combo_frontend(flat["inputs"]))
    assert "layout.window_stride" not in nested["inputs"] and nested["inputs"]["layout.stage_split"] == 0.6
    (shown_only,) = rt.saved_latents(rt.run_prompt(_prompt(nested)), "save")
    assert not torch.equal(with_stride, shown_only)


def test_both_nodes_upscale_the_layout_through_their_vae_input():
    """Native first with a VAE on either node: the same pixel-space run, which the report names, and
    a different image from the latent-space upscale without one."""
    native_first = _patch_inputs(layout="native first", target_pass="whole frame")
    vae = {"class_type": rt.TINY_VAE_NODE, "inputs": {"seed": 0}}
    with_vae = _prompt(_cut_ksampler(**native_first))
    with_vae["sampler"]["inputs"]["vae"] = ["vae", 0]
    with_vae["vae"] = vae
    result = rt.run_prompt(with_vae)
    (through_vae,) = rt.saved_latents(result, "save")
    assert "decoded by the VAE, upscaled bicubically in pixel space" in result["outputs"]["sampler"]["cutdiffusion"][0]
    patch = {"class_type": "CutDiffusion", "inputs": {"model": ["model", 0], "vae": ["vae", 0], **native_first}}
    ksampler = {"class_type": "KSampler", "inputs": {
        "model": ["patch", 0], "seed": 5, "steps": 4, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
        "denoise": 1.0, "positive": ["conds", 0], "negative": ["conds", 1], "latent_image": ["latent", 0]}}
    behind_patch = _prompt(ksampler, patch_node=patch)
    behind_patch["vae"] = vae
    (patched,) = rt.saved_latents(rt.run_prompt(behind_patch), "save")
    (in_latent_space,) = rt.saved_latents(rt.run_prompt(_prompt(_cut_ksampler(**native_first))), "save")
    assert torch.equal(patched, through_vae) and not torch.allclose(through_vae, in_latent_space)


def test_cancel_interrupts_a_cutdiffusion_run():
    def cancel_on_first_progress(event, data):
        if event == "progress":
            rt.interrupt()

    with pytest.raises(rt.PromptInterrupted):
        rt.run_prompt(_prompt(_cut_ksampler(steps=6)), on_event=cancel_on_first_progress)


def test_bad_input_fails_before_sampling_with_the_field_named():
    with pytest.raises(rt.PromptError, match=r"window_stride = 512 must be in \[8, 256\]"):
        rt.run_prompt(_prompt(_cut_ksampler(window_stride=512)))


def test_previews_get_the_whole_image_in_both_stages():
    model = rt.tiny_sdxl(seed=0)
    pos, neg = rt.tiny_conds(seed=3)
    patched = cutdiffusion_patch.apply_cutdiffusion(model, cutdiffusion_patch.CutDiffusionConfig(layout="patches", patch_size=PATCH))
    latent = torch.zeros(1, 4, 64, 48)
    shapes = []
    with torch.inference_mode():
        comfy.sample.sample(patched, comfy.sample.prepare_noise(latent, 1), 4, 5.0, "euler", "normal", pos, neg, latent,
                            callback=lambda step, x0, x, total: shapes.append((step, tuple(x0.shape), tuple(x.shape))),
                            disable_pbar=True, seed=1)
    assert shapes == [(i, (1, 4, 64, 48), (1, 4, 64, 48)) for i in range(4)]
