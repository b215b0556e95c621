"""The CutDiffusion patch's settings: their one definition (default, range, tooltip), their
validation, and the plan a run of them makes. Pure Python; the nodes and the plan preview
build their inputs and checks from SETTINGS."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

from .layout import LAYOUTS, TARGET_PASSES
from .plan import LATENT_SCALE, STAGE2_MODES, Plan, make_plan
from .windows import WINDOW_WEIGHTS

MAX_AUTO_WINDOW_BATCH = 16  # the reference's window batch


@dataclass(frozen=True)
class CutDiffusionConfig:
    """The patch's settings, as on the CutDiffusion node (sizes in pixels). Defaults: the paper's,
    except native first's (`layout`, `layout_denoise`, `target_pass`: what issue 23's rule chose on the
    detail proxy's selection set; "patches" = the paper)."""
    layout: str = "native first"
    target_pass: str = "whole frame"
    layout_denoise: float = 0.5
    layout_guidance: float = 1.0
    patch_size: int = 0
    window_stride: int = 0
    stage_split: float = 0.5
    window_batch_size: int = 0
    window_jitter: bool = True
    pixel_interaction: bool = True
    stage2_mode: str = "overlap"
    window_weights: str = "uniform"
    min_stage1_steps: int = 0
    global_guidance: float = 0.0


@dataclass(frozen=True)
class Setting:
    """How one CutDiffusionConfig field is offered: bounds or options, widget step, tooltip,
    and whether it is an expert setting (hidden under "advanced" where the frontend can)."""
    name: str
    tooltip: str
    bounds: tuple[float, float] | None = None
    step: float | None = None
    options: Sequence[str] | None = None
    advanced: bool = True
    when_absent: object = None   # the value for prompts saved before the input existed (then optional)
    acts_on: tuple[str, ...] = ("patches", "native first, tiles", "native first, whole frame")   # RUN_KINDS it changes

    @property
    def default(self):
        return _DEFAULTS[self.name]


_DEFAULTS = {f.name: f.default for f in fields(CutDiffusionConfig)}

