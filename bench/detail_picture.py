"""The README's detail picture (issue 23 item 5): whole images beside crops at native pixel scale.

    .venv/bin/python bench/detail_picture.py            # writes docs/detail_comparison.png

On the detail proxy (cutdiff_demo.detail), one held-out prompt and seed, at 4x and 16x area: per method
the whole image shrunk to 256 px, and beside it a 128 px crop (the native size) at the image's own
pixel scale, centred on the largest object. A method that draws detail at the target size shows stripes
and edges in the crop as fine as a native sample's (first column); one that enlarges its layout shows
them 2x (4x area) or 4x (16x area) coarser. Sampled exactly as bench/detail_bench.py samples.
"""
from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
import detail_bench as bench  # noqa: E402  (bootstraps ComfyUI on the CPU before anything imports comfy)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from coherence_picture import font  # noqa: E402
from cutdiff_demo import detail  # noqa: E402
from cutdiff_demo import detail_metrics as dmx  # noqa: E402

OUT = REPO / "docs" / "detail_comparison.png"
SIZES = {"4x area": (256, 256), "16x area": (512, 512)}
COLUMNS = ("direct inference", "CutDiffusion (paper)", bench.PREVIOUS_DEFAULT, "hires fix 0.3 (core nodes)",
           bench.DEFAULT_IS)
LABELS = {"hires fix 0.3 (core nodes)": "hires fix 0.3 (core nodes)", bench.PREVIOUS_DEFAULT: "tiles 0.3 (old default)",
          bench.DEFAULT_IS: "the pack's default (whole frame 0.5)"}
WHOLE_PX, CROP_PX, LABEL_PX = 256, 128, 18


def crop_at_object(image: np.ndarray) -> np.ndarray:
    """A CROP_PX square at pixel scale, centred on the largest object (the image centre without one)."""
    masks = dmx.counting_masks(image)
    cy, cx = (np.argwhere(masks[0]).mean(axis=0) if masks else np.array(image.shape[:2]) / 2).astype(int)
    top = int(np.clip(cy - CROP_PX // 2, 0, image.shape[0] - CROP_PX))
    left = int(np.clip(cx - CROP_PX // 2, 0, image.shape[1] - CROP_PX))
    return image[top:top + CROP_PX, left:left + CROP_PX]


def pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8))


def tile(image: np.ndarray, label: str) -> Image.Image:
    """Whole image (shrunk) and its native-scale crop side by side, labelled."""
    out = Image.new("RGB", (WHOLE_PX + CROP_PX * 2, WHOLE_PX + LABEL_PX), "white")
    out.paste(pil(image).resize((WHOLE_PX, WHOLE_PX), Image.LANCZOS), (0, LABEL_PX))
    out.paste(pil(crop_at_object(image)).resize((CROP_PX * 2, CROP_PX * 2), Image.NEAREST), (WHOLE_PX, LABEL_PX))
    ImageDraw.Draw(out).text((2, 2), label, fill="black", font=font(13))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompt", type=int, default=0, help="index into the held-out prompts")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--scheduler", default="normal")
    args = parser.parse_args()
    torch.set_num_threads(1)
    demo = detail.load_detail_model()
    bench.demo_model = bench.coherence_bench.demo_model = demo.model
    prompt = bench.prompt_sets()["held-out"][args.prompt]
    seed = bench.FIRST_SEED["held-out"] + 100 + args.prompt
    methods = {m.name: m for m in bench.METHODS}
    with torch.inference_mode():
        native = demo.decoder(bench._ksampler(demo.model, demo, prompt, torch.zeros(1, 4, 16, 16), seed, args)).numpy()[0]
    rows = []
    for size, (width, height) in SIZES.items():
        tiles = [tile(native, f"native sample (128 px) | {prompt}")]
        for name in COLUMNS:
            with torch.inference_mode():
                latents, _ = bench.sample(demo, methods[name], prompt, width, height, seed, 1, args)
                image = demo.decoder(latents).numpy()[0]
            tiles.append(tile(image, f"{LABELS.get(name, name)}, {size}: {dmx.object_count_detail(image)} object(s)"))
        rows.append(tiles)
    width, height = rows[0][0].size
    sheet = Image.new("RGB", (width * len(rows[0]), height * len(rows)), "white")
    for r, tiles in enumerate(rows):
        for c, image in enumerate(tiles):
            sheet.paste(image, (c * width, r * height))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    sheet.quantize(colors=256).save(OUT, optimize=True)   # a palette keeps the README light
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB): {prompt}, seed {seed}")


if __name__ == "__main__":
    main()
