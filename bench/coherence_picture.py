"""The README's coherence picture (issue 17 item 5): one prompt, one seed, five methods, two sizes.

    .venv/bin/python bench/coherence_picture.py            # writes docs/coherence_comparison.png

Rows: 4x area (256² px) and 16x area (512² px) on the demo model (native 128 px). Columns: direct
inference, MultiDiffusion, DemoFusion, CutDiffusion with the paper's settings (layout 'patches') and
CutDiffusion's default (CutDiffusionConfig(): native first inside the pack, as a node runs it).
All are sampled exactly as bench/coherence_bench.py samples its candidates (its `sample`). Each
tile is labelled with its method, its model
evaluations per image and CFG half in native-size equivalents (as coherence_bench counts them;
direct inference: its full-size ones) and its object count (cutdiff_demo.metrics.count_objects).
Full RGB: the tiles shrink until the PNG fits --max-kb (a palette would flatten the background
grain the bench measures as texture). The seed is the bench's first one for this prompt (1000),
not a chosen one.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
import coherence_bench as cb  # noqa: E402  (bootstraps ComfyUI on the CPU before anything imports comfy)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from cutdiff_demo import metrics  # noqa: E402
from cutdiff_demo import model as dm  # noqa: E402
from repetition_bench import NATIVE, TARGETS, add_sampling_arguments  # noqa: E402
from report import machine_description  # noqa: E402

OUT = REPO / "docs" / "coherence_comparison.png"
ROWS = ("4x area", "16x area")
BENCH = {c.name: c for c in cb.CANDIDATES}
COLUMNS = {   # label: the bench candidate
    "direct inference": BENCH["direct inference"],
    "MultiDiffusion": BENCH["MultiDiffusion"],
    "DemoFusion": BENCH["DemoFusion"],
    "CutDiffusion (paper)": BENCH["CutDiffusion, paper defaults"],
    "CutDiffusion (default)": BENCH["the pack's default: native first, layout_guidance 1"],
}


def to_image(demo, latents: torch.Tensor) -> tuple[Image.Image, int]:
    rgb = demo.decoder(latents).numpy()[0]
    count = metrics.count_objects(rgb)
    return Image.fromarray((np.clip(rgb, 0.0, 1.0) * 255).round().astype(np.uint8)), count


def font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):   # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def sheet(tiles: dict, tile_px: int) -> Image.Image:
    """Rows: sizes; columns: methods; every tile scaled to tile_px, labelled above."""
    pad, head, row_head = 10, 52, 22
    title, small = font(15), font(13)
    width = pad + len(COLUMNS) * (tile_px + pad)
    height = pad + len(ROWS) * (row_head + head + tile_px + pad)
    page = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(page)
    y = pad
    for row in ROWS:
        w, h = TARGETS[row]
        draw.text((pad, y), f"{row}: {w}x{h} px (native {NATIVE} px), same prompt and seed; "
                  "evaluations: native-size model calls per image", fill="black", font=title)
        y += row_head
        for col, label in enumerate(COLUMNS):
            image, evals, count = tiles[row, label]
            x = pad + col * (tile_px + pad)
            draw.text((x, y), label, fill="black", font=title)
            kind = " full-size" if label == "direct inference" else ""   # one target-size call a step
            draw.text((x, y + 18), f"{evals}{kind} evaluations", fill=(70, 70, 70), font=small)
            draw.text((x, y + 33), f"{count} object{'s' if count != 1 else ''}", fill=(70, 70, 70), font=small)
            resample = Image.NEAREST if tile_px >= image.width else Image.LANCZOS
            page.paste(image.resize((tile_px, tile_px), resample), (x, y + head))
        y += head + tile_px + pad
    return page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_sampling_arguments(parser)
    parser.add_argument("--prompt", default="red circle on sand")
    parser.add_argument("--tile", type=int, default=256, help="largest tile size in the picture, px (16x tiles are scaled down)")
    parser.add_argument("--max-kb", type=int, default=600, help="shrink the tiles (8 px at a time) until the PNG fits")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (leave a core to others)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    demo = dm.load_demo_model()
    cb.demo_text, cb.demo_model = demo.text, demo.model   # what coherence_bench's sampling reads
    print("command:", shlex.join([".venv/bin/python", "bench/coherence_picture.py", *sys.argv[1:]]))
    print("machine:", machine_description())
    print(f"prompt {args.prompt!r}, seed {args.seed}, {args.steps} {args.sampler}/{args.scheduler} steps, cfg {args.cfg}")
    tiles = {}
    for row in ROWS:
        width, height = TARGETS[row]
        for label, cand in COLUMNS.items():
            start = time.perf_counter()
            with torch.inference_mode():
                latents, evals, _ = cb.sample(demo, cand, width, height, args.prompt, args.seed, 1, args)
                image, count = to_image(demo, latents)
            tiles[row, label] = (image, evals, count)
            print(f"{row} | {label} | {count} object(s) | {evals} evaluations | {time.perf_counter() - start:.0f} s",
                  flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tile = args.tile
    while True:   # full RGB (a palette would flatten the background grain the bench measures as texture)
        page = sheet(tiles, tile)
        page.save(args.out, optimize=True)
        if args.out.stat().st_size <= args.max_kb * 1024 or tile <= 128:
            break
        tile -= 8
    print(f"wrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out} "
          f"({page.width}x{page.height} px, tiles {tile} px, {args.out.stat().st_size / 1024:.0f} KB)")
    cells = cb.load_cells(cb.CELLS)
    print("bench one-object rates (bench/results/coherence_cells.json):")
    for row in ROWS:
        for label, cand in COLUMNS.items():
            name = cand.name
            cell = cells.get(f"{name}|{row}")
            rate = (f"{metrics.summarise_counts(cell['counts']).one:.0%} of {cell['images']} images, "
                    f"{cell['evaluations']} evaluations") if cell else "not in the stored cells"
            print(f"  {row} | {label} ({name}): {rate}")


if __name__ == "__main__":
    main()
