"""Why CutDiffusion misses on the demo model (issue 4): where do the extra objects come from?

    .venv/bin/python bench/repetition_diagnosis.py        # 64 images per row, writes its section of docs/benchmark_history.md

Same prompts, seeds and sampler settings as bench/repetition_bench.py, at 4x area (256x256 px),
CutDiffusion with its defaults and with stage_split 0.8. Everything is measured from the outside:
the denoised (x0) prediction that the sampler callback reports at the last stage-1 step, the
final latent, and the plan in the RunReport.

1. Objects at the split vs at the end: does stage 1 already give one object, does stage 2 add more?
   (Direct inference's x0 at the same step is the control: how readable an x0 that early is. "Stage 1
   alone", stage_split 1.0, is the same run up to the split, so per image it shows what stage 1 would
   have ended with had stage 2 not taken over.)
2. Patch disagreement at the split: the x0 latent cut into its strided views (the stage-1 patches'
   pixel positions, cutdiff_core.patches.unfold_patches), each decoded as a native-size image.
3. Object size against the 128 px stage-2 window, at 4x and at native size.
4. The noise level at the split against SDXL's: the signal-to-noise ratio there depends on the
   latents' scale, and SDXL's latents are scaled to unit standard deviation (LDM's rescaling).
5. Do the windows know they are crops? Native-size samples with the size conditioning a stage-2
   window gets (original = target = 256 px, crop = its offset) against the training data's crops
   of 256 px canvases.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
from cutdiff_dev import comfy_runtime  # noqa: E402  (starts ComfyUI on the CPU before anything imports comfy)

comfy_runtime.bootstrap()
import numpy as np  # noqa: E402
import torch  # noqa: E402
from einops import rearrange  # noqa: E402

import comfy.sample  # noqa: E402
from cutdiff_demo import metrics as metrics  # noqa: E402
from cutdiff_demo import model as dm  # noqa: E402
from cutdiff_core.cutdiffusion_patch import CutDiffusionConfig, RunReport, apply_cutdiffusion  # noqa: E402
from cutdiff_core.patches import unfold_patches  # noqa: E402
from report import machine_description, write_section  # noqa: E402
from repetition_bench import NATIVE, PROMPTS, add_sampling_arguments  # noqa: E402
from cutdiff_demo.data import render_batch  # noqa: E402  (the demo model's training data)

HEADING = "## Why CutDiffusion misses on the demo model (issue 4)"
SIZE = 2 * NATIVE   # 4x area
ROWS = {"CutDiffusion default (stage_split 0.5)": CutDiffusionConfig(layout="patches"),
        "CutDiffusion, stage_split 0.8": CutDiffusionConfig(layout="patches", stage_split=0.8)}
STAGE1_ONLY = CutDiffusionConfig(layout="patches", stage_split=1.0)


@dataclass
class Batch:
    """One prompt's run: final latent, x0 per step, the plan (None for direct inference)."""
    final: torch.Tensor
    x0: dict[int, torch.Tensor]
    plan: object = None


@dataclass
class Run:
    batches: list[Batch] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def plan(self):
        return self.batches[0].plan


def conditioning(demo, prompt: str, size_cond: dict | None):
    """The prompt's CONDITIONING, with SDXL size/crop values (px) where given (as CLIPTextEncodeSDXL sets them)."""
    cond = demo.text.conditioning(prompt)
    if size_cond:
        cond[0][1].update(size_cond)
    return cond


