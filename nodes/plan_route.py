"""GET /cutdiffusion/plan: the plan preview the web extension draws on the CutDiffusion KSampler node;
GET /cutdiffusion/settings: what it needs to load workflows saved by earlier pack versions as they ran.

The browser asks the server instead of re-implementing the geometry in JS, so
the preview comes from the very functions a run uses (cutdiff_core.plan.make_plan,
cutdiffusion_patch.validate_config, ComfyUI's own schedulers): it cannot drift.

The one thing a preview cannot know is the model: its native size (patch_size 0
= automatic) and its noise schedule decide the patch grid and the stage split.
The preview takes the native size from the node class that loads the model
when it knows it (`model_source`, e.g. the pack's demo model), else assumes
SDXL (1024 px), and it assumes SD1.5/SDXL's discrete noise schedule; it says
so in `assumptions`. Set patch_size on the node for other models.
"""
from __future__ import annotations

import logging

import comfy.model_sampling
import comfy.samplers

from ..cutdiff_core.config import (ORDER_SAVED_BEFORE_LAYOUT_FIRST, SETTINGS, CutDiffusionConfig, Setting,
                                   inactive_settings, plan_run, plan_target_pass, run_kind, settings_of_layout,
                                   validate_config, validate_stride, window_stride_latent)
from ..cutdiff_core.layout import LAYOUTS, is_full_noise, native_first
from ..cutdiff_core.plan import EVALUATIONS_PER_STEP, LATENT_SCALE, window_layout
from ..cutdiff_demo.model import NATIVE_SIZE_PX as DEMO_NATIVE_PX

log = logging.getLogger("cutdiffusion")

ROUTE = "/cutdiffusion/plan"
SETTINGS_ROUTE = "/cutdiffusion/settings"
ASSUMED_NATIVE_PX = 1024  # what patch_size 0 means for SDXL, the pack's main target
MAX_SIDE_PX = 16384       # EmptyLatentImage's own maximum
MAX_STEPS = 10000         # the node's steps maximum
MAX_DRAWN_WINDOWS = 400
# Model-loading node classes whose model's native size is known without loading it.
NATIVE_PX_BY_MODEL_SOURCE = {"CutDiffusionDemoModel": DEMO_NATIVE_PX, "CutDiffusionDemoDiT": DEMO_NATIVE_PX}

# One instance: the default discrete schedule (linear betas 0.00085..0.012,
# 1000 timesteps) is exactly SD1.5's and SDXL's.
_DISCRETE = comfy.model_sampling.ModelSamplingDiscrete()


class PlanRequestError(ValueError):
    """A preview request the node itself would refuse; the message names the field."""


def preview_sigmas(scheduler: str, sampler_name: str, steps: int, denoise: float) -> list[float]:
    """The sigmas KSampler would sample with (comfy.samplers.KSampler.set_steps/calculate_sigmas)
    on an SD1.5/SDXL discrete schedule; kept in step with those two methods."""
    def full_schedule(n: int):
        discard = sampler_name in comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS
        sigmas = comfy.samplers.calculate_sigmas(_DISCRETE, scheduler, n + int(discard))
        return list(sigmas[:-2]) + list(sigmas[-1:]) if discard else list(sigmas)

    if denoise > 0.9999:
        sigmas = full_schedule(steps)
    elif denoise <= 0.0:
        sigmas = []
    else:
        sigmas = full_schedule(int(steps / denoise))[-(steps + 1):]
    return [float(s) for s in sigmas]


def _number(params: dict, name: str, kind, default, lo, hi):
    raw = params.get(name, default)
    try:
        value = kind(float(raw)) if kind is int else kind(raw)
    except (TypeError, ValueError):
        raise PlanRequestError(f"{name} = {raw!r} is not a number")
    if not lo <= value <= hi:
        raise PlanRequestError(f"{name} = {value} is outside [{lo}, {hi}]")
    return value


def _flag(params: dict, name: str, default: bool) -> bool:
    return str(params.get(name, default)).lower() in ("1", "true", "yes", "on")


