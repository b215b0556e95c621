"""CutDiffusion (MODEL -> MODEL) and CutDiffusion KSampler nodes. Thin: the work is in cutdiff_core."""
from __future__ import annotations

import inspect

import comfy.samplers
from comfy_api.latest import io

from ..cutdiff_core.cutdiffusion_patch import (CutDiffusionConfig, RunReport, apply_cutdiffusion, sample,
                                          MAX_AUTO_WINDOW_BATCH)
from ..cutdiff_core.plan import STAGE2_MODES
from ..cutdiff_core.windows import WINDOW_WEIGHTS

CATEGORY = "sampling/cutdiffusion"


def advanced(input_class) -> dict:
    """`advanced=True` for an expert input where this ComfyUI's V3 inputs take it (0.33.0 does: the
    frontend then hides the widget until the node's "Show advanced"), else nothing (0.3.75's
    io.Input has no such parameter). Name, default, range and order of the input never change."""
    accepted = "advanced" in inspect.signature(input_class.__init__).parameters
    return {"advanced": True} if accepted else {}


def patch_inputs() -> list:
    """The patch's settings, shared by both nodes (defaults = the reference implementation);
    all but stage_split are expert settings (advanced)."""
    return [
        io.Int.Input("patch_size", default=0, min=0, max=16384, step=8,
                     tooltip="The model's native (training) size in px: the size of each stage-1 patch and stage-2 "
                             "window. 0 = automatic from the model type (SDXL 1024, SD1.5 512).",
                     **advanced(io.Int.Input)),
        io.Int.Input("window_stride", default=0, min=0, max=16384, step=8,
                     tooltip="Stage-2 window stride in px. Smaller = more overlap, smoother, slower "
                             "(more windows). 0 = half the patch size (512 px on SDXL, as in the paper).",
                     **advanced(io.Int.Input)),
        io.Float.Input("stage_split", default=0.5, min=0.0, max=1.0, step=0.01,
                       tooltip="Where stage 1 (global structure, few patches) hands over to stage 2 (detail, "
                               "overlapping windows), as a noise level in ComfyUI's percent convention, so it means "
                               "the same for every scheduler. 0.5 = the paper's 25/25 of 50 SDXL steps. "
                               "0 = plain MultiDiffusion; 1 = stage 1 only. Raise it if subjects repeat."),
        io.Int.Input("window_batch_size", default=0, min=0, max=256,
                     tooltip=f"Stage-2 windows per model call. Lower it if you run out of memory. 0 = as many as "
                             f"fit in free memory (at most {MAX_AUTO_WINDOW_BATCH}).",
                     **advanced(io.Int.Input)),
        io.Boolean.Input("window_jitter", default=True,
                         tooltip="Move the stage-2 windows by a small random offset at every step, so window "
                                 "borders never stay in one place (the paper's default).",
                         **advanced(io.Boolean.Input)),
        io.Boolean.Input("pixel_interaction", default=True,
                         tooltip="Shuffle pixels between the stage-1 patches before every model call, so all patches "
                                 "agree on one layout. Off only for the paper's ablation (repeated subjects).",
                         **advanced(io.Boolean.Input)),
        io.Combo.Input("stage2_mode", options=list(STAGE2_MODES), default="overlap",
                       tooltip="overlap: the paper's overlapping MultiDiffusion windows. shifted: windows that tile "
                               "the image without overlap, moved by a random offset every step so seams never stay "
                               "in one place - about as many model calls per step as stage-1 patches (faster).",
                       **advanced(io.Combo.Input)),
        io.Combo.Input("window_weights", options=list(WINDOW_WEIGHTS), default="uniform",
                       tooltip="How overlapping stage-2 windows are blended. uniform: plain average (MultiDiffusion). "
                               "feathered: weights fade towards window borders, a smooth cross-fade (use it if you "
                               "see seams).",
                       **advanced(io.Combo.Input)),
        io.Int.Input("min_stage1_steps", default=0, min=0, max=10000,
                     tooltip="Force at least this many stage-1 steps. Image-to-image with a low denoise starts below "
                             "the stage split and then runs stage 2 only (detail refinement, the input's layout "
                             "kept); raise this to let stage 1 rework the global structure too.",
                     **advanced(io.Int.Input)),
        io.Float.Input("global_guidance", default=0.0, min=0.0, max=1.0, step=0.05,
                       tooltip="Beyond the paper, off (0) by default. Stage 2 also runs the stage-1 patches and "
                               "mixes their whole-image prediction into the windows', with this weight at the "
                               "split fading to 0 at the end. Use it if subjects still repeat or small copies "
                               "appear around a large one (1 = strongest); costs one patch set per stage-2 step.",
                       **advanced(io.Float.Input)),
    ]


def _config(patch_size, window_stride, stage_split, window_batch_size, window_jitter, pixel_interaction,
            stage2_mode, window_weights, min_stage1_steps, global_guidance):
    return CutDiffusionConfig(patch_size=patch_size, window_stride=window_stride, stage_split=stage_split,
                              window_batch_size=window_batch_size, window_jitter=window_jitter,
                              pixel_interaction=pixel_interaction, stage2_mode=stage2_mode,
                              window_weights=window_weights, min_stage1_steps=min_stage1_steps,
                              global_guidance=global_guidance)


class CutDiffusion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CutDiffusion",
            display_name="CutDiffusion",
            category=CATEGORY,
            description="Patch a model for tuning-free high-resolution generation (CutDiffusion, arXiv 2404.15141): "
                        "stage 1 denoises the whole structure on a few interleaved native-size patches, stage 2 "
                        "refines detail with overlapping windows. Use it with any sampler node at a large latent size.",
            inputs=[io.Model.Input("model", tooltip="The model to patch (it is not modified; a patched copy is returned).")]
                   + patch_inputs(),
            outputs=[io.Model.Output(tooltip="The model with CutDiffusion: sample it at the target size with "
                                             "KSampler, KSamplerAdvanced or SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, model, **settings) -> io.NodeOutput:
        config = _config(**settings)
        return io.NodeOutput(apply_cutdiffusion(model, config))


class CutDiffusionKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CutDiffusionKSampler",
            display_name="CutDiffusion KSampler",
            category=CATEGORY,
            description="KSampler for images larger than the model's native size: CutDiffusion's two stages in one "
                        "ordinary sampling run. At the native size it gives exactly KSampler's result.",
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
            ] + patch_inputs(),
            outputs=[io.Latent.Output(tooltip="The denoised latent at the target size.")],
        )

    @classmethod
    def execute(cls, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise,
                **settings) -> io.NodeOutput:
        config = _config(**settings)
        report = RunReport()
        patched = apply_cutdiffusion(model, config, report)
        latent = sample(patched, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise)
        return io.NodeOutput(latent, ui={"cutdiffusion": [report.summary()]})