def sample(demo, config, size, prompt, seed, batch, args, size_cond=None) -> Batch:
    """As repetition_bench.sample, keeping every step's x0 from the sampler callback."""
    report = RunReport() if config is not None else None
    model = demo.model if config is None else apply_cutdiffusion(demo.model, config, report)
    latent = torch.zeros(batch, 4, size // 8, size // 8)
    x0: dict[int, torch.Tensor] = {}

    def callback(step, denoised, x, total_steps):   # fires once per step, after that step's evaluation
        x0[step] = denoised[..., :size // 8, :size // 8].clone()

    with torch.inference_mode():
        out = comfy.sample.sample(model, comfy.sample.prepare_noise(latent, seed), args.steps, args.cfg, args.sampler,
                                  args.scheduler, conditioning(demo, prompt, size_cond), conditioning(demo, "", size_cond),
                                  latent, callback=callback, disable_pbar=True, seed=seed)
    assert sorted(x0) == list(range(args.steps)), sorted(x0)
    plan = report.plan if report is not None else None
    if plan is not None:   # callback(i) follows step i's evaluation: steps 0 .. T1-1 were stage 1
        assert report.stage1_evaluations == plan.stage1_steps * plan.grid.n * batch, report.summary()
    return Batch(out, x0, plan)


def run(demo, config, size, args, size_cond=None) -> Run:
    result, start = Run(), time.perf_counter()
    per_prompt = max(1, args.seeds // len(PROMPTS))
    for k, prompt in enumerate(PROMPTS):
        result.batches.append(sample(demo, config, size, prompt, args.seed + k, per_prompt, args, size_cond))
    result.seconds = time.perf_counter() - start
    return result


def decode(demo, latent: torch.Tensor) -> np.ndarray:
    return demo.decoder(latent).numpy()


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return ys.min(), xs.min(), ys.max() + 1, xs.max() + 1


def extent(mask: np.ndarray) -> int:
    """The larger side of the bounding box, px."""
    y0, x0, y1, x1 = bbox(mask)
    return max(y1 - y0, x1 - x0)


def diameter(mask: np.ndarray) -> float:
    """Equivalent diameter of the area, px."""
    return float(np.sqrt(4 * mask.sum() / np.pi))


def centroid(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0)


def rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(a))))


def count_summary(images, native_contrast: float) -> dict:
    counts = np.array([metrics.count_objects(im) for im in images])
    contrast = np.mean([metrics.object_contrast(im) for im in images]) / native_contrast
    return {"counts": counts, "one": (counts == 1).mean(), "none": (counts == 0).mean(), "mean": counts.mean(),
            "contrast": contrast}


def fmt_counts(s: dict) -> str:
    return f"{s['one']:.0%} | {s['none']:.0%} | {s['mean']:.2f} | {s['contrast']:.2f}"


# -- 1. split vs end ---------------------------------------------------------------------------

def latents(result: Run, step: int | None) -> torch.Tensor:
    """All images' x0 at `step`, or their final latents (None)."""
    return torch.cat([b.final if step is None else b.x0[step] for b in result.batches])


def changes(end: dict, alone: dict) -> str:
    """Per image, CutDiffusion's final count against stage 1 alone's (same state at the split)."""
    more, fewer = (end["counts"] > alone["counts"]).mean(), (end["counts"] < alone["counts"]).mean()
    one = alone["counts"] == 1
    return f"{more:.0%} | {fewer:.0%} | {(end['counts'][one] == 1).mean():.0%} of {one.sum()}"


# -- 2. patch disagreement at the split -------------------------------------------------------