def _setting(params: dict, setting: Setting):
    """One of the patch's settings from the request, checked as the node checks it."""
    if setting.options is not None:
        return _choice(params, setting.name, list(setting.options), setting.default)
    if isinstance(setting.default, bool):
        return _flag(params, setting.name, setting.default)
    kind = float if isinstance(setting.default, float) else int
    return _number(params, setting.name, kind, setting.default, *setting.bounds)


def _choice(params: dict, name: str, options: list[str], default: str) -> str:
    value = params.get(name, default)
    if value not in options:
        raise PlanRequestError(f"{name} = {value!r} is not a known {name}")
    return value


def preview_plan(params: dict) -> dict:
    """The plan for a node's widget values and latent size (all in px), as JSON-ready data.

    Raises PlanRequestError with the node's own message for settings a run would refuse.
    """
    width_px = _number(params, "width", int, 1024, 8, MAX_SIDE_PX)
    height_px = _number(params, "height", int, 1024, 8, MAX_SIDE_PX)
    steps = _number(params, "steps", int, 30, 1, MAX_STEPS)
    cfg = _number(params, "cfg", float, 7.0, 0.0, 100.0)
    denoise = _number(params, "denoise", float, 1.0, 0.0, 1.0)
    sampler_name = _choice(params, "sampler_name", comfy.samplers.KSampler.SAMPLERS, "euler")
    scheduler = _choice(params, "scheduler", comfy.samplers.KSampler.SCHEDULERS, "normal")
    upscale = _choice(params, "upscale", ["latent", "pixel"], "latent")   # pixel: a VAE is connected
    pixel_upscale = upscale == "pixel"
    config = CutDiffusionConfig(**{setting.name: _setting(params, setting) for setting in SETTINGS})
    known_native_px = NATIVE_PX_BY_MODEL_SOURCE.get(params.get("model_source"))
    native_px = config.patch_size or known_native_px or ASSUMED_NATIVE_PX
    try:
        validate_config(config)
        validate_stride(config.window_stride, native_px)
    except ValueError as e:
        raise PlanRequestError(str(e)) from e

    native, stride = native_px // LATENT_SCALE, window_stride_latent(config, native_px)
    height, width = height_px // LATENT_SCALE, width_px // LATENT_SCALE
    sigmas = preview_sigmas(scheduler, sampler_name, steps, denoise)
    # The run's own test on the same sigmas, with what the KSampler node tells it (denoise 1: a whole schedule).
    first = (native_first(height, width, native, len(sigmas) - 1, config.layout_denoise)
             if config.layout == "native first" and is_full_noise(sigmas, float(_DISCRETE.sigma_max), denoise > 0.9999)
             else None)
    plan_args = dict(height=height, width=width, native_px=native_px,
                     sigmas=sigmas[first.refine_from:] if first else sigmas,
                     split_sigma=float(_DISCRETE.percent_to_sigma(config.stage_split)))
    plan = plan_target_pass(config, **plan_args) if first else plan_run(config, **plan_args)
    grid, layout = plan.grid, plan.layout
    per_image = plan.model_evaluations(cfg_batches=1) + (first.layout_evaluations if first else 0)
    whole_frame = first is not None and not first.is_whole_run and config.target_pass == "whole frame"
    if whole_frame:
        per_image = first.whole_frame_evaluations(height, width)
    # ComfyUI skips the uncond half when cfg is exactly 1.
    cfg_halves = 1 if cfg == 1.0 else 2
    assumptions = ["stage split on the SD1.5/SDXL noise schedule"]
    if not config.patch_size:
        assumptions.insert(0, f"patch_size auto = {native_px} px" + ("" if known_native_px else " (SDXL)"))
    if sampler_name in EVALUATIONS_PER_STEP:
        assumptions.append(f"{sampler_name} evaluates the model about {EVALUATIONS_PER_STEP[sampler_name]} times "
                           "per step")
    px = LATENT_SCALE
    ran = "direct" if first is not None and first.is_whole_run else run_kind(config, first is not None)
    inactive = inactive_settings(ran, None if ran in ("direct", "native first, whole frame") else plan)
    return {
        "settings": [setting.name for setting in SETTINGS], "inactive": inactive,
        "width": width_px, "height": height_px,
        "native_px": native_px, "stride_px": stride * px,
        "grid": {"rows": grid.rows, "cols": grid.cols, "patch_h": grid.patch_h * px, "patch_w": grid.patch_w * px,
                 "pad_h": plan.pad_h * px, "pad_w": plan.pad_w * px},
        "windows": {"mode": layout.mode, "count": layout.count, "w": layout.win_w * px, "h": layout.win_h * px,
                    "rows": len(layout.ys), "cols": len(layout.xs),
                    "jitter_h": layout.jitter_h * px, "jitter_w": layout.jitter_w * px,
                    "rects": [[win.x * px, win.y * px, win.w * px, win.h * px] for win in _drawn_windows(layout)]},
        "layout": None if first is None else {"w": first.width * px, "h": first.height * px, "steps": first.steps,
                                              "evaluations": first.layout_evaluations,
                                              "direct": first.is_whole_run,
                                              "upscale": upscale,
                                              "summary": first.summary(px, pixel_upscale)},
        "steps": plan.steps, "stage1_steps": plan.stage1_steps, "stage2_steps": plan.stage2_steps,
        "guided": plan.guided, "guidance": plan.guidance,
        "evaluations_per_image": per_image,
        "evaluations_with_cfg": per_image * cfg_halves,
        "multidiffusion_evaluations": (len(sigmas) - 1) * _multidiffusion_windows(plan, native, stride,
                                                                                 config.window_jitter),
        "assumptions": assumptions,
        "target_pass": "whole frame" if whole_frame else "tiles" if first is not None else None,
        "summary": (f"{first.summary(px, pixel_upscale)} on the whole frame" if whole_frame else plan.summary()),
    }


