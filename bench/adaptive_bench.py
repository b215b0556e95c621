"""AdaptiveDiffusion benchmark: model evaluations saved vs. difference from the unskipped run.

    .venv/bin/python bench/adaptive_bench.py [--seeds N] [--no-write] [--output FILE]
    .venv/bin/python bench/adaptive_bench.py --demo       # the trained demo model, decoded images

For 30 and 50 steps of euler and dpmpp_2m (normal scheduler) and ddim (with
its own ddim_uniform spacing: ComfyUI's ddim sampler is Euler's update, so on
the normal scheduler it would repeat the euler rows), cfg 5, on the test
suite's tiny random SDXL-shaped UNet (256 px, 32x32 latent), every
threshold is compared with the same seed's run on the unpatched model:
evaluation reduction, latent RMSE (absolute and relative to the reference's
std) and PSNR of the latents mapped to [0, 1] by the reference run's min/max
(a stand-in for decoded images: there is no VAE here). Prints a table and
writes it into BENCHMARKS.md under "## AdaptiveDiffusion" (other sections
are left alone).

A random tiny model is not SDXL: its trajectories are rougher, so it skips
less at a given threshold and the figures say nothing about image quality.
`--demo` runs the same grid on the trained demo model at its native 128 px over
the repetition bench's 8 prompts, and compares decoded images: PSNR against the
unskipped run's images and the fraction with exactly one object (section
"## AdaptiveDiffusion on the demo model").
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import re
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

from cutdiff_dev import comfy_runtime as rt  # noqa: E402  (must start ComfyUI before anything imports comfy)

rt.bootstrap()

import torch  # noqa: E402

import comfy.sample  # noqa: E402
import comfy.utils  # noqa: E402

from cutdiff_core.adaptive import AdaptiveConfig  # noqa: E402
from cutdiff_core.adaptive_patch import AdaptiveReport, apply_adaptive  # noqa: E402

STEPS = (30, 50)
SAMPLERS = (("euler", "normal"), ("dpmpp_2m", "normal"), ("ddim", "ddim_uniform"))
THRESHOLDS = (0.005, 0.01, 0.02, 0.05)   # the three, plus one where the tiny model skips more
PX, CFG = 256, 5.0
SECTION = "## AdaptiveDiffusion"
DEMO_SECTION = "## AdaptiveDiffusion on the demo model"


def psnr01(got: torch.Tensor, ref: torch.Tensor) -> float:
    lo, hi = float(ref.min()), float(ref.max())
    a = ((got - lo) / (hi - lo)).clamp(0, 1)
    b = ((ref - lo) / (hi - lo)).clamp(0, 1)
    mse = float((a - b).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def run(model, seed, steps, sampler, scheduler, conds):
    return rt.ksampler(model, seed, steps, CFG, sampler, scheduler, *conds, rt.empty_latent(PX, PX))


def measure(seeds: int) -> list[dict]:
    model, conds = rt.tiny_sdxl(seed=0), rt.tiny_conds(seed=3)
    rows = []
    for steps in STEPS:
        for sampler, scheduler in SAMPLERS:
            refs = [run(model, seed, steps, sampler, scheduler, conds) for seed in range(seeds)]
            for threshold in THRESHOLDS:
                report, evals, totals, rmse, rel, psnr = AdaptiveReport(), [], [], [], [], []
                patched = apply_adaptive(model, AdaptiveConfig(threshold=threshold), report)
                for seed, ref in enumerate(refs):
                    got = run(patched, seed, steps, sampler, scheduler, conds)
                    evals.append(report.evaluated)
                    totals.append(report.evaluated + report.skipped)   # ddim_uniform may add a step
                    err = float((got - ref).pow(2).mean().sqrt())
                    rmse.append(err)
                    rel.append(err / float(ref.std()))
                    psnr.append(psnr01(got, ref))
                n = len(refs)
                rows.append({"steps": steps, "sampler": f"{sampler} / {scheduler}", "threshold": threshold,
                             "evals": sum(evals) / n, "total": sum(totals) / n, "reduction": sum(totals) / sum(evals),
                             "rmse": sum(rmse) / n, "rel": sum(rel) / n, "psnr": sum(psnr) / n,
                             "ref_std": sum(float(ref.std()) for ref in refs) / n})
                print(format_row(rows[-1]), flush=True)
    return rows


HEADER = ("| steps | sampler / scheduler | threshold | evaluations | reduction | latent RMSE | RMSE / ref std "
          "| PSNR [0,1] (dB) |\n|---:|---|---:|---:|---:|---:|---:|---:|")


def _run_cells(r: dict) -> str:
    """The cells both tables start with: the run and what it saved."""
    return (f"| {r['steps']} | {r['sampler']} | {r['threshold']} | {r['evals']:.1f} / {r['total']:.0f} "
            f"| {r['reduction']:.2f}x |")


def _psnr(r: dict) -> str:
    return "inf" if math.isinf(r["psnr"]) else f"{r['psnr']:.1f}"


def _goal_verdict(rows: list[dict]) -> str:
    """The issue's goal: >= 2x fewer evaluations at >= 30 dB with 50 euler steps."""
    euler50 = [r for r in rows if r["steps"] == 50 and r["sampler"].startswith("euler ")]
    goal = [r for r in euler50 if r["reduction"] >= 2 and r["psnr"] >= 30]
    return (f"reached at threshold {goal[0]['threshold']} ({goal[0]['reduction']:.2f}x, {goal[0]['psnr']:.1f} dB)"
            if goal else "not reached on this model at these thresholds")


