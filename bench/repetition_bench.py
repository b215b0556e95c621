"""Repetition benchmark on the demo model: does the subject appear once?

    .venv/bin/python bench/repetition_bench.py            # 64 seeds per cell, writes BENCHMARKS.md

The demo model was trained on images holding exactly one object, so at sizes
above native every extra object is repetition (MultiDiffusion's failure) and a
missing or washed-out one is lost structure. Per method and target size it
reports the fraction of images with exactly one object and with none, the mean
object count, the object's contrast against the background relative to
native-size samples of the same prompts, the object's aspect (1 = not stretched),
a seam score (gradient energy on the stage-2 window borders over elsewhere;
1 = no seam) and the background's texture (high-frequency energy away from the
objects) relative to native-size samples of the same prompts (1 = as native). Then a stage_split sweep at 4x area, the beyond-the-paper stage-2
variants, and a few-step run.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
from cutdiff_dev import comfy_runtime  # noqa: E402  (starts ComfyUI on the CPU before anything imports comfy)

comfy_runtime.bootstrap()
import numpy as np  # noqa: E402
import torch  # noqa: E402

import comfy.sample  # noqa: E402
from cutdiff_demo import metrics as metrics  # noqa: E402
from cutdiff_demo import model as dm  # noqa: E402
from cutdiff_core.cutdiffusion_patch import CutDiffusionConfig, RunReport, apply_cutdiffusion  # noqa: E402
from report import machine_description, write_section  # noqa: E402

HEADING = "## Repetition on the demo model (issues 4 and 6)"
PROMPTS = ("red circle on sand", "blue square on grass", "yellow triangle on slate", "white ring on night",
           "purple cross on sand", "red square on slate", "blue triangle on night", "yellow ring on grass")
NATIVE = dm.NATIVE_SIZE_PX
TARGETS = {"4x area": (2 * NATIVE, 2 * NATIVE), "9x area": (3 * NATIVE, 3 * NATIVE),
           "16x area": (4 * NATIVE, 4 * NATIVE), "1:2": (NATIVE, 2 * NATIVE), "2:1": (2 * NATIVE, NATIVE),
           "3:1": (3 * NATIVE, NATIVE)}   # (width, height) px; 16x = 4096 px on SDXL
METHODS = {
    "direct inference": None,
    "MultiDiffusion (stage_split 0)": CutDiffusionConfig(layout="patches", stage_split=0.0),
    "CutDiffusion": CutDiffusionConfig(layout="patches"),
    "CutDiffusion, no pixel interaction": CutDiffusionConfig(layout="patches", pixel_interaction=False),
}
# Beyond the paper, at every target: stage 2 guided by the stage-1 patches (what the diagnosis pointed to).
GUIDED = {"CutDiffusion, global_guidance 1": CutDiffusionConfig(layout="patches", global_guidance=1.0)}
VARIANTS = {
    "CutDiffusion, shifted stage 2": CutDiffusionConfig(layout="patches", stage2_mode="shifted"),
    "CutDiffusion, feathered windows": CutDiffusionConfig(layout="patches", window_weights="feathered"),
    "MultiDiffusion, feathered windows": CutDiffusionConfig(layout="patches", stage_split=0.0, window_weights="feathered"),
}
SPLITS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


@dataclass
class Cell:
    counts: list[int] = field(default_factory=list)
    contrasts: list[float] = field(default_factory=list)
    seams: list[float] = field(default_factory=list)
    aspects: list[float] = field(default_factory=list)
    textures: dict[str, list[float]] = field(default_factory=dict)   # by prompt: compared with native per prompt
    stage1_steps: int | None = None
    seconds: float = 0.0


def sample(demo, config, width, height, prompt, seed, batch, args, report=None):
    """Decoded images [B, H, W, 3] of one prompt; `config` None = the unpatched model."""
    model = demo.model if config is None else apply_cutdiffusion(demo.model, config, report)
    latent = torch.zeros(batch, 4, height // 8, width // 8)
    with torch.inference_mode():
        out = comfy.sample.sample(model, comfy.sample.prepare_noise(latent, seed), args.steps, args.cfg, args.sampler,
                                  args.scheduler, demo.text.conditioning(prompt), demo.text.conditioning(""), latent,
                                  disable_pbar=True, seed=seed)
        return demo.decoder(out).numpy()


def window_borders(report: RunReport | None, layout_of) -> tuple[list[int], list[int]]:
    """Pixel rows/cols where stage-2 windows start or end (nominal, before jitter)."""
    layout = (report.plan if report is not None and report.plan is not None else layout_of).layout
    rows = sorted({b * 8 for y in layout.ys for b in (y, y + layout.win_h)})
    cols = sorted({b * 8 for x in layout.xs for b in (x, x + layout.win_w)})
    return rows, cols


def run_cell(demo, config, width, height, args, seams_from) -> Cell:
    cell, start = Cell(), time.perf_counter()
    per_prompt = max(1, args.seeds // len(PROMPTS))
    for k, prompt in enumerate(PROMPTS):
        report = RunReport() if config is not None else None
        images = sample(demo, config, width, height, prompt, args.seed + k, per_prompt, args, report)
        if report is not None and report.plan is not None:
            cell.stage1_steps = report.plan.stage1_steps
        measure_images(cell, images, prompt, *window_borders(report, seams_from))
    cell.seconds = time.perf_counter() - start
    return cell


def measure_images(cell, images, prompt: str, rows: list[int], cols: list[int]) -> None:
    """Add each decoded image's object count, contrast, aspect, background texture and (where
    there are inner window borders) seam score to the cell."""
    for image in images:
        cell.counts.append(metrics.count_objects(image))
        cell.contrasts.append(metrics.object_contrast(image))
        cell.aspects.append(metrics.object_aspect(image))
        cell.textures.setdefault(prompt, []).append(metrics.background_texture(image))
        if rows[1:-1] or cols[1:-1]:
            cell.seams.append(metrics.seam_score(image, rows, cols))


def reference_plan(demo, width, height, args):
    """A CutDiffusion plan for the size, so every method's seam score looks at the same lines."""
    report = RunReport()
    sample(demo, CutDiffusionConfig(layout="patches"), width, height, PROMPTS[0], args.seed, 1, args, report)
    return report.plan


