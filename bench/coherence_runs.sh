#!/usr/bin/env bash
# The runs behind BENCHMARKS.md's "Coherence at every size (issue 17)" section, in the order they were made
# (about 2 hours on 2 CPU cores with one torch thread). CPU limits: the exploration at 16 images per cell
# (DemoFusion at 16x area: 8), finalists at 32 or 64; a cell with more images replaces one with fewer in
# bench/results/coherence_cells.json. Set PYTHONPATH to run against another copy of
# cutdiff_core / cutdiff_dev / cutdiff_demo (the section says which the figures came from).
set -euo pipefail
cd "$(dirname "$0")/.."
run() { .venv/bin/python bench/coherence_bench.py --no-write "$@"; }
run --seeds 16 --targets "4x area;1:2;2:1;3:1"
run --seeds 16 --targets "9x area" --only "direct inference;CutDiffusion, paper defaults;DemoFusion;native-first, denoise 0.5;native-first, denoise 0.7;gg 1;gg 1, shifted;gg 1, shifted, split 0.7;gg 1, shifted, over half of stage 2;native-first 0.5 + gg 1, shifted;native-first 0.7 + gg 1, shifted"
run --seeds 16 --targets "1:2;2:1;3:1" --only "native-first, short side native, denoise 0.5"
run --seeds 16 --targets "16x area" --only "direct inference;CutDiffusion, paper defaults;native-first, denoise 0.5;gg 1, shifted;native-first 0.5 + gg 1, shifted"
run --seeds 8 --targets "16x area" --only "DemoFusion"
run --seeds 16 --only "native-first, short side native, denoise 0.3;native-first, short side native, 0.5 + gg 1, shifted, over half"
run --seeds 16 --only "gg 1, shifted + MultiDiffusion refine 0.3;native-first 0.5 + gg 1, shifted + MultiDiffusion refine 0.3"
run --seeds 64 --only "native-first, short side native, denoise 0.3"
run --seeds 32 --only "native-first 0.5 + gg 1, shifted + MultiDiffusion refine 0.3"
# Next round: shifted tiles, the native-area layout, the layout anchor, the pack's own native first.
run --seeds 16 --targets "4x area;9x area;16x area" --only "native-first 0.3, shifted"
run --seeds 64 --targets "1:2;2:1;3:1" --only "native-first 0.3, shifted;native-first 0.3, shifted, native area"
run --seeds 32 --targets "1:2;2:1;3:1" --only "native-first 0.3, shifted, native area + layout anchor"
run --seeds 64 --only "the pack: native first, layout_guidance 0;the pack's default: native first, layout_guidance 1"
run --seeds 64 --only "direct inference"
run --seeds 16 --targets "9x area;16x area" --only "MultiDiffusion"
run --seeds 16 --targets "16x area" --only "native-first, denoise 0.7;gg 1;gg 1, shifted, split 0.7;gg 1, shifted, over half of stage 2;native-first 0.7 + gg 1, shifted"
run --seeds 32 --targets "4x area;9x area;16x area" --only "native-first 0.3, shifted, native area + layout anchor"
.venv/bin/python bench/coherence_bench.py --render-only --command "bash bench/coherence_runs.sh" "$@"