# Node input order: the layout and its own inputs first, then the paper's.
SETTINGS: tuple[Setting, ...] = (
    Setting("layout", options=LAYOUTS, advanced=False, when_absent="patches",
            tooltip="native first (default, beyond the paper): draw the image at the model's native area first "
                    "(the target's aspect, all steps), upscale it and re-run the last layout_denoise of the "
                    "steps at the target size, on the whole frame (target_pass, a hires fix) or in native-size "
                    "tiles held to the layout - one subject, kept in proportion; a target within the native area "
                    "is sampled directly. patches: the paper's CutDiffusion from noise at the target size (stage "
                    "1 on interleaved patches, stage 2 in windows). Only text-to-image runs (denoise 1) above "
                    "native size have a layout pass; greyed inputs are not used by the chosen layout."),
    Setting("target_pass", acts_on=("native first, tiles", "native first, whole frame"), options=TARGET_PASSES,
            when_absent="tiles", advanced=False,
            tooltip="How the target size is re-run after the layout is upscaled. whole frame: the whole image in "
                    "every model call, as ComfyUI's own hires fix (no patches or windows): memory and time grow "
                    "with the area (attention faster than that); if it runs out of memory, use tiles. tiles: "
                    "native-size shifted tiles held to the layout, CutDiffusion's stage-1 patches guiding them "
                    "(layout_guidance): memory of one native-size batch at any size."),
    Setting("layout_denoise", acts_on=("native first, tiles", "native first, whole frame"), bounds=(0.0, 1.0), step=0.05,
            when_absent=0.3, advanced=False,
            tooltip="The part of the schedule re-run at the target size after the native "
                    "layout is upscaled (like KSampler's denoise for a hires fix). Lower keeps the layout "
                    "closer, higher draws more detail at the target size. 0.5 measured best with the whole "
                    "frame on the detail proxy (0.3 with tiles on the first demo model)."),
    Setting("layout_guidance", acts_on=("native first, tiles",), bounds=(0.0, 1.0), step=0.05, when_absent=1.0,
            tooltip="How strongly the stage-1 patches (each a view of the whole image) hold "
                    "the layout while the target size is re-run: their coarse prediction replaces the tiles' "
                    "where a tile would start a new small subject; edges and texture stay the tiles' own. Fades "
                    "to 0 by the end; costs one patch set per step; applies where the patch grid is square. "
                    "0 = off."),
    Setting("patch_size", bounds=(0, 16384), step=LATENT_SCALE,
            tooltip="The model's native (training) size in px: the size of each stage-1 patch and stage-2 window. "
                    "0 = automatic from the model type (SDXL 1024, SD1.5 512)."),
    Setting("window_stride", acts_on=("patches",), bounds=(0, 16384), step=LATENT_SCALE,
            tooltip="Stage-2 window stride in px. Smaller = more overlap, smoother, slower (more windows). "
                    "0 = half the patch size (512 px on SDXL, as in the paper)."),
    Setting("stage_split", acts_on=("patches", "native first, tiles"), bounds=(0.0, 1.0), step=0.01,
            tooltip="patches layout: where stage 1 (global structure, few patches) hands over to stage 2 (detail, "
                    "windows), as a noise level in ComfyUI's percent convention, so it means the same for every "
                    "scheduler. 0.5 = the paper's 25/25 of 50 SDXL steps. 0 = plain MultiDiffusion; 1 = stage 1 "
                    "only. Raise it if subjects repeat. native first: its target pass starts after the split (at "
                    "about 1 - layout_denoise), so the split changes nothing there unless raised past that; the "
                    "run lists it as ignored where it did nothing."),
    Setting("window_batch_size", acts_on=("patches", "native first, tiles"), bounds=(0, 256),
            tooltip=f"Stage-2 windows per model call. Lower it if you run out of memory. 0 = as many as fit in "
                    f"free memory (at most {MAX_AUTO_WINDOW_BATCH})."),
    Setting("window_jitter", acts_on=("patches",),
            tooltip="Move the stage-2 windows by a small random offset at every step, so window borders never "
                    "stay in one place (the paper's default)."),
    Setting("pixel_interaction", acts_on=("patches", "native first, tiles"),
            tooltip="Shuffle pixels between the stage-1 patches before every model call, so all patches agree "
                    "on one layout. Off only for the paper's ablation (repeated subjects)."),
    Setting("stage2_mode", acts_on=("patches",), options=STAGE2_MODES,
            tooltip="overlap: the paper's overlapping MultiDiffusion windows. shifted: windows that tile the "
                    "image without overlap, moved by a random offset every step so seams never stay in one "
                    "place - about as many model calls per step as stage-1 patches (faster). Native first's target "
                    "pass always runs shifted tiles."),
    Setting("window_weights", acts_on=("patches",), options=WINDOW_WEIGHTS,
            tooltip="How overlapping stage-2 windows are blended. uniform: plain average (MultiDiffusion). "
                    "feathered: weights fade towards window borders, a smooth cross-fade (use it if you see "
                    "seams)."),
    Setting("min_stage1_steps", acts_on=("patches", "native first, tiles"), bounds=(0, 10000),
            tooltip="Force at least this many stage-1 steps. Image-to-image with a low denoise starts below the "
                    "stage split and then runs stage 2 only (detail refinement, the input's layout kept); raise "
                    "this to let stage 1 rework the global structure too."),
    Setting("global_guidance", acts_on=("patches",), bounds=(0.0, 1.0), step=0.05,
            tooltip="Beyond the paper, off (0) by default. Stage 2 also runs the stage-1 patches and mixes their "
                    "whole-image prediction into the windows', with this weight at the split fading to 0 at the "
                    "end. Use it if subjects still repeat or small copies appear around a large one (1 = "
                    "strongest); costs one patch set per stage-2 step. For layout patches and img2img; native first "
                    "has layout_guidance."),
)

# The settings' order in workflows saved before `layout` and its own inputs came first (pack versions up
# to 2026-12-02): the web extension re-reads such widget values by name.
ORDER_SAVED_BEFORE_LAYOUT_FIRST = ("patch_size", "window_stride", "stage_split", "window_batch_size", "window_jitter",
                                   "pixel_interaction", "stage2_mode", "window_weights", "min_stage1_steps",
                                   "global_guidance", "layout", "layout_denoise", "layout_guidance", "target_pass")