def _multidiffusion_windows(plan, native: int, stride: int, jitter: bool) -> int:
    """Windows per step of plain MultiDiffusion (stage_split 0) at the target size: the
    overlapping windows, whatever stage2_mode the node uses."""
    return window_layout(plan.height, plan.width, native, native, stride, stride, jitter, "overlap").count


def _drawn_windows(layout) -> list:
    """The windows of one step to draw, unjittered (`shifted`: the tile grid before its per-step
    roll); capped, since past a few hundred the drawing is a solid block."""
    return layout.windows()[:MAX_DRAWN_WINDOWS]


def saved_workflow_settings() -> dict:
    """What the web extension needs to load a workflow saved by an earlier pack version as it ran:
    the value of each input such a save predates, the settings' orders (today's flat one and the
    earlier one), their defaults, and the settings each layout shows under a dynamic combo."""
    return {"when_absent": {s.name: s.when_absent for s in SETTINGS if s.when_absent is not None},
            "order_saved_before_layout_first": list(ORDER_SAVED_BEFORE_LAYOUT_FIRST),
            "order": [s.name for s in SETTINGS],
            "defaults": {s.name: s.default for s in SETTINGS},
            "shown_by_layout": {layout: [s.name for s in settings_of_layout(layout)] for layout in LAYOUTS},
            "layouts": list(LAYOUTS)}


def register(routes) -> None:
    from aiohttp import web

    @routes.get(SETTINGS_ROUTE)
    async def settings_route(request):
        return web.json_response(saved_workflow_settings())

    @routes.get(ROUTE)
    async def plan_route(request):
        try:
            return web.json_response(preview_plan(dict(request.rel_url.query)))
        except PlanRequestError as e:
            return web.json_response({"error": str(e)}, status=400)


def register_on_running_server() -> None:
    """Add the route to ComfyUI's PromptServer when there is one (not in headless/in-process use)."""
    try:
        from server import PromptServer
    except ImportError:  # ComfyUI without its web server (e.g. scripts, other hosts)
        return
    routes = getattr(getattr(PromptServer, "instance", None), "routes", None)
    if routes is None:
        log.debug("CutDiffusion: no running PromptServer, plan preview route not registered")
        return
    register(routes)


register_on_running_server()
