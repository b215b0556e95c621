"""Relocation, its inverse, pixel interaction, windows and size conditioning (pure torch)."""
import torch
from einops import rearrange
from hypothesis import given, settings, strategies as st

from cutdiff_core.patches import draw_permutation, fold_patches, permute_patches, unfold_patches, unpermute_patches
from cutdiff_core.plan import Window
from cutdiff_core.size_cond import with_window_crops
from cutdiff_core.windows import WindowBlender, crop_windows


def test_unfold_is_the_strided_view_and_patch_major():
    x = torch.randn(2, 3, 6, 8)
    stack = unfold_patches(x, 2, 4)
    assert stack.shape == (16, 3, 3, 2)
    for i in range(2):
        for j in range(4):
            for b in range(2):
                assert torch.equal(stack[(i * 4 + j) * 2 + b], x[b, :, i::2, j::4])


def test_relocation_matches_the_reference_formula():
    # Spec 3.3: patch (i, j) supplies the pixels at (y * p1 + i, x * p2 + j).
    z = torch.randn(6, 4, 5, 7)  # (p1 p2) c h w, p1=2, p2=3, batch 1
    full = fold_patches(z, 2, 3)[0]
    for i in range(2):
        for j in range(3):
            for y in range(5):
                for x in range(7):
                    assert torch.equal(full[:, y * 2 + i, x * 3 + j], z[i * 3 + j, :, y, x])
    assert torch.equal(full, rearrange(z, "(p1 p2) c h w -> c (h p1) (w p2)", p1=2, p2=3))


@settings(max_examples=50, deadline=None)
@given(b=st.integers(1, 3), c=st.integers(1, 5), rows=st.integers(1, 4), cols=st.integers(1, 4),
       h=st.integers(1, 6), w=st.integers(1, 6))
def test_round_trips(b, c, rows, cols, h, w):
    x = torch.randn(b, c, rows * h, cols * w)
    stack = unfold_patches(x, rows, cols)
    assert torch.equal(fold_patches(stack, rows, cols), x)
    n = rows * cols
    perm = draw_permutation(n, b, stack.shape[1:], torch.Generator().manual_seed(b * 7 + c), "cpu")
    mixed = permute_patches(stack, perm)
    assert torch.equal(unpermute_patches(mixed, perm), stack)
    # At every (batch, c, y, x) the patches' values are a permutation of the originals, within one batch item.
    orig = rearrange(stack, "(n b) c h w -> b c h w n", n=n).sort(dim=-1).values
    new = rearrange(mixed, "(n b) c h w -> b c h w n", n=n).sort(dim=-1).values
    assert torch.equal(orig, new)


def test_permutation_is_per_element_and_seeded():
    perm = draw_permutation(4, 1, torch.Size([2, 16, 16]), torch.Generator().manual_seed(0), "cpu")
    assert bool((perm.sort(dim=0).values == torch.arange(4).view(4, 1, 1, 1, 1)).all())
    # Different elements get different permutations (512 elements of 24 possible perms).
    assert len({tuple(perm[:, 0, c, y, x].tolist()) for c in range(2) for y in range(16) for x in range(16)}) > 12
    again = draw_permutation(4, 1, torch.Size([2, 16, 16]), torch.Generator().manual_seed(0), "cpu")
    other = draw_permutation(4, 1, torch.Size([2, 16, 16]), torch.Generator().manual_seed(1), "cpu")
    assert torch.equal(perm, again) and not torch.equal(perm, other)


def test_window_crop_and_uniform_blend_is_the_per_pixel_mean():
    x = torch.randn(2, 4, 10, 12)
    windows = [Window(0, 0, 6, 6), Window(0, 6, 6, 6), Window(4, 3, 6, 6)]
    stack = crop_windows(x, windows)
    assert stack.shape == (6, 4, 6, 6)
    assert torch.equal(stack[2 * 2 + 1], x[1, :, 4:10, 3:9])
    preds = torch.randn_like(stack)
    blender = WindowBlender(torch.zeros(2, 4, 10, 12))
    blender.add(preds[:4], windows[:2])
    blender.add(preds[4:], windows[2:])
    out = blender.result()
    total, count = torch.zeros(2, 4, 10, 12), torch.zeros(10, 12)
    for k, win in enumerate(windows):
        total[:, :, win.y:win.y + 6, win.x:win.x + 6] += preds[k * 2:(k + 1) * 2]
        count[win.y:win.y + 6, win.x:win.x + 6] += 1
    covered = count > 0
    assert torch.allclose(out[..., covered], (total / count.clamp(min=1))[..., covered])


def test_window_crops_rewrite_only_the_crop_slots():
    embed = lambda v: torch.stack([v * (k + 1) for k in range(256)], dim=1)
    y = torch.randn(2, 2816)
    out = with_window_crops(y, 1792, [(0, 64), (128, 512)], embed)
    assert out.shape == (4, 2816)
    for k, (ch, cw) in enumerate([(0, 64), (128, 512)]):
        for b in range(2):
            row = out[k * 2 + b]
            assert torch.equal(row[:1792], y[b, :1792]) and torch.equal(row[2304:], y[b, 2304:])
            assert torch.equal(row[1792:2048], embed(torch.tensor([float(ch)]))[0])
            assert torch.equal(row[2048:2304], embed(torch.tensor([float(cw)]))[0])


# --------------------------------------------------------------------------- the stage functions

