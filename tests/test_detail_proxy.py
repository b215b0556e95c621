"""The detail proxy's data and decoder (cutdiff_demo.detail): detail drawn by the latent, magnified by an upscale."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import einsum

from cutdiff_dev import comfy_runtime

comfy_runtime.bootstrap()
from cutdiff_demo import detail  # noqa: E402
from cutdiff_demo import detail_metrics as dx  # noqa: E402
from cutdiff_demo import model as dm  # noqa: E402


def latent_of(colour_rgb, pattern) -> torch.Tensor:
    """A latent [1, 4, h, w] from per-pixel colours [3, h, w] in [0, 1] and a pattern field [h, w]."""
    features = torch.cat([colour_rgb * 2 - 1, pattern[None]])
    return einsum(dm.LATENT_MIX, features, "c f, f h w -> c h w")[None]


def palette_rgb(name: str) -> torch.Tensor:
    return torch.tensor(dm.COLOURS.get(name) or dm.BACKGROUNDS[name][0])


def edge_profile(left: str, right: str, scale: int = 1) -> torch.Tensor:
    """The decoded red channel across a vertical edge between two colours (no pattern), upscaled x`scale`."""
    colour = torch.stack([palette_rgb(left)] * 8 + [palette_rgb(right)] * 8, dim=1)[:, None, :].expand(3, 16, 16)
    latent = latent_of(colour, torch.zeros(16, 16))
    if scale > 1:
        latent = F.interpolate(latent, scale_factor=scale, mode="bicubic", align_corners=False)
    return detail.DetailDecoder()(latent)[0, 8 * scale * 8 // 2, :, :]


def transition_px(profile: torch.Tensor, channel: int) -> int:
    values = profile[:, channel]
    low, high = values.min(), values.max()
    level = (values - low) / (high - low)
    return int(((level > 0.1) & (level < 0.9)).sum())


def test_render_batch_gives_unit_scale_latents_and_valid_tokens():
    latent, tokens, size = detail.render_batch(torch.Generator().manual_seed(0), 64)
    assert latent.shape == (64, 4, 16, 16) and tokens.shape == (64, 3) and size.shape == (64, 6)
    assert 0.7 < float(latent.std()) < 1.4   # SDXL's schedule assumes about unit-variance latents
    assert int(tokens.min()) >= 1 and int(tokens.max()) < len(dm.VOCABULARY)
    again, _, _ = detail.render_batch(torch.Generator().manual_seed(0), 64)
    assert torch.equal(latent, again)


def test_the_fold_multiplies_the_waves_frequency():
    psi = torch.linspace(0, math.pi, 101)
    torch.testing.assert_close(detail.chebyshev_fold(torch.cos(psi)), torch.cos(detail.FOLD * psi), atol=1e-4, rtol=0)


def test_plain_backgrounds_ignore_the_pattern_and_objects_carry_it():
    pattern = torch.cos(2 * math.pi * torch.arange(16.0) / 4)[None, :].expand(16, 16)
    night = detail.DetailDecoder()(latent_of(palette_rgb("night")[:, None, None].expand(3, 16, 16), pattern))
    red = detail.DetailDecoder()(latent_of(palette_rgb("red")[:, None, None].expand(3, 16, 16), pattern))
    assert float(night.std(dim=(1, 2)).max()) < 1e-3
    assert float(red.std(dim=(1, 2)).max()) > 0.05


def test_edges_are_sharp_and_an_upscaled_latent_draws_them_wider():
    native, upscaled = transition_px(edge_profile("white", "night"), 0), transition_px(edge_profile("white", "night", 2), 0)
    assert native <= 3
    assert upscaled >= 2 * native - 1 and upscaled > native


def test_an_edge_mixes_only_its_two_colours():
    """White to night passes close to slate at its midpoint; the decoder must not draw a slate band."""
    profile = edge_profile("white", "night")
    white, night = palette_rgb("white"), palette_rgb("night")
    direction = (white - night) / (white - night).norm()
    off_segment = (profile - night) - ((profile - night) @ direction)[:, None] * direction
    assert float(off_segment.norm(dim=1).max()) < 0.05


def test_an_upscaled_latent_decodes_to_stripes_of_twice_the_period():
    psi = 2 * math.pi * torch.arange(32.0) / 4    # a wave of 4 latent px: stripes of 32 / FOLD px
    colour = palette_rgb("red")[:, None, None].expand(3, 16, 32)
    latent = latent_of(colour, torch.cos(psi)[None, :].expand(16, 32))

    def period(image) -> float:
        row = image[0, image.shape[1] // 2, :, 0] - image[0, image.shape[1] // 2, :, 0].mean()
        spectrum = torch.fft.rfft(row).abs()
        spectrum[0] = 0
        return row.shape[0] / float(spectrum.argmax())

    decoder = detail.DetailDecoder()
    native = period(decoder(latent))
    upscaled = period(decoder(F.interpolate(latent, scale_factor=2, mode="bicubic", align_corners=False)))
    assert native == pytest.approx(4 * dm.LATENT_SCALE / detail.FOLD, rel=0.1)
    assert upscaled == pytest.approx(2 * native, rel=0.1)


def test_encode_inverts_the_decoder_given_the_pattern():
    latent, _, _ = detail.render_batch(torch.Generator().manual_seed(3), 16)
    decoder = detail.DetailDecoder()
    with torch.no_grad():
        image = decoder(latent)
        again = decoder(detail.encode(image, detail.pattern_feature(latent)))
    assert again.shape == image.shape
    assert float((again - image).abs().mean()) < 0.01


def test_encode_without_the_pattern_keeps_the_edges_and_draws_no_stripes():
    latent, _, _ = detail.render_batch(torch.Generator().manual_seed(3), 16)
    decoder = detail.DetailDecoder()
    with torch.no_grad():
        image = decoder(latent)
        again = decoder(detail.encode(image))
    edges = [[dx.edge_width(x) for x in images.numpy()] for images in (image, again)]
    assert np.nanmedian(edges[1]) == pytest.approx(np.nanmedian(edges[0]), rel=0.15)
    finest = [np.median([dx.fine_octave_power(x)[0] for x in images.numpy()]) for images in (image, again)]
    assert finest[1] < 0.2 * finest[0]


def test_a_pixel_upscale_encodes_to_sharp_edges_where_a_latent_upscale_draws_wide_ones():
    """What a pixel-space hires fix is for: the edges of an image upscaled x2 come back from the
    encoder as the data's latents carry them, not as the bicubic latent upscale's ramp."""
    colour = torch.stack([palette_rgb("white")] * 8 + [palette_rgb("night")] * 8, dim=1)[:, None, :].expand(3, 16, 16)
    latent = latent_of(colour, torch.zeros(16, 16))
    decoder = detail.DetailDecoder()
    with torch.no_grad():
        image = decoder(latent).movedim(-1, 1)
        pixel_x2 = F.interpolate(image, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)
        through_pixels = decoder(detail.encode(pixel_x2.movedim(1, -1)))[0, 128]
        through_latent = decoder(F.interpolate(latent, scale_factor=2, mode="bicubic", align_corners=False))[0, 128]
    native = transition_px(edge_profile("white", "night"), 0)
    assert transition_px(through_pixels, 0) <= native + 1
    assert transition_px(through_latent, 0) >= 2 * native - 1


def test_training_script_writes_a_loadable_detail_model(tmp_path):
    out = tmp_path / "detail.safetensors"
    subprocess.run([sys.executable, "scripts/train_demo_model.py", "--data", "detail", "--steps", "2", "--batch", "2",
                    "--eval-seeds", "1", "--out", str(out)], cwd=comfy_runtime.REPO_ROOT, check=True,
                   capture_output=True, timeout=600)
    loaded = detail.load_detail_model(out)
    assert isinstance(loaded.decoder, detail.DetailDecoder)
    with torch.no_grad():
        image = loaded.decoder(torch.zeros(1, 4, 16, 16))
    assert image.shape == (1, 128, 128, 3)
