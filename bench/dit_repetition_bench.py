"""Repetition benchmark on the demo DiT (issue 15 item 5): does the subject appear once on a flow-matching DiT?

    .venv/bin/python bench/dit_repetition_bench.py        # 64 images per cell, writes BENCHMARKS.md

The same measurement as bench/repetition_bench.py (its cells, metrics and columns, imported from
it), on the tiny Flux-architecture demo DiT (cutdiff_demo.dit, trained by scripts/train_demo_dit.py
with rectified flow on the UNet demo's one-object data, native 128 px). At 4x area (256 px) and
9x area (384 px): direct inference, MultiDiffusion (stage_split 0), CutDiffusion with the paper's
defaults, and CutDiffusion with global_guidance 1. Sampling: euler, simple scheduler (the flow
schedule ComfyUI's templates use for Flux), 20 steps, cfg 3 (the DiT's best native one-object
rate of the cfg values its training record reports).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import repetition_bench as rb  # noqa: E402  (starts ComfyUI on the CPU before anything imports comfy)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cutdiff_demo import dit as demo_dit  # noqa: E402
from cutdiff_demo import metrics  # noqa: E402
from cutdiff_core.cutdiffusion_patch import CutDiffusionConfig  # noqa: E402
from report import machine_description, write_section  # noqa: E402

HEADING = "## Repetition on the demo DiT"
NATIVE = demo_dit.NATIVE_SIZE_PX
TARGETS = {"4x area": (2 * NATIVE, 2 * NATIVE), "9x area": (3 * NATIVE, 3 * NATIVE)}
METHODS = {
    "direct inference": None,
    "MultiDiffusion (stage_split 0)": CutDiffusionConfig(layout="patches", stage_split=0.0),
    "CutDiffusion (paper defaults)": CutDiffusionConfig(layout="patches"),
    "CutDiffusion, global_guidance 1": CutDiffusionConfig(layout="patches", global_guidance=1.0),
    # The default from issue 17 to issue 23 (tiles at 0.3), as measured; the name is the stored rows'.
    "CutDiffusion, the pack's default (native first, layout guidance)": CutDiffusionConfig(target_pass="tiles",
                                                                                          layout_denoise=0.3),
}
DEFAULT_CFG = 3.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    rb.add_sampling_arguments(parser)
    parser.set_defaults(scheduler="simple", cfg=DEFAULT_CFG)
    parser.add_argument("--model", type=Path, default=demo_dit.MODEL_PATH)
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    demo = demo_dit.load_demo_dit(args.model)
    start = time.perf_counter()

    native = rb.run_cell(demo, None, NATIVE, NATIVE, args, rb.reference_plan(demo, 2 * NATIVE, 2 * NATIVE, args))
    command = " ".join(["bench/dit_repetition_bench.py", *sys.argv[1:]])
    lines = [f"`.venv/bin/python {command}` on {machine_description()}.",
             f"Demo DiT (`cutdiff_demo.dit`: ComfyUI's Flux architecture, 2 double + 2 single blocks, hidden 128, "
             f"rectified flow with plain shift, trained by `scripts/train_demo_dit.py`; native {NATIVE} px), "
             f"{len(native.counts)} images per cell over {len(rb.PROMPTS)} prompts, {args.steps} "
             f"{args.sampler}/{args.scheduler} steps, cfg {args.cfg}. Native size: "
             f"{metrics.summarise_counts(native.counts)}, median aspect {np.nanmedian(native.aspects):.2f} "
             f"({native.seconds:.0f} s).",
             "Columns as in the repetition bench of the UNet demo model above. Direct inference runs the DiT on "
             "more tokens than it was trained on (RoPE positions past the native 8 x 8 tokens); every CutDiffusion "
             "/ MultiDiffusion patch and window is a native-size image to the model.", ""]
    for target in args.targets:
        width, height = TARGETS[target]
        plan = rb.reference_plan(demo, width, height, args)
        lines += [f"### {target} ({width}x{height} px)", "", rb.HEADER]
        for name, config in METHODS.items():
            lines.append(rb.row(name, rb.run_cell(demo, config, width, height, args, plan), native))
            print(lines[-1], flush=True)
        lines.append("")
        if not args.no_write:   # each finished target is on record even if a later one is cut short
            write_section(HEADING, "\n".join(lines + [f"(Running: {target} done.)"]))
    lines.append(f"Total {time.perf_counter() - start:.0f} s.")
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section(HEADING, body)


if __name__ == "__main__":
    main()
