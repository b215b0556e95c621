"""The plan's geometry and stage split, as pure functions (no ComfyUI needed)."""
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from cutdiff_core.plan import make_plan, patch_grid, stage1_steps, window_layout, window_starts

REPO = Path(__file__).resolve().parents[1]


def test_pure_modules_import_without_comfyui():
    code = ("import sys; import cutdiff_core.plan, cutdiff_core.patches, cutdiff_core.windows, "
            "cutdiff_core.size_cond, cutdiff_core.stages, cutdiff_core.layout, cutdiff_core.config, "
            "cutdiff_core.run_state, cutdiff_core.spatial_tile, cutdiff_core.adaptive; bad = [m for m in sys.modules if m == 'comfy' or m.startswith('comfy.')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


@pytest.mark.parametrize("px, windows", [(1024, 1), (2048, 3), (3072, 5), (4096, 7)])
def test_reference_window_counts(px, windows):
    # Spec 3.4: window 128 latent px, stride 64: 2048 px -> 3, 3072 -> 5, 4096 -> 7 per dimension.
    assert len(window_starts(px // 8, 128, 64)) == windows


@pytest.mark.parametrize("h_px, w_px, n, windows", [(1024, 2048, 2, 3), (2048, 2048, 4, 9), (3072, 3072, 9, 25),
                                                    (4096, 4096, 16, 49)])
def test_reference_costs(h_px, w_px, n, windows):
    plan = make_plan(height=h_px // 8, width=w_px // 8, native=(128, 128), stride=(64, 64), sigmas=[1.0] * 51,
                     split_sigma=0.5, stage_split=0.5, jitter=False)
    assert plan.grid.n == n and plan.layout.count == windows
    # Spec 3.6: stage-split evaluations, x2 for CFG.
    assert plan.model_evaluations() == 2 * (plan.stage1_steps * n + plan.stage2_steps * windows)


def test_cost_ratio_against_multidiffusion_matches_spec():
    for px, ratio in ((2048, 0.72), (4096, 0.66)):
        sigmas = [50 - i for i in range(51)]  # 50 steps, split after 25
        plan = make_plan(height=px // 8, width=px // 8, native=(128, 128), stride=(64, 64), sigmas=sigmas,
                         split_sigma=25.5, stage_split=0.5, jitter=False)
        multi = make_plan(height=px // 8, width=px // 8, native=(128, 128), stride=(64, 64), sigmas=sigmas,
                          split_sigma=25.5, stage_split=0.0, jitter=False)
        assert plan.stage1_steps == 25 and multi.stage1_steps == 0
        assert plan.model_evaluations() / multi.model_evaluations() == pytest.approx(ratio, abs=0.01)


def test_stage1_steps_split_rules():
    sigmas = [10, 8, 6, 4, 2, 0]
    assert stage1_steps(sigmas, 5.0, 0.5) == 3       # steps starting at 10, 8, 6
    assert stage1_steps(sigmas, 99.0, 0.0) == 0      # 0 = MultiDiffusion
    assert stage1_steps(sigmas, 0.0, 1.0) == 5       # 1 = stage 1 only
    assert stage1_steps(sigmas, 9.9, 0.01) == 1      # each stage gets a step when 0 < split < 1
    assert stage1_steps(sigmas, 99.0, 0.01) == 0     # ... unless the run starts below the split (img2img)
    assert stage1_steps(sigmas, 99.0, 0.01, min_steps=2) == 2
    assert stage1_steps(sigmas, 0.0, 0.99) == 4
    assert stage1_steps([10, 5, 0], 9.0, 0.3) == 1   # 2-step runs: 1 + 1
    assert stage1_steps([10, 5, 0], 0.1, 0.9) == 1
    assert stage1_steps([10, 0], 0.1, 0.9) == 1      # a single step cannot be split


def test_patch_grid_examples():
    g = patch_grid(192, 128, 128, 128)               # 1536x1024 px on SDXL
    assert (g.rows, g.cols, g.patch_h, g.patch_w, g.pad_h, g.pad_w) == (2, 1, 96, 128, 0, 0)
    g = patch_grid(160, 288, 128, 128)               # 1280x2304 px
    assert (g.rows, g.cols, g.patch_h, g.patch_w, g.pad_h, g.pad_w) == (2, 3, 80, 96, 0, 0)
    g = patch_grid(257, 128, 128, 128)
    assert (g.rows, g.patch_h, g.pad_h) == (3, 86, 1)


sizes = st.integers(min_value=8, max_value=700)


@settings(max_examples=300, deadline=None)
@given(h=sizes, w=sizes, native=st.integers(16, 160), stride_frac=st.floats(0.05, 1.0), seed=st.integers(0, 2**31),
       jitter=st.booleans())
def test_plan_properties(h, w, native, stride_frac, seed, jitter):
    stride = max(1, int(native * stride_frac))
    plan = make_plan(height=h, width=w, native=(native, native), stride=(stride, stride), sigmas=[1.0] * 11,
                     split_sigma=0.5, stage_split=0.5, jitter=jitter)
    g, lay = plan.grid, plan.layout
    # Patches: never larger than native, padding below the bound, covering the target.
    assert g.patch_h <= native and g.patch_w <= native
    assert 0 <= g.pad_h <= g.rows - 1 and 0 <= g.pad_w <= g.cols - 1
    assert g.padded_h == h + g.pad_h and g.padded_w == w + g.pad_w
    assert g.rows == math.ceil(h / native) and g.cols == math.ceil(w / native)
    # Windows: inside the latent, counts as computed, every pixel covered, jittered or not.
    expected_rows = 1 if g.padded_h <= native else math.ceil((g.padded_h - native) / stride) + 1
    expected_cols = 1 if g.padded_w <= native else math.ceil((g.padded_w - native) / stride) + 1
    assert lay.count == expected_rows * expected_cols
    gen = torch.Generator().manual_seed(seed)
    offsets = lay.draw_offsets(gen) if jitter else None
    if offsets is not None:
        assert offsets.abs().max() <= max(lay.jitter_h, lay.jitter_w)
    boxes = np.array([(win.y, win.x, win.h, win.w) for win in lay.windows(offsets)])
    y, x, wh, ww = boxes.T
    assert (y >= 0).all() and (y + wh <= g.padded_h).all() and (x >= 0).all() and (x + ww <= g.padded_w).all()
    assert (wh == min(native, g.padded_h)).all() and (ww == min(native, g.padded_w)).all()
    # Coverage through a 2D difference array (one +1/-1 corner set per window, then prefix sums):
    # thousands of windows at small strides stay fast.
    corners = np.zeros((g.padded_h + 1, g.padded_w + 1), dtype=np.int64)
    for dy, dx, sign in ((0, 0, 1), (0, ww, -1), (wh, 0, -1), (wh, ww, 1)):
        np.add.at(corners, (y + dy, x + dx), sign)
    cover = corners.cumsum(axis=0).cumsum(axis=1)[:-1, :-1]
    assert (cover > 0).all()
    assert plan.model_evaluations(batch=1, cfg_batches=1) == plan.stage1_steps * g.n + plan.stage2_steps * lay.count


def test_jitter_is_bounded_by_a_quarter_of_the_overlap():
    lay = window_layout(256, 256, 128, 128, 64, 64, jitter=True)
    assert lay.jitter_h == lay.jitter_w == 16
    assert window_layout(256, 256, 128, 128, 64, 64, jitter=False).jitter_h == 0