def format_row(r: dict) -> str:
    return f"{_run_cells(r)} {r['rmse']:.4f} | {r['rel']:.4f} | {_psnr(r)} |"


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores (shared; 1-min load average {load:.1f} at the end), "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), CPU float32")


def section(rows: list[dict], seeds: int, seconds: float) -> str:
    verdict = _goal_verdict(rows)
    lines = [
        SECTION, "",
        f"`bench/adaptive_bench.py`, {machine()}; {seeds} seed(s) per row, averaged; {seconds:.0f} s in all.",
        f"Model: the tests' tiny random SDXL-shaped UNet (17M parameters, untrained), {PX} px (32x32 latent), "
        f"cfg {CFG}, AdaptiveDiffusion defaults otherwise (max_skip_steps 4, warmup_steps 4). ddim runs on "
        "ddim_uniform: ComfyUI's ddim sampler is Euler's update, so on the normal scheduler it repeats euler.",
        "Each row compares with the same seed's run on the unpatched model. *evaluations*: model evaluations "
        "(each one cond+uncond batch) made / of the unpatched run; *PSNR*: latents mapped to [0, 1] by the "
        "unpatched run's min/max, a stand-in for decoded images (no VAE in this setup). No wall-clock column: on "
        "this shared, loaded machine timings were noise (ratios off by 5x); on CPU the model evaluations are the cost.",
        "",
        HEADER,
        *(format_row(r) for r in rows),
        "",
        f"Issue goal (>= 2x fewer evaluations at PSNR >= 30 dB, 50 euler steps): {verdict}.",
        "",
        "Caveat: a random untrained UNet is not SDXL. Its latent trajectory need not resemble a trained "
        "model's, so these skip rates need not carry over, and the PSNR of latents says nothing about how "
        "decoded images look. Its outputs are also far from image latents (std of the "
        f"unpatched results {min(r['ref_std'] for r in rows):.0f}-{max(r['ref_std'] for r in rows):.0f}, "
        "with outliers that stretch the min/max mapping), which inflates the PSNR; the relative RMSE is the "
        "fairer figure. The paper's figures (2-5x on SD1.5/SDXL) need a trained model: the next section runs the "
        "same grid on the demo model.",
        "",
    ]
    return "\n".join(lines)


