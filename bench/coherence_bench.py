"""Coherence at every size (issue 17): candidates for a quality mode against the baselines.

    .venv/bin/python bench/coherence_bench.py --seeds 32                      # every candidate, exploration
    .venv/bin/python bench/coherence_bench.py --seeds 64 --only "NAME;NAME"   # finalists

On the demo model, at 4x, 9x and 16x area and at 1:2, 2:1 and 3:1, per candidate: the one-object rate
and the other metrics of bench/repetition_bench.py (with background texture vs native), the model
evaluations it made per image, and its SDXL-equivalent evaluation count at 2048^2, 4096^2 and
4096x2048 (50 steps, native 1024 px) from the same plan arithmetic the pack runs. Every run adds its
cells to bench/results/coherence_cells.json (a cell with more images replaces one with fewer) and
rewrites the BENCHMARKS.md section from all stored cells, so exploration at 32 images and finalists
at 64 land in one table, each row saying its image count.

The rule (issue 17 item 4): highest mean one-object rate over the six shapes among candidates whose
SDXL count at 2048^2 and 4096^2 is at most MultiDiffusion's, with contrast >= 0.9 and seam <= 1.1
at every shape.
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
from cutdiff_dev import comfy_runtime  # noqa: E402  (starts ComfyUI on the CPU before anything imports comfy)

comfy_runtime.bootstrap()
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402
import demofusion  # noqa: E402
from cutdiff_core.cutdiffusion_patch import CutDiffusionConfig, RunReport, apply_cutdiffusion  # noqa: E402
from cutdiff_core.config import plan_target_pass  # noqa: E402
from cutdiff_core.layout import latent_upscale, native_first  # noqa: E402
from cutdiff_core.stages import anchor_to_layout  # noqa: E402
from cutdiff_core.plan import make_plan  # noqa: E402
from cutdiff_demo import metrics  # noqa: E402
from cutdiff_demo import model as dm  # noqa: E402
from repetition_bench import (NATIVE, PROMPTS, TARGETS, add_sampling_arguments, measure_images, reference_plan,
                              window_borders)  # noqa: E402
from report import machine_description, write_section  # noqa: E402

HEADING = "## Coherence at every size (issue 17)"
CELLS = REPO / "bench" / "results" / "coherence_cells.json"
SDXL_NATIVE_PX, SDXL_STEPS = 1024, 50
SDXL_SIZES = {"2048²": (2048, 2048), "4096²": (4096, 4096), "4096×2048": (4096, 2048)}   # (width, height) px


@dataclass(frozen=True)
class Candidate:
    """One way to make a target-size image.

    config None: direct inference. renoise: native-first (sample at native area with the target's
    aspect, upscale the latent bicubically, then the pack with this denoise). guided_share: global
    guidance only over that share of stage 2 (two sampler runs: the guided first part of the schedule,
    then the rest with guidance 0). demofusion: the DemoFusion baseline (bench/demofusion.py).
    """
    name: str
    config: CutDiffusionConfig | None = None
    renoise: float | None = None
    guided_share: float | None = None
    demofusion: bool = False
    layout: str = "area"              # native-first pass: "area" (native area) or "short side" (short side native)
    refine: float | None = None       # then a MultiDiffusion pass at this denoise (smooths the guidance's edges)
    square_twin: str | None = None    # a candidate that is the same run on square targets (its cells are used)
    anchor: bool = False              # native-first: the target pass's coarse structure held to the layout's


PAPER = CutDiffusionConfig(layout="patches")
GG = CutDiffusionConfig(layout="patches", global_guidance=1.0)
GG_SHIFTED = CutDiffusionConfig(layout="patches", global_guidance=1.0, stage2_mode="shifted")
CANDIDATES = [
    Candidate("direct inference"),
    Candidate("MultiDiffusion", CutDiffusionConfig(layout="patches", stage_split=0.0)),
    Candidate("CutDiffusion, paper defaults", PAPER),
    Candidate("DemoFusion", demofusion=True),
    Candidate("native-first, denoise 0.5", PAPER, renoise=0.5),
    Candidate("native-first, denoise 0.7", PAPER, renoise=0.7),
    Candidate("gg 1", GG),
    Candidate("gg 1, shifted", GG_SHIFTED),
    Candidate("gg 1, shifted, split 0.7", replace(GG_SHIFTED, stage_split=0.7)),
    Candidate("gg 1, shifted, over half of stage 2", GG_SHIFTED, guided_share=0.5),
    Candidate("native-first 0.5 + gg 1, shifted", GG_SHIFTED, renoise=0.5),
    Candidate("native-first 0.7 + gg 1, shifted", GG_SHIFTED, renoise=0.7),
    Candidate("native-first, short side native, denoise 0.5", PAPER, renoise=0.5, layout="short side",
              square_twin="native-first, denoise 0.5"),
    Candidate("native-first, short side native, denoise 0.3", PAPER, renoise=0.3, layout="short side"),
    Candidate("native-first, short side native, 0.5 + gg 1, shifted, over half", GG_SHIFTED, renoise=0.5,
              guided_share=0.5, layout="short side"),
    Candidate("gg 1, shifted + MultiDiffusion refine 0.3", GG_SHIFTED, refine=0.3),
    Candidate("native-first 0.3, shifted", replace(PAPER, stage2_mode="shifted"), renoise=0.3, layout="short side"),
    Candidate("native-first 0.3, shifted, native area", replace(PAPER, stage2_mode="shifted"), renoise=0.3,
              square_twin="native-first 0.3, shifted"),
    Candidate("native-first 0.3, shifted, native area + layout anchor", replace(PAPER, stage2_mode="shifted"),
              renoise=0.3, anchor=True),
    # Native first in tiles at 0.3, the pack's default from issue 17 to issue 23 (names kept: the stored cells').
    Candidate("the pack: native first, layout_guidance 0",
              CutDiffusionConfig(target_pass="tiles", layout_denoise=0.3, layout_guidance=0.0)),
    Candidate("the pack's default: native first, layout_guidance 1",
              CutDiffusionConfig(target_pass="tiles", layout_denoise=0.3)),
]
MULTIDIFFUSION = CutDiffusionConfig(layout="patches", stage_split=0.0)


# -- the images ---------------------------------------------------------------------------------

def layout_size(width: int, height: int, native: int, rule: str = "area") -> tuple[int, int]:
    """The native-first pass's size in px, in whole latent px: "area", the native area at the target's
    aspect (3:1 on a 128 px model: 224x72); "short side", the short side at native size, never above
    the target (3:1: the target itself). A square target gets the native size either way."""
    if rule == "area":
        scale = math.sqrt(native * native / (width * height))
    else:
        scale = min(1.0, native / min(width, height))
    return max(8, round(width * scale / 8) * 8), max(8, round(height * scale / 8) * 8)


def first_pass_cost(width: int, height: int, native: int, rule: str) -> int:
    """Native-size evaluations one step of the native-first pass is worth: its area in native areas,
    rounded (the native-area rule's rounding to whole latent px lands within 1% of one)."""
    lw, lh = layout_size(width, height, native, rule)
    return max(1, round(lw * lh / (native * native)))


def renoise_steps(steps: int, denoise: float) -> int:
    """Steps of the target pass, so its schedule has the same density as a full run of `steps`."""
    return max(1, round(steps * denoise))


def _sample(model, noise, latent, steps, prompt, args, seed, denoise=1.0):
    return comfy.sample.sample(model, noise, steps, args.cfg, args.sampler, args.scheduler,
                               demo_text.conditioning(prompt), demo_text.conditioning(""), latent,
                               denoise=denoise, disable_pbar=True, seed=seed)


def _sample_segments(model_first, model_rest, noise, latent, prompt, args, seed, split_step: int, sigmas):
    """One schedule in two sampler runs: steps [0, split_step) on model_first, the rest on model_rest."""
    sigmas = torch.tensor(sigmas)
    sampler = comfy.samplers.sampler_object(args.sampler)
    pos, neg = demo_text.conditioning(prompt), demo_text.conditioning("")
    x = comfy.sample.sample_custom(model_first, noise, args.cfg, sampler, sigmas[:split_step + 1], pos, neg, latent,
                                   disable_pbar=True, seed=seed)
    return comfy.sample.sample_custom(model_rest, torch.zeros_like(x), args.cfg, sampler, sigmas[split_step:], pos,
                                      neg, x, disable_pbar=True, seed=seed)


def sample(demo, cand: Candidate, width, height, prompt, seed, batch, args) -> tuple[torch.Tensor, int, RunReport | None]:
    """Latents [B, 4, h, w], the model evaluations per image and CFG half, the pack's last report."""
    if cand.refine is not None:
        latent, evals, _ = sample(demo, replace(cand, refine=None), width, height, prompt, seed, batch, args)
        report = RunReport()
        steps = renoise_steps(args.steps, cand.refine)
        out = _sample(apply_cutdiffusion(demo.model, MULTIDIFFUSION, report), comfy.sample.prepare_noise(latent, seed + 2),
                      latent, steps, prompt, args, seed + 2, cand.refine)
        return out, evals + (report.stage1_evaluations + report.stage2_evaluations) // batch, report
    if cand.demofusion:
        latents, evals = demofusion.sample(demo, prompt, width, height, seed, batch, args.steps, args.cfg,
                                           args.sampler, args.scheduler)
        return latents, evals, None
    latent = torch.zeros(batch, 4, height // 8, width // 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    if cand.config is None:
        return _sample(demo.model, noise, latent, args.steps, prompt, args, seed), args.steps, None
    report, evals = RunReport(), 0
    if cand.renoise is not None:
        model = apply_cutdiffusion(demo.model, cand.config, report)
        lw, lh = layout_size(width, height, NATIVE, cand.layout)
        small = torch.zeros(batch, 4, lh // 8, lw // 8)
        small = _sample(demo.model, comfy.sample.prepare_noise(small, seed), small, args.steps, prompt, args, seed)
        evals += args.steps * first_pass_cost(width, height, NATIVE, cand.layout)
        latent = F.interpolate(small, size=latent.shape[-2:], mode="bicubic")
        steps = renoise_steps(args.steps, cand.renoise)
        if cand.anchor:
            model = anchored(model, small)
        if cand.guided_share is None:
            out = _sample(model, comfy.sample.prepare_noise(latent, seed + 1), latent, steps, prompt, args, seed + 1,
                          cand.renoise)
        else:
            ms = demo.model.get_model_object("model_sampling")
            sigmas = ksampler_sigmas(ms, args.scheduler, steps, cand.renoise)
            first = RunReport()
            out = _sample_segments(apply_cutdiffusion(demo.model, cand.config, first),
                                   apply_cutdiffusion(demo.model, replace(cand.config, global_guidance=0.0), report),
                                   comfy.sample.prepare_noise(latent, seed + 1), latent, prompt, args, seed + 1,
                                   guided_steps(cand, width, height, NATIVE, sigmas, ms), sigmas)
            evals += (first.stage1_evaluations + first.stage2_evaluations) // batch
    elif cand.guided_share is not None:
        ms = demo.model.get_model_object("model_sampling")
        sigmas = ksampler_sigmas(ms, args.scheduler, args.steps)
        first = RunReport()
        out = _sample_segments(apply_cutdiffusion(demo.model, cand.config, first),
                               apply_cutdiffusion(demo.model, replace(cand.config, global_guidance=0.0), report),
                               noise, latent, prompt, args, seed, guided_steps(cand, width, height, NATIVE, sigmas, ms),
                               sigmas)
        evals += (first.stage1_evaluations + first.stage2_evaluations) // batch
    else:
        out = _sample(apply_cutdiffusion(demo.model, cand.config, report), noise, latent, args.steps, prompt, args, seed)
        if report.layout is not None:   # the pack's own native-first layout pass
            evals += report.layout.layout_evaluations
    evals += (report.stage1_evaluations + report.stage2_evaluations) // batch
    return out, evals, report


def anchored(model, layout: torch.Tensor):
    """A clone whose denoised predictions take the layout's structure at half its size (the pack's
    layout anchor, cutdiff_core.stages.anchor_to_layout, here on ComfyUI's post-CFG hook)."""
    height, width = max(1, layout.shape[-2] // 2), max(1, layout.shape[-1] // 2)

    def post_cfg(args):
        denoised = args["denoised"]
        return anchor_to_layout([denoised], [True], latent_upscale(layout.to(denoised), *denoised.shape[-2:]),
                                height, width)[0]

    clone = model.clone()
    clone.set_model_sampler_post_cfg_function(post_cfg)
    return clone


def guided_steps(cand: Candidate, width: int, height: int, native: int, sigmas, model_sampling) -> int:
    """Steps of the guided first segment: stage 1 and `guided_share` of stage 2."""
    t1 = plan_for(cand.config, width, height, native, sigmas, model_sampling).stage1_steps
    return t1 + round(cand.guided_share * (len(sigmas) - 1 - t1))


# -- SDXL-equivalent cost from the plan ---------------------------------------------------------

def plan_for(config: CutDiffusionConfig, width_px: int, height_px: int, native_px: int, sigmas, model_sampling):
    """The pack's plan for a run (stride half a window, as the config's default)."""
    native, stride = native_px // 8, native_px // 16
    split_sigma = float(model_sampling.percent_to_sigma(config.stage_split))
    settings = dict(sigmas=sigmas, split_sigma=split_sigma, stage_split=config.stage_split, jitter=config.window_jitter,
                    mode=config.stage2_mode, min_stage1_steps=config.min_stage1_steps)
    if "guidance" in inspect.signature(make_plan).parameters:
        settings["guidance"] = "global" if config.global_guidance > 0 else "none"
    else:   # the core before issue 24
        settings["global_guidance"] = config.global_guidance > 0
    # Issue 14 makes make_plan keyword-only; the bench also runs on a snapshot of the core from before.
    if "native" in inspect.signature(make_plan).parameters:
        return make_plan(height=height_px // 8, width=width_px // 8, native=(native, native), stride=(stride, stride),
                         **settings)
    return make_plan(height_px // 8, width_px // 8, native, native, stride, stride, **settings)


def ksampler_sigmas(model_sampling, scheduler: str, steps: int, denoise: float = 1.0) -> list[float]:
    """The sigmas KSampler runs for `steps` at `denoise` (KSampler.set_steps)."""
    total = steps if denoise > 0.9999 else int(steps / denoise)
    sigmas = comfy.samplers.calculate_sigmas(model_sampling, scheduler, total)
    return [float(s) for s in sigmas[-(steps + 1):]]


def sdxl_evaluations(cand: Candidate, width_px: int, height_px: int, model_sampling) -> int | None:
    """Window evaluations per image and CFG half on SDXL at 50 steps (None for direct inference: one
    full-size evaluation a step, not comparable window for window)."""
    if cand.demofusion:
        return demofusion.evaluations(width_px, height_px, SDXL_NATIVE_PX, SDXL_STEPS)
    if cand.config is None:
        return None
    if cand.refine is not None:
        sigmas = ksampler_sigmas(model_sampling, "normal", renoise_steps(SDXL_STEPS, cand.refine), cand.refine)
        return (sdxl_evaluations(replace(cand, refine=None), width_px, height_px, model_sampling)
                + _evals(MULTIDIFFUSION, width_px, height_px, sigmas, model_sampling))
    full = ksampler_sigmas(model_sampling, "normal", SDXL_STEPS)
    if cand.config.layout == "native first" and cand.renoise is None:
        return pack_native_first_evaluations(cand.config, width_px, height_px, full, model_sampling)
    first = 0
    if cand.renoise is not None:
        full = ksampler_sigmas(model_sampling, "normal", renoise_steps(SDXL_STEPS, cand.renoise), cand.renoise)
        first = SDXL_STEPS * first_pass_cost(width_px, height_px, SDXL_NATIVE_PX, cand.layout)
    if cand.guided_share is not None:
        k = guided_steps(cand, width_px, height_px, SDXL_NATIVE_PX, full, model_sampling)
        rest = replace(cand.config, global_guidance=0.0)
        return (first + _evals(cand.config, width_px, height_px, full[:k + 1], model_sampling)
                + _evals(rest, width_px, height_px, full[k:], model_sampling))
    return first + _evals(cand.config, width_px, height_px, full, model_sampling)


def pack_native_first_evaluations(config: CutDiffusionConfig, width_px: int, height_px: int, sigmas,
                                  model_sampling) -> int:
    """The pack's own native-first run on SDXL: its layout pass plus its target pass's plan."""
    native = SDXL_NATIVE_PX // 8
    first = native_first(height_px // 8, width_px // 8, native, len(sigmas) - 1, config.layout_denoise)
    if first.is_whole_run:
        return first.layout_evaluations
    split_sigma = float(model_sampling.percent_to_sigma(config.stage_split))
    plan = plan_target_pass(config, height=height_px // 8, width=width_px // 8, native_px=SDXL_NATIVE_PX,
                            sigmas=sigmas[first.refine_from:], split_sigma=split_sigma)
    return first.layout_evaluations + plan.model_evaluations(cfg_batches=1)


def _evals(config, width_px, height_px, sigmas, model_sampling) -> int:
    return plan_for(config, width_px, height_px, SDXL_NATIVE_PX, sigmas, model_sampling).model_evaluations(cfg_batches=1)


# -- cells --------------------------------------------------------------------------------------

@dataclass
class Cell:
    images: int = 0
    counts: list[int] = field(default_factory=list)
    contrasts: list[float] = field(default_factory=list)
    aspects: list[float] = field(default_factory=list)
    seams: list[float] = field(default_factory=list)
    textures: dict[str, list[float]] = field(default_factory=dict)
    evaluations: int = 0
    seconds: float = 0.0


def run_cell(demo, cand: Candidate, width, height, args, seam_lines) -> Cell:
    cell, start = Cell(), time.perf_counter()
    per_prompt = max(1, args.seeds // len(PROMPTS))
    rows, cols = seam_lines
    for k, prompt in enumerate(PROMPTS):
        with torch.inference_mode():
            latents, cell.evaluations, _ = sample(demo, cand, width, height, prompt, args.seed + k, per_prompt, args)
            images = demo.decoder(latents).numpy()
        measure_images(cell, images, prompt, rows, cols)
    cell.images = len(cell.counts)
    cell.seconds = time.perf_counter() - start
    return cell


def load_cells(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def store_cell(path: Path, cells: dict, key: str, cell: Cell) -> None:
    """Keep the cell with more images (a finalist run replaces the exploration's)."""
    if key not in cells or cells[key]["images"] <= cell.images:
        cells[key] = asdict(cell)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cells, indent=0, allow_nan=True))


# -- the section --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scores:
    one: float
    none: float
    mean: float
    contrast: float
    aspect: float
    seam: float
    texture: float
    images: int
    evaluations: int
    seconds: float


def cell_key(cand: Candidate, target: str, cells: dict) -> str:
    own = f"{cand.name}|{target}"
    width, height = TARGETS[target]
    return f"{cand.square_twin}|{target}" if own not in cells and cand.square_twin and width == height else own


def scores(cell: dict, native: dict) -> Scores:
    s = metrics.summarise_counts(cell["counts"])
    seam = float(np.mean(cell["seams"])) if cell["seams"] else float("nan")
    aspects = np.asarray(cell["aspects"], dtype=float)
    aspect = float(np.nanmedian(aspects)) if np.isfinite(aspects).any() else float("nan")
    return Scores(s.one, s.none, s.mean, float(np.mean(cell["contrasts"]) / np.mean(native["contrasts"])), aspect,
                  seam, metrics.relative_to_reference(cell["textures"], native["textures"]), cell["images"],
                  cell["evaluations"], cell["seconds"])


def passes_rule(per_shape: dict[str, Scores], costs: dict[str, int | None], md_costs: dict[str, int]) -> bool:
    """Issue 17 item 4's rule, on every shape and the 2048^2 / 4096^2 costs."""
    cheap = all(costs[s] is not None and costs[s] <= md_costs[s] for s in ("2048²", "4096²"))
    return cheap and all(sc.contrast >= 0.9 and sc.seam <= 1.1 for sc in per_shape.values())


def _f(value: float, fmt: str) -> str:
    return "—" if value is None or not np.isfinite(value) else format(value, fmt)


def render(cells: dict, args, commands: list[str], note: str = "") -> str:
    native = cells.get("native")
    ms = demo_model.get_model_object("model_sampling")
    md = next(c for c in CANDIDATES if c.name == "MultiDiffusion")
    md_costs = {k: sdxl_evaluations(md, w, h, ms) for k, (w, h) in SDXL_SIZES.items()}
    lines = [f"`bench/coherence_bench.py` on {machine_description()}.", "",
             "Commands: " + "; ".join(f"`{c}`" for c in commands) + ".", "", *([note, ""] if note else []),
             f"Demo model (native {NATIVE} px), {args.steps} {args.sampler}/{args.scheduler} steps, cfg {args.cfg}, "
             f"seeds from {args.seed}; each row says its image count (8 prompts; the CPU allowed 16 images per cell for "
             "the exploration, 8 for DemoFusion at 16x, 32 or 64 for finalists). Contrast and texture are relative to native-size samples of the "
             f"same prompts ({native['images']} images). Evaluations: model images per output image and CFG half on "
             "the demo model as counted in the run; SDXL: the same method's plan at 2048², 4096² and 4096×2048 px, "
             f"{SDXL_STEPS} steps, native 1024 px, stride 512 px (window evaluations; DemoFusion's and the "
             "native-first pass's views smaller than native count as one, a native-first pass larger than native as its "
             "area in native areas). gg: global_guidance. Native-first: a first pass of all steps at the native area "
             "with the target's aspect (\"short side native\": its short side at native size, never above the "
             "target), its latent upscaled bicubically, then the pack's run with that denoise (KSampler semantics, "
             "steps scaled by the denoise so the schedule keeps its density). \"Over half (of stage 2)\": guidance "
             "decays to 0 over the first half of stage 2's steps (a second sampler run without guidance does the "
             "rest). \"MultiDiffusion refine 0.3\": the result re-noised and run again at denoise 0.3 with "
             "stage_split 0. \"shifted\": stage 2 in shifted tiles (stage2_mode shifted). \"Layout anchor\": every "
             "denoised prediction of the target pass takes the upscaled layout's structure at half the layout's "
             "size (here on ComfyUI's post-CFG hook). \"The pack\": the CutDiffusion patch's own native first "
             "(layout pass at the native area, shifted tiles with the layout anchor, layout_guidance: the "
             "stage-1 patches' block means guiding where the patch grid is square); a row of bench compositions "
             "and the pack's run of the same idea differ in their random draws (noise of the tiles' shifts). "
             "Notes: [docs/coherence_quality_mode.md](docs/coherence_quality_mode.md).", "",
             "| candidate | shape | images | one object | none | mean count | contrast | aspect | seam | texture | "
             "evaluations | time |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    summary = []
    for cand in CANDIDATES:
        keys = {t: cell_key(cand, t, cells) for t in TARGETS}
        per_shape = {t: scores(cells[k], native) for t, k in keys.items() if k in cells}
        for target, sc in per_shape.items():
            lines.append(f"| {cand.name} | {target} | {sc.images} | {sc.one:.0%} | {sc.none:.0%} | {sc.mean:.2f} | "
                         f"{sc.contrast:.2f} | {sc.aspect:.2f} | {_f(sc.seam, '.2f')} | {_f(sc.texture, '.2f')} | "
                         f"{sc.evaluations} | {sc.seconds:.0f} s |")
        costs = {k: sdxl_evaluations(cand, w, h, ms) for k, (w, h) in SDXL_SIZES.items()}
        summary.append((cand, per_shape, costs))
    lines += ["", "Per candidate: one-object rate per shape, mean over the six shapes (only where all six ran), "
              "the worst contrast and seam, texture range, the non-square aspects (1:2 / 2:1 / 3:1) and SDXL-equivalent "
              f"evaluations (MultiDiffusion: {md_costs['2048²']} / {md_costs['4096²']} / {md_costs['4096×2048']}). "
              "Rule: issue 17 item 4.", "",
              "| candidate | " + " | ".join(TARGETS) + " | mean | min contrast | max seam | texture | aspect 1:2 / 2:1 / 3:1 "
              "| SDXL 2048² | SDXL 4096² | SDXL 4096×2048 | rule |", "|---" * (len(TARGETS) + 10) + "|"]
    winners = []
    for cand, per_shape, costs in summary:
        rates = [f"{per_shape[t].one:.0%}" if t in per_shape else "" for t in TARGETS]
        complete = len(per_shape) == len(TARGETS)
        mean = float(np.mean([sc.one for sc in per_shape.values()])) if complete else float("nan")
        worst_contrast = min((sc.contrast for sc in per_shape.values()), default=float("nan"))
        worst_seam = max((sc.seam for sc in per_shape.values() if np.isfinite(sc.seam)), default=float("nan"))
        textures = [sc.texture for sc in per_shape.values() if np.isfinite(sc.texture)]
        texture = f"{min(textures):.2f}–{max(textures):.2f}" if textures else "—"
        aspects = " / ".join(_f(per_shape[t].aspect, ".2f") if t in per_shape else "" for t in ("1:2", "2:1", "3:1"))
        ok = complete and passes_rule(per_shape, costs, md_costs)
        if ok:
            winners.append((mean, cand.name))
        verdict = "passes" if ok else ("—" if not complete else "fails")
        cost = " | ".join("full-size" if costs[k] is None else str(costs[k]) for k in SDXL_SIZES)
        lines.append(f"| {cand.name} | " + " | ".join(rates) + f" | {_f(mean, '.0%')} | {_f(worst_contrast, '.2f')} | "
                     f"{_f(worst_seam, '.2f')} | {texture} | {aspects} | {cost} | {verdict} |")
    if winners:
        best = max(winners)
        lines += ["", f"Winner by the rule: **{best[1]}** (mean one-object rate {best[0]:.0%}). Issue 17's targets "
                  "for it:", ""]
        by_name = {cand.name: (per_shape, costs) for cand, per_shape, costs in summary}
        lines += [f"- {text}: {'met' if met else 'missed'} ({detail})"
                  for text, met, detail in target_checks(by_name[best[1]], by_name["direct inference"][0],
                                                         by_name["DemoFusion"])]
    return "\n".join(lines)


def target_checks(candidate, direct: dict[str, Scores], demofusion) -> list[tuple[str, bool, str]]:
    """Issue 17's targets for one candidate with all six shapes: (target, met, the figures)."""
    shapes, costs = candidate
    df_shapes, df_costs = demofusion
    square = {"4x area": 0.9, "9x area": 0.75, "16x area": 0.6}
    wide = ("1:2", "2:1", "3:1")
    out = [(f"one object at {t} >= {bar:.0%}", shapes[t].one >= bar, f"{shapes[t].one:.0%}") for t, bar in square.items()]
    out += [(f"one object at {t} >= 90%, aspect in 0.8-1.25", shapes[t].one >= 0.9 and 0.8 <= shapes[t].aspect <= 1.25,
             f"{shapes[t].one:.0%}, aspect {shapes[t].aspect:.2f}") for t in wide]
    out.append(("at least 0.2 above direct inference at 4x area and above",
                all(shapes[t].one >= direct[t].one + 0.2 for t in square if t in direct),
                ", ".join(f"{t} {shapes[t].one:.0%} vs {direct[t].one:.0%}" for t in square if t in direct)))
    out.append(("no object <= 5%", all(sc.none <= 0.05 for sc in shapes.values()),
                f"worst {max(sc.none for sc in shapes.values()):.0%}"))
    textures = [sc.texture for sc in shapes.values()]
    out.append(("background texture within 25% of native", all(0.75 <= t <= 1.25 for t in textures),
                f"{min(textures):.2f}-{max(textures):.2f}"))
    half = all(costs[k] is not None and 2 * costs[k] <= df_costs[k] for k in SDXL_SIZES)
    common = [t for t in shapes if t in df_shapes]
    at_least = all(shapes[t].one >= df_shapes[t].one for t in common)
    out.append(("at least DemoFusion's rate at no more than half its evaluations", half and at_least,
                ", ".join(f"{t} {shapes[t].one:.0%} vs {df_shapes[t].one:.0%}" for t in common)
                + "; SDXL " + ", ".join(f"{costs[k]} vs {df_costs[k]}" for k in SDXL_SIZES)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_sampling_arguments(parser)
    parser.add_argument("--only", default="", help="semicolon-separated candidate names (default: all)")
    parser.add_argument("--targets", default="", help="semicolon-separated target names (default: all six)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (leave a core to others)")
    parser.add_argument("--cells", type=Path, default=CELLS, help="where the cells are stored")
    parser.add_argument("--render-only", action="store_true", help="rewrite the section from stored cells")
    parser.add_argument("--command", action="append", default=[], help="command lines to cite in the section")
    parser.add_argument("--note", default="", help="a paragraph to put under the commands (how the runs were made)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    global demo_text, demo_model
    demo = dm.load_demo_model()
    demo_text, demo_model = demo.text, demo.model
    cells = load_cells(args.cells)
    if not args.render_only:
        only = {n.strip() for n in args.only.split(";") if n.strip()}
        targets = [t.strip() for t in args.targets.split(";") if t.strip()] or list(TARGETS)
        native_args = argparse.Namespace(**{**vars(args), "seeds": 64})
        if "native" not in cells:
            lines = reference_plan(demo, 2 * NATIVE, 2 * NATIVE, args)
            store_cell(args.cells, cells, "native", run_cell(demo, Candidate("native"), NATIVE, NATIVE, native_args,
                                                 window_borders(None, lines)))
        for target in targets:
            width, height = TARGETS[target]
            lines = window_borders(None, reference_plan(demo, width, height, args))
            for cand in CANDIDATES:
                if (only and cand.name not in only) or (cand.square_twin and width == height):
                    continue
                cell = run_cell(demo, cand, width, height, args, lines)
                store_cell(args.cells, cells, f"{cand.name}|{target}", cell)
                sc = scores(asdict(cell), cells["native"])
                print(f"{cand.name} | {target} | {sc}", flush=True)
    body = render(cells, args, args.command or ["(see bench/coherence_bench.py's docstring)"], args.note)
    print(body)
    if not args.no_write:
        write_section(HEADING, body)


demo_text = demo_model = None

if __name__ == "__main__":
    main()
