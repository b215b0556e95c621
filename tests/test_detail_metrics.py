"""The detail metrics: synthetic images with known answers, then the yardstick's validity on the detail
proxy's own samples (native vs enlarged layouts), as FID_r / FID_crop are validated."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from cutdiff_demo import detail
from cutdiff_demo import detail_metrics as dx
from cutdiff_demo import model as dm

SAND = np.array((0.78, 0.68, 0.48))
RED = np.array((0.85, 0.12, 0.12))


def _grid(size):
    ys, xs = np.mgrid[:size, :size].astype(float)
    return ys, xs


def _disc(size=128, radius=30.0, ramp=1.0, stripes=None, angle=0.4, colour=RED):
    """A disc whose outline rises linearly over `ramp` px (0-100%), optionally with grey stripes of
    period `stripes` px inside, on a plain sand background."""
    ys, xs = _grid(size)
    r = np.hypot(ys - size / 2, xs - size / 2)
    t = np.clip((radius - r) / ramp + 0.5, 0, 1)[..., None]
    image = SAND + t * (colour - SAND)
    if stripes:
        along = np.cos(angle) * xs + np.sin(angle) * ys
        image = image + t * 0.1 * np.cos(2 * np.pi * along / stripes)[..., None]
    return np.clip(image, 0, 1)


def _waves(period, size=128, angle=0.4):
    ys, xs = _grid(size)
    grey = 0.5 + 0.3 * np.cos(2 * np.pi * (np.cos(angle) * xs + np.sin(angle) * ys) / period)
    return np.repeat(grey[..., None], 3, axis=-1)


# --------------------------------------------------------------------------- synthetic images

def test_edge_width_is_the_10_to_90_percent_rise_even_below_one_pixel():
    for ramp in (0.5, 1.0, 4.0):   # a linear ramp rises 10-90% over 0.8 of its width
        assert dx.edge_width(_disc(ramp=ramp)) == pytest.approx(0.8 * ramp, rel=0.15, abs=0.1)
    assert dx.edge_width(_disc(ramp=4.0)) > 3 * dx.edge_width(_disc(ramp=1.0))


def test_edge_width_ignores_grey_stripes_and_needs_an_object():
    assert dx.edge_width(_disc(stripes=5.0)) == pytest.approx(dx.edge_width(_disc()), abs=0.1)
    assert np.isnan(dx.edge_width(np.broadcast_to(SAND, (128, 128, 3)).copy()))


def test_fine_octave_power_of_noise_stripes_and_smooth_images():
    noise = np.random.default_rng(0).random((128, 128, 3))
    finest, next_octave = dx.fine_octave_power(noise)      # white: power in proportion to the bands' areas
    assert finest == pytest.approx(1 - np.pi / 16, abs=0.03)
    assert next_octave == pytest.approx(np.pi * (1 / 16 - 1 / 64), abs=0.02)
    assert dx.fine_octave_power(_waves(3.0))[0] > 0.9
    assert dx.fine_octave_power(_waves(6.0))[1] > 0.9
    assert max(dx.fine_octave_power(_waves(12.0))) < 0.05


def test_fine_octave_power_is_a_fraction_that_does_not_depend_on_the_size():
    for size in (128, 256):   # equal power at periods 3 and 6 px
        finest, next_octave = dx.fine_octave_power((_waves(3.0, size) + _waves(6.0, size, angle=1.1)) / 2)
        assert (finest, next_octave) == pytest.approx((0.5, 0.5), abs=0.03)


@pytest.mark.parametrize("period", [5.3, 6.0, 8.0, 12.0])
def test_stripe_period_inside_the_object(period):
    assert dx.stripe_period(_disc(radius=40, stripes=period)) == pytest.approx(period, rel=0.04)


def test_stripe_period_is_nan_without_an_object_or_room_for_stripes():
    assert np.isnan(dx.stripe_period(np.broadcast_to(SAND, (128, 128, 3)).copy()))
    small = _disc(radius=8, stripes=6.0)
    assert dx.object_count_detail(small) == 1 and np.isnan(dx.stripe_period(small))


def _coarse_sand(size, plateau_px, seed=0):
    """Sand whose light and dark phases (0.3 apart, past metrics.OBJECT_DISTANCE) form plateaus of about
    `plateau_px`: the texture of a late re-entry on an upscaled latent."""
    rng = np.random.default_rng(seed)
    cells = -(-size // plateau_px)
    phase = np.repeat(np.repeat(rng.random((cells, cells)) < 0.5, plateau_px, 0), plateau_px, 1)[:size, :size]
    return np.clip(SAND + np.where(phase, 0.12, -0.18)[..., None], 0, 1)


def _paste_disc(image, cy, cx, radius, colour=RED):
    ys, xs = _grid(image.shape[0])
    image[np.hypot(ys - cy, xs - cx) < radius] = colour
    return image


def test_object_count_ignores_texture_at_the_image_scale_and_keeps_native_sized_repeats():
    one = _paste_disc(_coarse_sand(512, 8), 256, 256, 120)
    assert dx.object_count_detail(one) == 1
    assert dx.object_aspect_detail(one) == pytest.approx(1.0, abs=0.05)
    repeated = _paste_disc(one.copy(), 60, 60, 24)           # a second subject drawn at native scale
    assert dx.object_count_detail(repeated) == 2
    assert dx.object_contrast_detail(one) > 0.5 and dx.object_contrast_detail(_coarse_sand(512, 8)) == 0.0


def test_frechet_distance_of_known_gaussians():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((4000, 4))
    assert dx.frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    assert dx.frechet_distance(a, a + [3, 0, 0, 0]) == pytest.approx(9, rel=1e-3)
    wide = 2 * rng.standard_normal((4000, 4))                 # per dimension (1 - 2)^2: FD = 4
    assert dx.frechet_distance(a, wide) == pytest.approx(4, rel=0.1)
    assert dx.frechet_distance(wide, a) == pytest.approx(dx.frechet_distance(a, wide), rel=1e-6)
    few = dx.frechet_distance(rng.standard_normal((3, 8)), rng.standard_normal((3, 8)))  # N < D: singular covariances
    assert np.isfinite(few) and few > 0


def test_feature_shapes_and_crops_at_the_pixel_scale():
    net = dx.FeatureNet()
    rng = np.random.default_rng(3)
    images = rng.random((2, 256, 192, 3)).astype(np.float32)
    assert dx.whole_image_features(net, images).shape == (2, dx.FEATURE_DIM)
    crops = dx.crop_features(net, images, crop=64, per_image=3, seed=5)
    assert crops.shape == (6, dx.FEATURE_DIM)
    np.testing.assert_array_equal(crops, dx.crop_features(net, images, crop=64, per_image=3, seed=5))
    native = rng.random((2, 128, 128, 3)).astype(np.float32)   # a 2x nearest enlargement reads as its original
    enlarged = np.repeat(np.repeat(native, 2, axis=1), 2, axis=2)
    np.testing.assert_allclose(dx.whole_image_features(net, enlarged), dx.whole_image_features(net, native), atol=1e-5)


# --------------------------------------------------------------------------- validity on the detail proxy

SCENES = 80   # ~64 of them native-size with one object: two disjoint sets of 24


def _bicubic_x2(images: torch.Tensor) -> torch.Tensor:
    return F.interpolate(images, scale_factor=2, mode="bicubic", align_corners=False)


@pytest.fixture(scope="module")
def samples():
    """Native-size scenes with one object in two disjoint sets, and x2 enlargements of the first set's
    layouts: the image upscaled in pixel space, and the latent upscaled, then decoded."""
    latent, token_ids, size_cond = detail.render_batch(torch.Generator().manual_seed(1), SCENES)
    decoder = detail.DetailDecoder()
    with torch.no_grad():
        images = decoder(latent).numpy()
        native = [i for i in range(SCENES)
                  if (size_cond[i, :2] == dm.NATIVE_SIZE_PX).all() and dx.object_count_detail(images[i]) == 1]
        first, second = native[:24], native[24:48]
        assert len(second) == 24
        latent_x2 = decoder(_bicubic_x2(latent[first])).numpy()
        pixel_x2 = rearrange(_bicubic_x2(rearrange(torch.from_numpy(images[first]), "b h w c -> b c h w")).clamp(0, 1),
                             "b c h w -> b h w c").numpy()
    periods = np.array([detail.stripe_period_px(dm.VOCABULARY[token]) for token in token_ids[first, 1]])
    return {"native": images[first], "other native": images[second], "pixel x2": pixel_x2, "latent x2": latent_x2,
            "periods": periods}


ENLARGED = ["pixel x2", "latent x2"]


def _median(metric, images):
    return np.nanmedian([metric(image) for image in images], axis=0)


def test_enlarged_samples_keep_one_object(samples):
    for name in ["native", "other native", *ENLARGED]:
        assert all(dx.object_count_detail(image) == 1 for image in samples[name]), name


@pytest.fixture(scope="module")
def feature_net():
    return dx.load_feature_net()


def test_a_missing_feature_net_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="scripts/train_detail_features.py writes it"):
        dx.load_feature_net(tmp_path / "missing.safetensors")


def test_crop_frechet_distance_sees_magnified_detail_and_the_resized_one_does_not(samples, feature_net):
    reference_crops = dx.crop_features(feature_net, samples["other native"], seed=1)
    reference_whole = dx.whole_image_features(feature_net, samples["other native"])

    def fid_crop(name):
        return dx.frechet_distance(dx.crop_features(feature_net, samples[name], seed=0), reference_crops)

    def fid_r(name):
        return dx.frechet_distance(dx.whole_image_features(feature_net, samples[name]), reference_whole)

    for name in ENLARGED:
        assert fid_crop(name) > 2 * fid_crop("native"), name   # the floor: other native samples
        assert fid_r(name) < 1.5 * fid_r("native"), name       # resized back, the layout is native


def test_enlarged_edges_are_wider(samples):
    native = _median(dx.edge_width, samples["native"])
    for name in ENLARGED:
        assert _median(dx.edge_width, samples[name]) > 1.5 * native, name


def test_enlarged_images_lose_the_finest_octave(samples):
    native = _median(dx.fine_octave_power, samples["native"])
    for name in ENLARGED:
        finest, next_octave = _median(dx.fine_octave_power, samples[name])
        assert finest < 0.25 * native[0] and next_octave < 0.5 * native[1], name


def test_stripes_are_the_prompted_period_and_twice_it_enlarged(samples):
    native = np.array([dx.stripe_period(image) for image in samples["native"]])
    assert np.nanmedian(native / samples["periods"]) == pytest.approx(1, abs=0.05)
    for name in ENLARGED:
        enlarged = np.array([dx.stripe_period(image) for image in samples[name]])
        assert np.nanmedian(enlarged / native) == pytest.approx(2, abs=0.1), name