def views(latent: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """[B, C, H, W] -> [n, B, C, H/rows, W/cols]: view k = (i, j) is latent[..., i::rows, j::cols]."""
    return rearrange(unfold_patches(latent, rows, cols), "(n b) c h w -> n b c h w", n=rows * cols)


def disagreement(demo, result: Run, step: int | None, rows: int = 2, cols: int = 2) -> dict:
    """Per image: the decoded views' object counts, the spread of their largest objects' centroids
    (in px of the full image: view px x rows + the view's offset), and the RMS difference between
    views over the RMS of a view's deviation from its own background. `step` None = final latent."""
    offsets = [np.array([8 * i, 8 * j]) for i in range(rows) for j in range(cols)]
    scale = np.array([rows, cols])
    per_view_counts, spreads, ratios, unrelated, extents = [], [], [], [], []
    for b in result.batches:
        imgs = np.stack([decode(demo, v) for v in views(b.final if step is None else b.x0[step], rows, cols)])
        n, batch = imgs.shape[:2]   # [n views, B, h, w, 3]
        pairs = list(itertools.combinations(range(n), 2))
        for m in range(batch):
            masks = [metrics.object_masks(imgs[k, m]) for k in range(n)]
            per_view_counts.append([len(ms) for ms in masks])
            extents += [extent(ms[0]) for ms in masks if ms]
            cents = [centroid(ms[0]) * scale + off for ms, off in zip(masks, offsets) if ms]
            if len(cents) >= 2:
                spreads.append(max(np.linalg.norm(a - c) for a, c in itertools.combinations(cents, 2)))
            signal = np.mean([rms(imgs[k, m] - metrics.background_colour(imgs[k, m])) for k in range(n)])
            ratios.append(np.mean([rms(imgs[a, m] - imgs[c, m]) for a, c in pairs]) / signal)
            if batch > 1:   # the same view pairs, one from the next seed of the same prompt
                unrelated.append(np.mean([rms(imgs[a, m] - imgs[c, (m + 1) % batch]) for a, c in pairs]) / signal)
    counts = np.array(per_view_counts)
    return {"view_one": (counts == 1).mean(), "all_one": (counts == 1).all(axis=1).mean(),
            "spread": np.median(spreads), "spread_far": (np.array(spreads) > 32).mean(),
            "ratio": np.median(ratios), "unrelated": np.median(unrelated) if unrelated else float("nan"),
            "extent": np.median(extents), "n": n}


# -- 3. object size against the stage-2 window ------------------------------------------------

def window_boxes(plan) -> list[tuple[int, int, int, int]]:
    lay = plan.layout
    return [(8 * y, 8 * x, 8 * (y + lay.win_h), 8 * (x + lay.win_w)) for y in lay.ys for x in lay.xs]


def inside(mask: np.ndarray, box) -> bool:
    y0, x0, y1, x1 = bbox(mask)
    return box[0] <= y0 and box[1] <= x0 and y1 <= box[2] and x1 <= box[3]


def sizes(demo, result: Run, boxes) -> dict:
    """The largest object's extent and diameter and whether it fits in one (nominal, unjittered)
    window; the extra objects' extent, whether each lies whole inside one window, and whether such
    a window also covers part of the largest object."""
    largest, largest_d, extra, fits, extra_inside, with_main = [], [], [], [], [], []
    for image in decode(demo, latents(result, None)):
        masks = metrics.object_masks(image)
        if not masks:
            continue
        largest.append(extent(masks[0]))
        largest_d.append(diameter(masks[0]))
        fits.append(any(inside(masks[0], box) for box in boxes))
        for m in masks[1:]:
            extra.append(extent(m))
            holding = [box for box in boxes if inside(m, box)]
            extra_inside.append(bool(holding))
            if holding:
                with_main.append(any(masks[0][y0:y1, x0:x1].any() for y0, x0, y1, x1 in holding))
    med = lambda v: f"{np.median(v):.0f}" if v else "—"   # noqa: E731
    frac = lambda v: f"{np.mean(v):.0%} of {len(v)}" if v else "—"   # noqa: E731
    return {"largest": np.median(largest), "extra": np.median(extra) if extra else float("nan"),
            "fits": np.mean(fits), "extra_inside": np.mean(extra_inside) if extra else float("nan"),
            "with_main": np.mean(with_main) if with_main else float("nan"),
            "row": f"{med(largest)} | {med(largest_d)} | {frac(fits)} | {med(extra)} | {frac(extra_inside)} | "
                   f"{frac(with_main)}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_sampling_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    demo = dm.load_demo_model()
    start = time.perf_counter()

    native = run(demo, None, NATIVE, args)
    native_contrast = float(np.mean([metrics.object_contrast(im) for im in decode(demo, latents(native, None))]))
    direct = run(demo, None, SIZE, args)
    alone = run(demo, STAGE1_ONLY, SIZE, args)
    cut = {name: run(demo, config, SIZE, args) for name, config in ROWS.items()}
    t1 = {name: r.plan.stage1_steps for name, r in cut.items()}
    for name, r in cut.items():   # same seeds, same permutations: stage 1 alone is the same run up to the split
        same = all(torch.allclose(a.x0[t1[name] - 1], c.x0[t1[name] - 1]) for a, c in zip(r.batches, alone.batches))
        assert same, f"{name}: x0 at the split differs from stage 1 alone's"
    summary = lambda r, step: count_summary(decode(demo, latents(r, step)), native_contrast)   # noqa: E731

    # 1. Objects in the x0 at the last stage-1 step and at the end, against stage 1 alone from the same state.
    lines1 = ["| run | x0 of step | x0: one | none | mean | contrast | end: one | none | mean | contrast | "
              "end has more objects than stage 1 alone | fewer | stage 1 alone ends with one: so does the run |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    results1 = {}
    alone_end = summary(alone, None)
    for name, r, step in [*((n, r, t1[n] - 1) for n, r in cut.items()),
                          ("stage 1 alone (stage_split 1.0)", alone, min(t1.values()) - 1),
                          *(("direct inference (control)", direct, t1[n] - 1) for n in cut)]:
        split, end = summary(r, step), summary(r, None)
        results1[(name, step)] = (split, end)
        versus = changes(end, alone_end) if r is not alone and r is not direct else "— | — | —"
        lines1.append(f"| {name} | {step + 1} of {args.steps} | {fmt_counts(split)} | {fmt_counts(end)} | {versus} |")
        print(lines1[-1], flush=True)

    # 2. Patch disagreement: views of the x0 at the split; references: the same views of direct
    # inference's x0 at the same step (one coherent image, as noisy) and of the final latents.
    lines2 = ["| run | latent | views with one object | images whose views all have one | centroid spread, "
              "median (px of 256) | spread > 32 px | view-vs-view RMS / object RMS | same, views of another seed | "
              "largest object's extent in a view (px of 128) |", "|---|---|---|---|---|---|---|---|---|"]
    results2 = {}
    for name, r in cut.items():
        step = t1[name] - 1
        for label, rr, st in ((f"{name}", r, step), ("direct inference (reference)", direct, step),
                              (f"{name}", r, None)):
            d = disagreement(demo, rr, st)
            results2[(label, st)] = d
            what = f"x0 at step {st + 1}" if st is not None else "final"
            lines2.append(f"| {label} | {what} | {d['view_one']:.0%} | {d['all_one']:.0%} | {d['spread']:.0f} | "
                          f"{d['spread_far']:.0%} | {d['ratio']:.2f} | {d['unrelated']:.2f} | {d['extent']:.0f} |")
            print(lines2[-1], flush=True)

    # 3. Object size against the stage-2 window.
    boxes = window_boxes(cut[next(iter(ROWS))].plan)
    win_px = boxes[0][2] - boxes[0][0]
    lines3 = [f"| final images | largest object: extent (px, median) | equivalent diameter | fits in one {win_px} px "
              f"window | extra objects: extent | lie whole inside one window | that window also covers part of the "
              f"largest |", "|---|---|---|---|---|---|---|"]
    results3 = {}
    for name, r, bx in [(f"native ({NATIVE} px; the window is the image)", native, [(0, 0, NATIVE, NATIVE)]),
                        (f"direct inference, {SIZE} px", direct, boxes),
                        (f"stage 1 alone, {SIZE} px", alone, boxes),
                        *((f"{n}, {SIZE} px", r, boxes) for n, r in cut.items())]:
        results3[name] = sizes(demo, r, bx)
        lines3.append(f"| {name} | {results3[name]['row']} |")
        print(lines3[-1], flush=True)

    # 4. The noise level at the split, against SDXL's unit-variance latents.
    data_latents = torch.cat([render_batch(torch.Generator().manual_seed(5 + k), 500)[0] for k in range(4)])
    data_std, sample_std = float(data_latents.std()), float(latents(native, None).std())
    model_sampling = demo.model.get_model_object("model_sampling")
    lines4 = ["| stage_split | sigma there | SNR, demo data (std² / sigma²) | SNR, unit-variance latents (SDXL) |",
              "|---|---|---|---|"]
    for split in (0.5, 0.6, 0.7, 0.8):
        sigma = float(model_sampling.percent_to_sigma(split))
        lines4.append(f"| {split} | {sigma:.2f} | {data_std ** 2 / sigma ** 2:.2f} | {1 / sigma ** 2:.2f} |")
    print("\n".join(lines4), flush=True)
    sdxl_sigma = float(model_sampling.percent_to_sigma(0.5))
    matched = min(np.linspace(0, 1, 201), key=lambda p: abs(float(model_sampling.percent_to_sigma(float(p)))
                                                           - data_std * sdxl_sigma))

    # 5. Do the windows know they are crops? Size conditioning of a 256 px image's windows at native size.
    lines5 = ["| images (128 px) | conditioning: original = target, crop (y, x) | one object | none | mean count | "
              "object area (px, mean) |", "|---|---|---|---|---|---|"]
    canvas_px = SIZE
    data = {"native": [], "crop": []}
    for k in range(12):
        latent, _, size_cond = render_batch(torch.Generator().manual_seed(100 + k), 1500)
        for kind, rows_ in (("native", size_cond[:, 0] == NATIVE),
                            ("crop", (size_cond[:, 0] == canvas_px) & (size_cond[:, 1] == canvas_px))):
            data[kind].extend(decode(demo, latent[rows_][:400]))
    data_native, data_crops = crop_stats(data["native"][:1000]), crop_stats(data["crop"])
    lines5.append(crops_row(f"training data, native canvases ({len(data['native'][:1000])})", f"{NATIVE} px, (0, 0)",
                            data_native))
    lines5.append(crops_row(f"training data, crops of {canvas_px} px canvases ({len(data['crop'])})",
                            f"{canvas_px} px, any", data_crops))
    native_images = decode(demo, latents(native, None))
    lines5.append(crops_row(f"demo model ({len(native_images)})", f"{NATIVE} px, (0, 0)", crop_stats(native_images)))
    model_crops = []
    for crop in ((0, 0), (0, canvas_px // 2), (canvas_px // 2, 0), (canvas_px // 4, canvas_px // 4)):
        size_cond = {"height": canvas_px, "width": canvas_px, "crop_h": crop[0], "crop_w": crop[1],
                     "target_height": canvas_px, "target_width": canvas_px}
        images = decode(demo, latents(run(demo, None, NATIVE, args, size_cond), None))
        model_crops.append(crop_stats(images))
        lines5.append(crops_row(f"demo model ({len(images)})", f"{canvas_px} px, {crop}", model_crops[-1]))
        print(lines5[-1], flush=True)

    conclusions = conclude(results1, results2, results3, cut, t1, win_px)
    conclusions += [
        f"- At the default split the demo's signal-to-noise ratio is {data_std ** 2 / sdxl_sigma ** 2:.2f}, "
        f"{data_std ** 2:.2f} of what unit-variance latents (SDXL) have there ({1 / sdxl_sigma ** 2:.2f}); the "
        f"demo model reaches SDXL's ratio at the paper's split near stage_split {matched:.2f}. "
        + ("So on this model the paper's split hands a noisier image to stage 2 than on SDXL."
           if data_std < 0.9 else "So the split hands stage 2 about the noise level it gets on SDXL."),
        f"- The windows' size conditioning is followed (section 5: larger objects with {canvas_px} px canvas "
        f"conditioning), but a crop of a {canvas_px} px canvas holds no object in only {data_crops['none']:.0%} of the "
        f"training data, and the model, so conditioned, draws none in at most {max(c['none'] for c in model_crops):.0%}: a stage-2 "
        "window that sees only background is expected to hold an object.",
    ]
    body = "\n".join([
        f"`.venv/bin/python {' '.join(['bench/repetition_diagnosis.py', *sys.argv[1:]])}` on {machine_description()}.",
        f"Demo model (native {NATIVE} px), {SIZE}x{SIZE} px (4x area), {args.seeds} images per row over "
        f"{len(PROMPTS)} prompts (the seeds of `bench/repetition_bench.py`), {args.steps} {args.sampler}/"
        f"{args.scheduler} steps, cfg {args.cfg}. Objects and contrast as in `cutdiff_demo/metrics.py` "
        f"(contrast relative to native-size samples). x0 = the denoised prediction the sampler callback reports: "
        f"callback(i) follows step i's evaluation, so the last stage-1 step's x0 is callback(T1 - 1), "
        f"T1 = `report.plan.stage1_steps` (checked: T1 x 4 patches x batch stage-1 evaluations). "
        f"\"Stage 1 alone\" is stage_split 1.0: the same run up to the split (same x0 there, checked), then stage 1 "
        f"to the end instead of stage 2. Total {time.perf_counter() - start:.0f} s.", "",
        "### 1. Objects at the split (x0 of the last stage-1 step, decoded) and at the end", "",
        "Direct inference's x0 at the same step is the control for how many objects the metric finds in an x0 "
        "that early.", "", *lines1, "",
        "### 2. Patch disagreement at the split", "",
        "The x0 latent cut into its 4 strided views (`x[..., i::2, j::2]`, the stage-1 patches' pixels), each "
        "decoded as a 128 px image. Centroid spread: the largest distance between the views' largest objects' "
        "centroids, in px of the 256 px image. RMS ratio: RMS difference between two views over the RMS deviation "
        "of a view from its own background colour (medians over images). References: the same views of direct "
        "inference's x0 at the same step (one coherent image, equally early) and of the final latents.", "",
        *lines2, "",
        f"### 3. Object size against the {win_px} px stage-2 window", "",
        f"Windows: the plan's nominal {len(boxes)} windows (before jitter). Extents: the larger side of the "
        "bounding box, px of the image; extra objects = all but the largest.", "", *lines3, "",
        "### 4. The noise level at the split against SDXL's", "",
        f"The demo data's latents have a standard deviation of {data_std:.2f} (2000 training samples; the model's "
        f"native-size samples: {sample_std:.2f}). SDXL's latents are scaled to unit standard deviation, as Latent "
        "Diffusion rescales its latents, and both models use the same discrete noise schedule, so the signal-to-noise "
        "ratio at a given stage_split is std² / sigma² here against 1 / sigma² on SDXL.", "", *lines4, "",
        "### 5. Do the windows know they are crops?", "",
        f"A stage-2 window of a {canvas_px} px image is a native-size image conditioned on original = target = "
        f"{canvas_px} px and crop = its offset, as 20% of the training samples were. Native-size samples with that "
        "conditioning and no CutDiffusion (64 per row, the seeds above), against the training data "
        "(decoded training latents). Object area: the objects' total area per image.", "", *lines5, "",
        "### Conclusions", "", *conclusions])
    print(body)
    if not args.no_write:
        write_section(HEADING, body, REPO / "docs" / "benchmark_history.md")


def crop_stats(images) -> dict:
    areas = [metrics.object_areas(im) for im in images]
    counts = np.array([len(a) for a in areas])
    return {"one": (counts == 1).mean(), "none": (counts == 0).mean(), "mean": counts.mean(),
            "area": np.mean([sum(a) for a in areas])}


def crops_row(label: str, cond: str, s: dict) -> str:
    return f"| {label} | {cond} | {s['one']:.0%} | {s['none']:.0%} | {s['mean']:.2f} | {s['area']:.0f} |"


def conclude(results1, results2, results3, cut, t1, win_px) -> list[str]:
    """A few sentences from the numbers above (wording picked by the numbers, nothing else)."""
    default, late = list(cut)
    alone = next(v for k, v in results1.items() if k[0].startswith("stage 1 alone"))[1]
    direct_end = results1[("direct inference (control)", t1[default] - 1)][1]
    direct_x0 = results1[("direct inference (control)", t1[default] - 1)][0]
    (s5, e5), (s8, e8) = results1[(default, t1[default] - 1)], results1[(late, t1[late] - 1)]
    more = lambda e: (e["counts"] > alone["counts"]).mean()   # noqa: E731
    keep = lambda e: (e["counts"][alone["counts"] == 1] == 1).mean()   # noqa: E731
    d5, ref5 = results2[(default, t1[default] - 1)], results2[("direct inference (reference)", t1[default] - 1)]
    nat = next(v for k, v in results3.items() if k.startswith("native"))
    al = next(v for k, v in results3.items() if k.startswith("stage 1 alone"))
    c5 = results3[f"{default}, {SIZE} px"]
    adds = e5["mean"] > alone["mean"]
    return [
        f"- {'Stage 2 adds the extra objects' if adds else 'Stage 2 does not add objects'}: from the "
        f"same state at the split, stage 1 alone ends with one object in {alone['one']:.0%} of images (mean "
        f"{alone['mean']:.2f}; direct inference {direct_end['one']:.0%}, {direct_end['mean']:.2f}), CutDiffusion "
        f"with stage 2 from step {t1[default] + 1} in {e5['one']:.0%} (mean {e5['mean']:.2f}): it ends with more "
        f"objects than stage 1 alone in {more(e5):.0%} of images, and of the images where stage 1 alone ends with "
        f"one, {keep(e5):.0%} still do. With stage_split 0.8 (stage 2 from step {t1[late] + 1}): {e8['one']:.0%}, "
        f"mean {e8['mean']:.2f}, more than stage 1 alone in {more(e8):.0%}, keeps one in {keep(e8):.0%}.",
        f"- The x0 at the split is a poor count by itself: direct inference's x0 at step {t1[default]} shows "
        f"{direct_x0['mean']:.2f} objects on average and one in {direct_x0['one']:.0%}, though it ends with "
        f"{direct_end['mean']:.2f}; CutDiffusion's x0 there shows {s5['mean']:.2f} and {s5['one']:.0%} (stage_split "
        f"0.8, step {t1[late]}: {s8['mean']:.2f}, {s8['one']:.0%}). Contrast (vs native) at the split "
        f"{s5['contrast']:.2f}, at the end {e5['contrast']:.2f}; stage 1 alone ends at {alone['contrast']:.2f}, "
        f"direct inference at {direct_end['contrast']:.2f}.",
        f"- The stage-1 patches {'mostly agree' if d5['ratio'] < (d5['unrelated'] + ref5['ratio']) / 2 else 'disagree'}"
        f" at the split: the views' objects are a median {d5['spread']:.0f} px apart ({d5['spread_far']:.0%} of "
        f"images > 32 px; the views of direct inference's equally early x0: {ref5['spread']:.0f} px, "
        f"{ref5['spread_far']:.0%}), and two views differ by {d5['ratio']:.2f} of the object RMS, against "
        f"{ref5['ratio']:.2f} for direct inference's x0 and {d5['unrelated']:.2f} for views of two different seeds.",
        f"- Native samples' object spans a median {nat['largest']:.0f} px of the {NATIVE} px image; at 4x, stage 1 "
        f"alone draws it {al['largest']:.0f} px ({al['largest'] / nat['largest']:.1f}x) and CutDiffusion "
        f"{c5['largest']:.0f} px, so it fits inside one {win_px} px stage-2 window in {c5['fits']:.0%} of images"
        f"{': most windows see only part of it' if c5['fits'] < 0.5 else ''}. CutDiffusion's extra objects are "
        f"small (median {c5['extra']:.0f} px, against {nat['largest']:.0f} px for a native object); "
        f"{c5['extra_inside']:.0%} lie whole inside one window and {c5['with_main']:.0%} of those share that window "
        f"with part of the main object. Stage 1 alone's extra objects, placed against the same windows though it "
        f"ran none, give {al['extra_inside']:.0%} and {al['with_main']:.0%} (median {al['extra']:.0f} px): small "
        f"extra objects land whole inside a window whoever made them, so this placement does not by itself tie "
        f"them to the windows; the per-image comparison with stage 1 alone (section 1) is what ties them to stage 2.",
    ]


if __name__ == "__main__":
    main()
