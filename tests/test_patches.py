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