def row(name: str, cell: Cell, native: Cell, extra: str = "") -> str:
    s = metrics.summarise_counts(cell.counts)
    contrast = np.mean(cell.contrasts) / np.mean(native.contrasts)
    texture = metrics.relative_to_reference(cell.textures, native.textures)
    seam = f"{np.mean(cell.seams):.2f}" if cell.seams else "—"
    t1 = "—" if cell.stage1_steps is None else str(cell.stage1_steps)
    return (f"| {name}{extra} | {s.one:.0%} | {s.none:.0%} | {s.mean:.2f} | {contrast:.2f} | "
            f"{np.nanmedian(cell.aspects):.2f} | {seam} | {texture:.2f} | {t1} | {cell.seconds:.0f} s |")


HEADER = ("| method | one object | none | mean count | contrast vs native | aspect | seam score | texture vs native | "
          "stage-1 steps | time |\n|---|---|---|---|---|---|---|---|---|---|")


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """The images' settings, shared with bench/repetition_diagnosis.py so both look at the same images."""
    parser.add_argument("--seeds", type=int, default=64, help="images per cell (spread over 8 prompts)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--scheduler", default="normal")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--no-write", action="store_true", help="print only, do not touch BENCHMARKS.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_sampling_arguments(parser)
    parser.add_argument("--few-step", type=int, default=4, help="steps of the few-step (Turbo-style) rows")
    args = parser.parse_args()
    torch.manual_seed(0)
    demo = dm.load_demo_model()
    start = time.perf_counter()

    native = run_cell(demo, None, NATIVE, NATIVE, args, reference_plan(demo, 2 * NATIVE, 2 * NATIVE, args))
    lines = [f"`bench/repetition_bench.py` on {machine_description()}.",
             f"Demo model (native {NATIVE} px), {len(native.counts)} images per cell over {len(PROMPTS)} prompts, "
             f"{args.steps} {args.sampler}/{args.scheduler} steps, cfg {args.cfg}. Native size: "
             f"{metrics.summarise_counts(native.counts)}, median aspect {np.nanmedian(native.aspects):.2f}.",
             "Aspect: the largest object's height over width from its second moments, median over the cell (all "
             "five shapes score 1 at any rotation; 2 = drawn twice as tall as wide).", ""]
    for target, (width, height) in TARGETS.items():
        plan = reference_plan(demo, width, height, args)
        lines += [f"### {target} ({width}x{height} px)", "", HEADER]
        for name, config in {**METHODS, **GUIDED, **(VARIANTS if target == "4x area" else {})}.items():
            lines.append(row(name, run_cell(demo, config, width, height, args, plan), native))
            print(lines[-1], flush=True)
        lines.append("")

    width, height = TARGETS["4x area"]
    plan = reference_plan(demo, width, height, args)
    lines += ["### stage_split sweep, CutDiffusion at 4x area", "", HEADER]
    for split in SPLITS:
        cell = run_cell(demo, CutDiffusionConfig(layout="patches", stage_split=split), width, height, args, plan)
        lines.append(row(f"stage_split {split}", cell, native))
        print(lines[-1], flush=True)
    lines.append("")

    few = argparse.Namespace(**{**vars(args), "steps": args.few_step, "cfg": 1.0, "scheduler": "sgm_uniform"})
    lines += [f"### Few-step (Turbo-style settings: {args.few_step} steps, cfg 1, sgm_uniform) at 4x area", "",
              "The demo model is not distilled for few steps, so absolute figures are low; the question is only "
              "whether CutDiffusion still beats the baselines.", "", HEADER]
    for name, config in METHODS.items():
        lines.append(row(name, run_cell(demo, config, width, height, few, plan), native))
        print(lines[-1], flush=True)
    lines += ["", f"Total {time.perf_counter() - start:.0f} s. The comparison picture is "
              "[docs/demo_comparison.png](docs/demo_comparison.png) (made by `scripts/demo.sh`)."]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section(HEADING, body)


if __name__ == "__main__":
    main()
