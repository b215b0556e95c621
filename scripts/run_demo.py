"""The demo: the pack's example workflow for its tiny embedded model, run through ComfyUI's
real executor (headless, CPU), at three sizes with three methods, plus a side-by-side picture.

    bash scripts/demo.sh          # sets up .venv first; outputs under out/demo/

Methods: direct inference (ComfyUI's KSampler at the target size), MultiDiffusion
(CutDiffusion KSampler, layout patches, stage_split 0), the paper's CutDiffusion (layout patches)
and the pack's default (the workflow as shipped: layout native first, target pass on the whole frame). Targets: 4x the
native area, a 2:1 panorama and a 1:2 portrait. The demo model has only ever seen one object
per image: repeated objects are the method's doing.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "out" / "demo"
os.environ.setdefault("CUTDIFF_BASE_DIR", str(OUT))   # keep the executor's outputs
from cutdiff_dev import comfy_runtime as rt  # noqa: E402  (starts ComfyUI on the CPU before anything imports comfy)

START_LOG = OUT / "comfyui_start.log"
with rt.start_up_log(START_LOG) as _start_records:
    rt.bootstrap()
from PIL import Image, ImageDraw  # noqa: E402

from cutdiff_dev import ui_workflow  # noqa: E402
from cutdiff_demo.model import NATIVE_SIZE_PX as NATIVE  # noqa: E402

WORKFLOW = REPO / "workflows" / "cutdiffusion_demo_model.json"
TARGETS = {"4x area": (2 * NATIVE, 2 * NATIVE), "2:1": (4 * NATIVE, 2 * NATIVE), "1:2": (2 * NATIVE, 4 * NATIVE)}
METHODS = ("direct inference", "MultiDiffusion", "CutDiffusion (paper)", "pack default (native first)")
PROMPT = "red circle on sand"
KSAMPLER_INPUTS = ("model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative",
                   "latent_image", "denoise")


def demo_prompt(method: str, width: int, height: int, seed: int) -> tuple[dict, str]:
    """The shipped workflow as an API prompt, resized and switched to `method`; returns it and its save node."""
    prompt = ui_workflow.to_api_prompt(json.loads(WORKFLOW.read_text()))
    by_type = {node["class_type"]: node_id for node_id, node in prompt.items()}
    prompt[by_type["EmptyLatentImage"]]["inputs"].update(width=width, height=height, batch_size=1)
    prompt[by_type["CutDiffusionDemoModel"]]["inputs"]["prompt"] = PROMPT
    sampler = prompt[by_type["CutDiffusionKSampler"]]
    sampler["inputs"]["seed"] = seed
    if method == "direct inference":
        sampler["class_type"] = "KSampler"
        sampler["inputs"] = {k: v for k, v in sampler["inputs"].items() if k in KSAMPLER_INPUTS}
    elif method == "MultiDiffusion":
        sampler["inputs"].update(layout="patches", stage_split=0.0)
    elif method == "CutDiffusion (paper)":
        sampler["inputs"]["layout"] = "patches"
    save = prompt[by_type["SaveImage"]]
    slug = "_".join("".join(c if c.isalnum() else " " for c in method.lower()).split())
    save["inputs"]["filename_prefix"] = f"demo/{slug}_{width}x{height}"
    return prompt, by_type["SaveImage"]


def run(method: str, width: int, height: int, seed: int) -> Image.Image:
    prompt, save_id = demo_prompt(method, width, height, seed)
    result = rt.run_prompt(prompt)
    saved = result["outputs"][save_id]["images"][0]
    return Image.open(Path(rt.BASE) / "output" / saved["subfolder"] / saved["filename"]).convert("RGB")


def comparison(images: dict, scale: int = 2) -> Image.Image:
    """Rows: targets; columns: methods; each cell labelled."""
    label_h, pad = 16, 8
    sizes = {t: (images[t, METHODS[0]].width * scale, images[t, METHODS[0]].height * scale) for t in TARGETS}
    width = max(len(METHODS) * (w + pad) + pad for w, _ in sizes.values())
    sheet = Image.new("RGB", (width, sum(h + label_h + pad for _, h in sizes.values()) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    y = pad
    for target, (w, h) in sizes.items():
        for col, method in enumerate(METHODS):
            img = images[target, method]
            x = pad + col * (w + pad)
            draw.text((x, y), f"{method}, {target} ({img.width}x{img.height} px)", fill="black")
            sheet.paste(img.resize((w, h), Image.NEAREST), (x, y + label_h))
        y += h + label_h + pad
    return sheet


def report_start(records) -> None:
    """One line for what ComfyUI said while starting; the whole of it is in START_LOG."""
    failed = sorted({m.group(1) for r in records for m in [re.search(r"IMPORT FAILED: (\S+)", r.getMessage())] if m})
    audio = any("torchaudio" in r.getMessage() for r in records)
    note = f"; not loaded: {', '.join(failed)}" if failed else ""
    if audio:
        note += " (audio nodes: torchaudio is not installed, and nothing here uses it)"
    print(f"[demo] ComfyUI started{note}; its start-up log: {START_LOG}", flush=True)


def main() -> None:
    start = time.perf_counter()
    with rt.start_up_log(START_LOG, append=True) as records:
        status = rt.init_nodes()
    report_start(_start_records + records)
    if not status["loaded"]:
        raise SystemExit(f"the pack did not load into ComfyUI:\n{status['error']}")
    images = {}
    for target, (width, height) in TARGETS.items():
        for method in METHODS:
            print(f"[demo] {method} at {width}x{height} px ({target})", flush=True)
            images[target, method] = run(method, width, height, seed=3)
    sheet = comparison(images)
    OUT.mkdir(parents=True, exist_ok=True)
    sheet.save(OUT / "comparison.png")
    shutil.copy(OUT / "comparison.png", REPO / "docs" / "demo_comparison.png")
    print(f"[demo] PNGs in {Path(rt.BASE) / 'output' / 'demo'}; comparison: {OUT / 'comparison.png'} "
          f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
