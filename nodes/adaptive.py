"""AdaptiveDiffusion (MODEL -> MODEL). Thin: the work is in cutdiff_core.adaptive(_patch)."""
from __future__ import annotations

from comfy_api.latest import io

from ..cutdiff_core.adaptive import AdaptiveConfig, RANGES
from ..cutdiff_core.adaptive_patch import FRONTEND_EVENT, apply_adaptive
from .cutdiffusion import CATEGORY, advanced


class AdaptiveDiffusion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        defaults = AdaptiveConfig()
        return io.Schema(
            node_id="AdaptiveDiffusion",
            display_name="AdaptiveDiffusion",
            category=CATEGORY,
            description="Skip model evaluations where the latent trajectory is smooth (AdaptiveDiffusion, arXiv "
                        "2410.09873): a skipped step reuses the previous noise prediction (cond and uncond) at the "
                        "current latent, and every sampler step still happens. Works with any one-evaluation-per-"
                        "step sampler (euler, dpmpp_2m, ddim, ...) and with CutDiffusion, where a skipped step "
                        f"skips every patch or window. Reports evaluations made/skipped (event '{FRONTEND_EVENT}').",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch (it is not modified; a patched copy is returned)."),
                io.Float.Input("threshold", default=defaults.threshold, min=RANGES["threshold"][0],
                               max=RANGES["threshold"][1], step=0.001, round=0.0001,
                               tooltip="The paper's delta: skip when the third-order change of the latent is at most "
                                       "2 * threshold times its last change. Higher = more skips, more drift from "
                                       "the full result. 0 = never skip. Paper default 0.01 (SD1.5/SDXL)."),
                io.Int.Input("max_skip_steps", default=defaults.max_skip_steps, min=RANGES["max_skip_steps"][0],
                             max=RANGES["max_skip_steps"][1],
                             tooltip="At most this many skipped steps in a row; then the model is evaluated again. "
                                     "Paper default 4. 0 = never skip."),
                io.Int.Input("warmup_steps", default=defaults.warmup_steps, min=RANGES["warmup_steps"][0],
                             max=RANGES["warmup_steps"][1],
                             tooltip="The first steps are always evaluated: they set the composition. "
                                     "Paper default 4.",
                             **advanced(io.Int.Input)),
                io.Float.Input("start_percent", default=defaults.start_percent, min=RANGES["start_percent"][0],
                               max=RANGES["start_percent"][1], step=0.01,
                               tooltip="Skipping starts at this point of the schedule (ComfyUI's percent of the "
                                       "noise range, as ControlNet and the step caches use). 0 = from the start.",
                               **advanced(io.Float.Input)),
                io.Float.Input("end_percent", default=defaults.end_percent, min=RANGES["end_percent"][0],
                               max=RANGES["end_percent"][1], step=0.01,
                               tooltip="Skipping stops at this point of the schedule (percent of the noise range). "
                                       "1 = until the end.",
                               **advanced(io.Float.Input)),
            ],
            outputs=[io.Model.Output(tooltip="The model with AdaptiveDiffusion: sample it with any sampler node, "
                                             "alone or together with CutDiffusion (in either order).")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, threshold, max_skip_steps, warmup_steps, start_percent, end_percent) -> io.NodeOutput:
        config = AdaptiveConfig(threshold=threshold, max_skip_steps=max_skip_steps, warmup_steps=warmup_steps,
                                start_percent=start_percent, end_percent=end_percent)
        node_id = cls.hidden.unique_id if cls.hidden is not None else None
        return io.NodeOutput(apply_adaptive(model, config, node_id=node_id))