def _seen_and_scaled(seen: list, scale: float = 2.0):
    """A stand-in model: records each call's (images, views) and predicts `scale * images` for
    two cond slots, so the stages' output says where every pixel went."""
    def denoise(images, views):
        seen.append((images.clone(), list(views)))
        return [scale * images, -images]
    return denoise


def test_stage1_relocates_each_patch_prediction_to_its_pixels():
    from cutdiff_core.plan import patch_grid
    from cutdiff_core.stages import stage1_denoise
    x = torch.randn(2, 3, 6, 8)
    grid = patch_grid(6, 8, 3, 4)
    perm = draw_permutation(grid.n, 2, (3, 3, 4), torch.Generator().manual_seed(0), x.device)
    for permutation, per_call in ((None, None), (perm, None), (perm, 3)):
        seen = []
        cond, uncond = stage1_denoise(x, _seen_and_scaled(seen), grid, permutation, per_call)
        assert torch.equal(cond, 2.0 * x) and torch.equal(uncond, -x)
        # The model saw native-size patches, whole patches per call, each exchanged as drawn.
        stack = unfold_patches(x, grid.rows, grid.cols)
        expected = stack if permutation is None else permute_patches(stack, permutation)
        assert torch.equal(torch.cat([images for images, _ in seen]), expected)
        assert [views for _, views in seen] == ([list(range(4))] if per_call is None else [[0, 1, 2], [3]])


def test_stage2_windows_average_back_to_the_frame_with_and_without_shift():
    from cutdiff_core.plan import StepWindows, window_layout
    from cutdiff_core.stages import stage2_denoise
    x = torch.randn(2, 3, 12, 16)
    overlap = window_layout(12, 16, 8, 8, 4, 4, jitter=False)
    tiles = window_layout(12, 16, 6, 8, 6, 8, jitter=False, mode="shifted")
    cases = [(StepWindows(overlap.windows()), None), (StepWindows(tiles.windows(), (3, 5)), (2, 2))]
    for step, tiling in cases:
        seen = []
        cond, uncond = stage2_denoise(x, _seen_and_scaled(seen), step, [True, True], windows_per_call=2,
                                      tiles=tiling)
        torch.testing.assert_close(cond, 2.0 * x)
        torch.testing.assert_close(uncond, -x)
        frame = torch.roll(x, (-step.shift[0], -step.shift[1]), (-2, -1))
        assert torch.equal(torch.cat([images for images, _ in seen]), crop_windows(frame, step.windows))
        assert all(len(views) <= 2 for _, views in seen)
    # An absent slot (uncond at cfg 1) comes back as zeros, as ComfyUI's own.
    _, absent = stage2_denoise(x, _seen_and_scaled([]), cases[0][0], [True, False], windows_per_call=4)
    assert torch.equal(absent, torch.zeros_like(x))


def test_global_guidance_mix_is_exact_at_its_ends():
    from cutdiff_core.stages import guide_by_patches
    windows, patches = [torch.randn(1, 4, 8, 8)], [torch.randn(1, 4, 8, 8)]
    assert torch.equal(guide_by_patches(windows, patches, 1.0)[0], patches[0])
    assert torch.equal(guide_by_patches(windows, patches, 0.0)[0], windows[0])


def test_low_band_guidance_takes_the_patches_layout_and_keeps_the_windows_detail():
    """guidance_band low: a difference that is constant over each rows x cols block (where the
    subject is) goes; a difference that averages to zero in every block (edges, texture at the
    patches' interleave) stays; weight 0 changes nothing."""
    from cutdiff_core.stages import guide_low_frequencies, low_frequencies

    rows, cols = 2, 3
    patches = torch.randn(2, 4, 12, 18)
    layout_shift = torch.randn(2, 4, 1, 1)                       # the windows placed things elsewhere
    checker = torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]]).repeat(6, 6)   # zero mean per 2x3 block
    detail = 0.5 * checker * torch.randn(2, 4, 1, 1)
    assert torch.allclose(low_frequencies(detail, rows, cols), torch.zeros_like(detail), atol=1e-6)

    windows = patches + layout_shift + detail
    (guided,) = guide_low_frequencies([windows], [patches], 1.0, rows, cols)
    torch.testing.assert_close(guided, patches + detail)
    (half,) = guide_low_frequencies([windows], [patches], 0.5, rows, cols)
    torch.testing.assert_close(half, patches + 0.5 * layout_shift + detail)
    assert torch.equal(guide_low_frequencies([windows], [patches], 0.0, rows, cols)[0], windows)


def test_layout_anchor_takes_the_layouts_coarse_structure_and_keeps_the_rest():
    """Native first: a prediction that moved the layout (a shift constant over each coarse cell) is
    brought back to it; detail that averages to zero in every coarse cell stays; absent slots stay
    zeros."""
    from cutdiff_core.stages import anchor_to_layout

    layout = torch.randn(1, 4, 8, 12)
    checker = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(4, 6)    # zero mean per 2x2 cell
    detail = checker * torch.randn(1, 4, 1, 1)
    moved = layout + torch.randn(1, 4, 1, 1) + detail
    anchored, absent = anchor_to_layout([moved, torch.zeros_like(moved)], [True, False], layout, 4, 6)
    torch.testing.assert_close(anchored, layout + detail)
    assert torch.equal(absent, torch.zeros_like(moved))