# What a run at the target size ran: the paper's layout (also what native first runs for img2img,
# masks and schedule segments), native first with its target pass in tiles or on the whole frame,
# or plain sampling of a target within the native area.
RUN_KINDS = ("patches", "native first, tiles", "native first, whole frame")
OVERLAP_ONLY = ("window_stride", "window_jitter", "window_weights")   # shifted tiles have no stride or blend


def run_kind(config: CutDiffusionConfig, layout_pass: bool) -> str:
    """The RUN_KINDS entry of a run with `config` that has (or has not) a native-first layout pass."""
    return f"native first, {config.target_pass}" if layout_pass else "patches"


def inactive_settings(ran: str, plan: Plan | None) -> list[str]:
    """The settings that changed nothing in a run of kind `ran` (RUN_KINDS, or "direct": a target within
    the native area, sampled plainly), with `plan` its plan at the target size (None without one)."""
    if ran == "direct":
        return [s.name for s in SETTINGS if s.name not in ("layout", "patch_size")]
    out = []
    for setting in SETTINGS:
        inert = ran not in setting.acts_on
        if plan is not None:
            inert |= setting.name in OVERLAP_ONLY and plan.layout.mode == "shifted"
            inert |= setting.name == "stage_split" and ran != "patches" and plan.stage1_steps == 0
            inert |= setting.name == "pixel_interaction" and not (plan.stage1_steps or plan.guided)
        if inert:
            out.append(setting.name)
    return out


def ignored_settings(config: CutDiffusionConfig, ran: str, plan: Plan | None) -> list[str]:
    """`name = value` of every setting the user changed from its default that this run did not use."""
    return [f"{name} = {getattr(config, name)}" for name in inactive_settings(ran, plan)
            if getattr(config, name) != _DEFAULTS[name]]


def acts_on_note(setting: Setting) -> str:
    """The tooltip's last sentence: which runs the setting changes."""
    if set(setting.acts_on) == set(RUN_KINDS):
        return ""
    kinds = {"patches": "the 'patches' layout", "native first, tiles": "native first's tiles",
             "native first, whole frame": "native first's whole frame"}
    if set(setting.acts_on) == {"native first, tiles", "native first, whole frame"}:
        return " Acts on the 'native first' layout only."
    return f" Acts on {' and '.join(kinds[k] for k in setting.acts_on)} only."


def settings_of_layout(layout: str) -> tuple[Setting, ...]:
    """The settings (other than `layout`) that act on some run of `layout`: what the node shows
    under that layout where its frontend has a dynamic combo."""
    kinds = [kind for kind in RUN_KINDS if kind.startswith(layout)]
    return tuple(s for s in SETTINGS[1:] if set(s.acts_on) & set(kinds))


def _checked_type(setting: Setting, value):
    """A value from a prompt that no ComfyUI schema checked (the top-level settings of a prompt saved
    before the dynamic combo), converted as ComfyUI converts widget values, or ValueError naming the
    field. Ranges and options are validate_config's."""
    if setting.options is not None:
        if isinstance(value, str):
            return value
        expected = f"one of {list(setting.options)}"
    elif isinstance(setting.default, bool):
        if isinstance(value, bool):
            return value
        expected = "true or false"
    else:
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                return float(value) if isinstance(setting.default, float) else int(float(value))
            except ValueError:
                pass
        expected = "a number"
    raise ValueError(f"CutDiffusion: {setting.name} = {value!r} must be {expected}")


def config_from_layout_choice(choice: dict, top_level: dict) -> CutDiffusionConfig:
    """The config of a node whose `layout` is a dynamic combo: `choice` = {"layout": option, and the
    inputs shown under it}. `top_level`: the settings of a prompt saved before the combo, which named
    them beside `layout`; they apply as they did (`choice` wins where both name one). An absent
    setting shown under the option predates its input (`when_absent`, as config_from_inputs); one not
    shown under it takes its default."""
    by_name = {s.name: s for s in SETTINGS}
    values = {name: _checked_type(by_name[name], value) for name, value in top_level.items() if name in by_name}
    values.update((name, value) for name, value in choice.items() if value is not None)   # None: not in the prompt
    shown = {s.name for s in settings_of_layout(values["layout"])} if values.get("layout") in LAYOUTS else set()
    absent = {s.name: s.when_absent for s in SETTINGS
              if s.when_absent is not None and s.name not in values and (s.name in shown or s.name == "layout")}
    return CutDiffusionConfig(**values, **absent)