def measure_demo(per_prompt: int) -> list[dict]:
    """The grid on the demo model: decoded images of every prompt against the unskipped run's."""
    from cutdiff_demo import metrics as demo_metrics
    from cutdiff_demo import model as dm
    from repetition_bench import PROMPTS

    demo = dm.load_demo_model()
    latent = torch.zeros(per_prompt, 4, dm.NATIVE_SIZE_PX // 8, dm.NATIVE_SIZE_PX // 8)

    def run_prompt(model, steps, sampler, scheduler, k):
        """Decoded images of prompt k (seed k for the batch)."""
        with torch.inference_mode():
            samples = comfy.sample.sample(model, comfy.sample.prepare_noise(latent, k), steps, CFG, sampler, scheduler,
                                          demo.text.conditioning(PROMPTS[k]), demo.text.conditioning(""), latent,
                                          disable_pbar=True, seed=k)
        return demo.decoder(samples)

    def one_object(images):
        return sum(demo_metrics.count_objects(im) == 1 for im in images.numpy()) / len(images)

    rows = []
    for steps in STEPS:
        for sampler, scheduler in SAMPLERS:
            ref = torch.cat([run_prompt(demo.model, steps, sampler, scheduler, k) for k in range(len(PROMPTS))])
            for threshold in THRESHOLDS:
                report = AdaptiveReport()
                patched = apply_adaptive(demo.model, AdaptiveConfig(threshold=threshold), report)
                got, evals, total = [], 0, 0
                for k in range(len(PROMPTS)):   # the report counts the last run: read it after each
                    got.append(run_prompt(patched, steps, sampler, scheduler, k))
                    evals += report.evaluated
                    total += report.evaluated + report.skipped
                got = torch.cat(got)
                mse = float((got - ref).pow(2).mean())
                rows.append({"steps": steps, "sampler": f"{sampler} / {scheduler}", "threshold": threshold,
                             "evals": evals / len(PROMPTS), "total": total / len(PROMPTS), "reduction": total / evals,
                             "psnr": math.inf if mse == 0 else 10 * math.log10(1 / mse),
                             "one": one_object(got), "one_ref": one_object(ref), "images": len(got),
                             "px": dm.NATIVE_SIZE_PX})
                print(format_demo_row(rows[-1]), flush=True)
    return rows


DEMO_HEADER = ("| steps | sampler / scheduler | threshold | evaluations | reduction | image PSNR (dB) "
               "| one object: skipped / unskipped |\n|---:|---|---:|---:|---:|---:|---:|")


def format_demo_row(r: dict) -> str:
    return f"{_run_cells(r)} {_psnr(r)} | {r['one']:.0%} / {r['one_ref']:.0%} |"


def demo_section(rows: list[dict], seconds: float) -> str:
    return "\n".join([
        DEMO_SECTION, "",
        f"`bench/adaptive_bench.py --demo`, {machine()}; {seconds:.0f} s in all.",
        f"Model: the trained demo model at its native {rows[0]['px']} px, {rows[0]['images']} images per row (the "
        f"repetition bench's 8 prompts, one seeded batch each), cfg {CFG}, AdaptiveDiffusion defaults "
        "otherwise. Each row compares with the same seeds on the unpatched model: *evaluations* per run made / "
        "of the unpatched run; *image PSNR*: decoded RGB images in [0, 1]; *one object*: the fraction of images "
        "with exactly one object (`cutdiff_demo.metrics`), skipped run against unskipped run.",
        "", DEMO_HEADER, *(format_demo_row(r) for r in rows), "",
        f"Issue goal (>= 2x fewer evaluations at PSNR >= 30 dB, 50 euler steps), on decoded images: "
        f"{_goal_verdict(rows)}.", "",
    ])


def write_section(path: Path, text: str, section_heading: str = SECTION) -> None:
    """Replace (or append) only this benchmark's section of BENCHMARKS.md."""
    old = path.read_text() if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(rf"^{re.escape(section_heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text + "\n", old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    path.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=1, help="seeds per row (default 1)")
    parser.add_argument("--no-write", action="store_true", help="only print the table")
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md", help="the file to update")
    parser.add_argument("--demo", action="store_true", help="the trained demo model, decoded images")
    parser.add_argument("--per-prompt", type=int, default=4, help="--demo: images per prompt (8 prompts)")
    args = parser.parse_args()
    comfy.utils.set_progress_bar_enabled(False)
    start = time.perf_counter()
    if args.demo:
        print(DEMO_HEADER)
        text = demo_section(measure_demo(args.per_prompt), time.perf_counter() - start)
        print("\n" + text)
        if not args.no_write:
            write_section(args.output, text, DEMO_SECTION)
        return
    print(HEADER)
    rows = measure(args.seeds)
    text = section(rows, args.seeds, time.perf_counter() - start)
    print("\n" + text)
    if not args.no_write:
        write_section(args.output, text)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
