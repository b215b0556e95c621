"""CutDiffusion (MODEL -> MODEL) and CutDiffusion KSampler nodes. Thin: the work is in cutdiff_core."""
from __future__ import annotations

import inspect

import comfy.samplers
from comfy_api.latest import io

from ..cutdiff_core.config import (SETTINGS, CutDiffusionConfig, Setting, acts_on_note, config_from_inputs,
                                   config_from_layout_choice, settings_of_layout)
from ..cutdiff_core.cutdiffusion_patch import RunReport, apply_cutdiffusion, sample
from ..cutdiff_core.layout import LAYOUTS

CATEGORY = "sampling/cutdiffusion"

LAYOUT_IS_DYNAMIC = hasattr(io, "DynamicCombo")
# Prompts saved before the dynamic combo name its settings beside `layout`, where the schema has none:
# the nodes take every input of the prompt and read those (config_from_layout_choice).
ACCEPTS_SAVED_TOP_LEVEL = dict(accept_all_inputs=True) if LAYOUT_IS_DYNAMIC else {}


def advanced(input_class) -> dict:
    """`advanced=True` for an expert input where this ComfyUI's V3 inputs take it (0.33.0 does: the
    frontend then hides the widget until the node's "Show advanced"), else nothing (0.3.75's
    io.Input has no such parameter). Name, default, range and order of the input never change."""
    accepted = "advanced" in inspect.signature(input_class.__init__).parameters
    return {"advanced": True} if accepted else {}


def _setting_input(setting: Setting):
    """The node input for one of the patch's settings, as the config defines it."""
    common = dict(default=setting.default, tooltip=setting.tooltip + acts_on_note(setting))
    if setting.options is not None:
        kind, extra = io.Combo, dict(options=list(setting.options))
    elif isinstance(setting.default, bool):
        kind, extra = io.Boolean, {}
    else:
        kind, number = (io.Float, float) if isinstance(setting.default, float) else (io.Int, int)
        extra = dict(min=number(setting.bounds[0]), max=number(setting.bounds[1]))
        if setting.step is not None:
            extra["step"] = setting.step
    if setting.advanced:
        extra.update(advanced(kind.Input))
    # Optional, all of them: ComfyUI puts required inputs before optional ones, and `layout` (optional
    # since prompts saved before it exist) comes first; an absent one is its config default or
    # when_absent (config_from_inputs).
    return kind.Input(setting.name, optional=True, **common, **extra)


def vae_input():
    return io.Vae.Input("vae", optional=True,
                        tooltip="Optional, native first only: the model's VAE. The layout is then decoded, upscaled in "
                                "pixel space and encoded again, as a hires fix with VAEDecode, ImageScale and "
                                "VAEEncode (the usual choice on real VAEs, where an upscaled latent decodes to blur). "
                                "Unconnected: the layout is upscaled in latent space.")


def patch_inputs() -> list:
    """The patch's settings, shared by both nodes, in config.SETTINGS' order: `layout` first, then
    native first's own inputs, then the paper's (expert, advanced). Where this ComfyUI has V3's
    DynamicCombo (0.33.0), `layout` is one, showing under each layout only the settings that act on
    it (config.settings_of_layout); elsewhere (0.3.75) every setting is its own input and the
    preview greys the ones the chosen layout ignores."""
    if not LAYOUT_IS_DYNAMIC:
        return [_setting_input(setting) for setting in SETTINGS]
    layout = SETTINGS[0]
    options = [io.DynamicCombo.Option(option, [_setting_input(s) for s in settings_of_layout(option)])
               for option in LAYOUTS]
    # Optional, as the flat input: a prompt saved before `layout` existed ran the paper's layout.
    return [io.DynamicCombo.Input(layout.name, options=options, optional=True,
                                  tooltip=layout.tooltip + " Each layout shows only the inputs it uses.")]


def config_of(settings: dict) -> CutDiffusionConfig:
    """The config of a node's setting inputs. With the dynamic combo, `layout` is {"layout": option,
    its inputs...}, beside the top-level settings of a prompt saved before it (and any other input of
    the prompt, ignored); a prompt saved before `layout` existed has no combo at all."""
    if not LAYOUT_IS_DYNAMIC:
        return config_from_inputs(settings)
    choice = settings.get("layout")
    if isinstance(choice, dict):
        return config_from_layout_choice(choice, {k: v for k, v in settings.items() if k != "layout"})
    return config_from_layout_choice({}, settings)