def config_from_inputs(inputs: dict) -> CutDiffusionConfig:
    """The config of a node's inputs; an input a saved prompt predates takes its `when_absent`
    value (an old workflow keeps what it ran: the paper's layout), any other absent one its default."""
    absent = {s.name: s.when_absent for s in SETTINGS if s.when_absent is not None and s.name not in inputs}
    return CutDiffusionConfig(**inputs, **absent)


def validate_config(config: CutDiffusionConfig) -> None:
    """Raise ValueError naming the field and its allowed range, before any work starts."""
    for setting in SETTINGS:
        value = getattr(config, setting.name)
        if setting.bounds is not None and not setting.bounds[0] <= value <= setting.bounds[1]:
            lo, hi = setting.bounds
            raise ValueError(f"CutDiffusion: {setting.name} = {value} is outside the allowed range [{lo}, {hi}]")
        if setting.options is not None and value not in setting.options:
            raise ValueError(f"CutDiffusion: {setting.name} = {value!r} must be one of {list(setting.options)}")
    for name in ("patch_size", "window_stride"):
        value = getattr(config, name)
        if value % LATENT_SCALE:
            raise ValueError(f"CutDiffusion: {name} = {value} must be a multiple of {LATENT_SCALE} px (0 = automatic)")
    if 0 < config.patch_size < 64:
        raise ValueError(f"CutDiffusion: patch_size = {config.patch_size} must be 0 (automatic) or in [64, 16384] px")
    if config.patch_size:
        validate_stride(config.window_stride, config.patch_size)


def validate_stride(stride: int, patch_px: int) -> None:
    if stride > patch_px:
        raise ValueError(f"CutDiffusion: window_stride = {stride} must be in [8, {patch_px}] px (the patch size), "
                         f"or 0 for half the patch size")


def validate_for_latent(config: CutDiffusionConfig, latent_px: int) -> None:
    """Sizes a model with `latent_px` px per latent pixel can cut exactly (Flux.2: multiples of 16)."""
    for name in ("patch_size", "window_stride"):
        value = getattr(config, name)
        if value % latent_px:
            raise ValueError(f"CutDiffusion: {name} = {value} must be a multiple of {latent_px} px for this model "
                             f"({latent_px} px per latent pixel; 0 = automatic)")


def window_stride_latent(config: CutDiffusionConfig, native_px: int, latent_px: int = LATENT_SCALE) -> int:
    """The stage-2 window stride in latent px (window_stride 0 = half the native size)."""
    return max(1, (config.window_stride or native_px // 2) // latent_px)


def plan_target_pass(config: CutDiffusionConfig, **plan_args) -> Plan:
    """The plan of native first's target pass: shifted tiles (overlapping windows average their
    textures smooth) held to the layout by the patches' block means at `layout_guidance` (on square
    patch grids: plan.make_plan)."""
    return _plan(config, mode="shifted", guidance="layout" if config.layout_guidance > 0 else "none", **plan_args)


def plan_run(config: CutDiffusionConfig, **plan_args) -> Plan:
    """The plan of a run of the paper's layout with `config` (global_guidance beyond the paper)."""
    return _plan(config, mode=config.stage2_mode, guidance="global" if config.global_guidance > 0 else "none",
                 **plan_args)


def guidance_strength(config: CutDiffusionConfig, plan: Plan) -> float:
    """The weight at the first stage-2 step of the guidance `plan` runs."""
    return {"global": config.global_guidance, "layout": config.layout_guidance}.get(plan.guidance, 0.0)


def _plan(config: CutDiffusionConfig, *, mode: str, guidance: str, height: int, width: int, native_px: int,
          sigmas: Sequence[float], split_sigma: float, latent_px: int = LATENT_SCALE) -> Plan:
    """The plan of one run on a `height x width` latent (latent px, each `latent_px` px), for a
    model trained at `native_px` whose noise level at `config.stage_split` is `split_sigma`."""
    native, stride = native_px // latent_px, window_stride_latent(config, native_px, latent_px)
    return make_plan(height=height, width=width, native=(native, native), stride=(stride, stride), sigmas=sigmas,
                     split_sigma=split_sigma, stage_split=config.stage_split, jitter=config.window_jitter,
                     mode=mode, min_stage1_steps=config.min_stage1_steps, guidance=guidance, latent_px=latent_px)