class CutDiffusion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CutDiffusion",
            display_name="CutDiffusion",
            category=CATEGORY,
            description="Patch a model for tuning-free high-resolution generation; use it with any sampler node at a "
                        "large latent size. Default (layout native first, beyond the paper): the image is drawn at "
                        "the model's native area, upscaled (in pixel space through the vae input where one is "
                        "connected), and the last layout_denoise of the schedule re-run at "
                        "the target size on the whole frame (a hires fix in one sampler node); target_pass tiles "
                        "re-runs it in native-size shifted tiles held to that layout, CutDiffusion's stage-1 "
                        "patches guiding them. layout patches: the paper's CutDiffusion (arXiv 2404.15141), stage "
                        "1 on interleaved native-size patches, stage 2 in overlapping windows. Greyed inputs are "
                        "not used by the chosen layout.",
            inputs=[io.Model.Input("model", tooltip="The model to patch (it is not modified; a patched copy is returned).")]
                   + patch_inputs() + [vae_input()],
            **ACCEPTS_SAVED_TOP_LEVEL,
            outputs=[io.Model.Output(tooltip="The model with CutDiffusion: sample it at the target size with "
                                             "KSampler, KSamplerAdvanced or SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, model, vae=None, **settings) -> io.NodeOutput:
        config = config_of(settings)
        return io.NodeOutput(apply_cutdiffusion(model, config, vae=vae))


class CutDiffusionKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CutDiffusionKSampler",
            display_name="CutDiffusion KSampler",
            category=CATEGORY,
            description="KSampler for images larger than the model's native size. Default (layout native first, "
                        "beyond the paper): a layout pass at the native area, a bicubic upscale (in pixel space "
                        "through the vae input where one is connected), then the last "
                        "layout_denoise of the schedule at the target size on the whole frame - exactly a hires "
                        "fix of ComfyUI's core nodes, no CutDiffusion part. target_pass tiles: that pass in "
                        "native-size shifted tiles held to the layout, CutDiffusion's patches guiding them (the "
                        "memory of a native-size image at any size). layout patches: the paper's CutDiffusion, "
                        "two stages in one sampling run. At the native size it gives exactly KSampler's result; "
                        "the preview shows the plan and greys the inputs the chosen layout does not use.",
            inputs=[
                io.Model.Input("model", tooltip="The model used for denoising (SDXL, SD1.5, ...)."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="The noise seed; it also seeds CutDiffusion's pixel shuffling and window jitter."),
                io.Int.Input("steps", default=30, min=1, max=10000, tooltip="Sampling steps (both stages together)."),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale, as in KSampler (the paper uses 7.5)."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS,
                               tooltip="Any ComfyUI sampler; multistep and SDE state carries across the stages."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS,
                               tooltip="Any ComfyUI scheduler; the stage split follows the noise level, not the step count."),
                io.Conditioning.Input("positive", tooltip="What to include in the image."),
                io.Conditioning.Input("negative", tooltip="What to exclude from the image."),
                io.Latent.Input("latent_image", tooltip="The latent at the target size (any multiple of 8 px), "
                                                        "e.g. an Empty Latent Image of 2048x2048."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="As in KSampler: below 1 keeps part of the input latent (upscaling / hires "
                                       "fix). A denoise whose start noise is below stage_split skips stage 1 "
                                       "(refinement only, the node says so); see min_stage1_steps."),
            ] + patch_inputs() + [vae_input()],
            **ACCEPTS_SAVED_TOP_LEVEL,
            outputs=[io.Latent.Output(tooltip="The denoised latent at the target size.")],
        )

    @classmethod
    def execute(cls, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise,
                vae=None, **settings) -> io.NodeOutput:
        config = config_of(settings)
        report = RunReport()
        patched = apply_cutdiffusion(model, config, report, vae=vae)
        latent = sample(patched, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise)
        return io.NodeOutput(latent, ui={"cutdiffusion": [report.summary()]})
