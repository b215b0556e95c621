"""The demo metrics on synthetic images with known answers (pure numpy, no model)."""
import numpy as np
import pytest

from cutdiff_demo import metrics as dm

SAND = (0.78, 0.68, 0.48)
RED = (0.85, 0.12, 0.12)


def _background(size=(128, 128), colour=SAND, grain=0.03, seed=0):
    rng = np.random.default_rng(seed)
    image = np.broadcast_to(np.asarray(colour), (*size, 3)).copy()
    return np.clip(image + grain * rng.standard_normal((*size, 1)), 0, 1)


def _disc(image, centre, radius, colour=RED):
    ys, xs = np.mgrid[:image.shape[0], :image.shape[1]]
    inside = (ys - centre[0]) ** 2 + (xs - centre[1]) ** 2 <= radius ** 2
    image[inside] = colour
    return image


def test_background_is_the_mode_even_when_the_object_is_large():
    image = _disc(_background(grain=0.03), (64, 64), 45)    # a flat disc on 39% of a grainy background
    median = np.median(image.reshape(-1, 3), axis=0)
    assert np.linalg.norm(median - SAND) > 0.04             # the median is pulled towards the object
    assert dm.background_colour(image) == pytest.approx(SAND, abs=0.01)
    assert dm.count_objects(image) == 1


def test_background_colour_on_a_bin_edge_is_not_split():
    edge = (0.5, 0.5, 0.5)                                 # on a bin edge of QUANT_LEVELS = 16
    image = _disc(_background(colour=edge, grain=0.02), (64, 64), 40, colour=(0.1, 0.2, 0.9))
    assert dm.background_colour(image) == pytest.approx(edge, abs=0.01)


@pytest.mark.parametrize("centres, expected", [([], 0), ([(32, 32)], 1), ([(32, 32), (96, 96)], 2),
                                               ([(20, 20), (20, 100), (100, 60)], 3)])
def test_counts_separate_objects(centres, expected):
    image = _background()
    for centre in centres:
        _disc(image, centre, 12)
    assert dm.count_objects(image) == expected


def test_touching_shapes_are_one_object_and_a_ring_is_one_object():
    image = _disc(_disc(_background(), (64, 50), 14), (64, 75), 14)
    assert dm.count_objects(image) == 1
    ring = _disc(_disc(_background(), (64, 64), 30), (64, 64), 18, colour=SAND)
    assert dm.object_areas(ring) == [pytest.approx(np.pi * (30 ** 2 - 18 ** 2), rel=0.05)]


def test_specks_below_the_minimum_area_and_faint_blobs_are_not_objects():
    image = _disc(_background(), (40, 40), 4)                          # ~50 px < MIN_AREA_PX
    _disc(image, (90, 90), 20, colour=np.asarray(SAND) + 0.1)          # distance 0.17 < OBJECT_DISTANCE
    assert dm.count_objects(image) == 0
    assert dm.count_objects(image, min_area=16) == 1


def test_connected_components_labels_match_a_flood_fill():
    rng = np.random.default_rng(1)
    mask = rng.random((40, 50)) < 0.55
    labels = dm.connected_components(mask)
    assert (labels[~mask] == -1).all()
    for y, x in zip(*np.nonzero(mask)):   # every 4-neighbour inside the mask shares the label
        if y + 1 < 40 and mask[y + 1, x]:
            assert labels[y + 1, x] == labels[y, x]
        if x + 1 < 50 and mask[y, x + 1]:
            assert labels[y, x + 1] == labels[y, x]
    # ...and different labels are really apart: count components with a plain BFS.
    seen, components = np.zeros_like(mask), 0
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        components += 1
        stack = [start]
        seen[start] = True
        while stack:
            y, x = stack.pop()
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < 40 and 0 <= nx < 50 and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
    assert len(np.unique(labels[mask])) == components


def test_contrast_falls_as_the_object_fades():
    strong = _disc(_background(), (64, 64), 25)
    faint_colour = 0.6 * np.asarray(SAND) + 0.4 * np.asarray(RED)
    faint = _disc(_background(), (64, 64), 25, colour=faint_colour)
    expected = np.linalg.norm(np.asarray(RED) - SAND)
    assert dm.object_contrast(strong) == pytest.approx(expected, rel=0.05)
    assert dm.object_contrast(faint) == pytest.approx(0.4 * expected, rel=0.1)
    assert dm.object_contrast(_background()) == 0.0


def test_summary_of_counts():
    summary = dm.summarise_counts([1, 1, 0, 2])
    assert (summary.images, summary.one, summary.none, summary.mean) == (4, 0.5, 0.25, 1.0)


def test_seam_score_finds_a_step_on_the_given_line_only():
    image = _background(size=(96, 128), grain=0.02)
    image[:, 64:] += 0.1                                   # a window border at x = 64
    image[48:, :] -= 0.05                                  # and a weaker one at y = 48
    assert dm.seam_score(image, cols=[64]) > 8
    assert dm.seam_score(image, rows=[48]) > 2
    assert dm.seam_score(image, rows=[48], cols=[64]) > 4
    assert dm.seam_score(image, cols=[32]) < 1


def test_seam_score_is_about_one_without_seams():
    image = _disc(_background(grain=0.03), (48, 48), 12)  # an object, but not on the lines
    assert dm.seam_score(image, rows=[32, 64], cols=[32, 64, 96]) == pytest.approx(1.0, abs=0.3)
    with pytest.raises(ValueError, match="border line"):
        dm.seam_score(image, rows=[0], cols=[128])


def _shape(kind, stretch=1.0, angle=0.3, radius=30, size=160):
    """A demo-style shape drawn `stretch` times taller than wide, on the background."""
    image = _background((size, size))
    ys, xs = np.mgrid[:size, :size].astype(float)
    dy, dx = (ys - size / 2) / (radius * stretch), (xs - size / 2) / radius
    u, v = np.cos(angle) * dx + np.sin(angle) * dy, np.cos(angle) * dy - np.sin(angle) * dx
    if kind == "circle":
        inside = u ** 2 + v ** 2 <= 1
    elif kind == "square":
        inside = np.maximum(abs(u), abs(v)) <= 0.8
    else:  # triangle: three half-planes
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            a = np.pi / 2 + 2 * np.pi * k / 3
            inside &= u * np.cos(a) + v * np.sin(a) <= 0.55
    image[inside] = RED
    return image


@pytest.mark.parametrize("kind", ["circle", "square", "triangle"])
@pytest.mark.parametrize("angle", [0.0, 0.3, 1.0])
def test_aspect_is_one_for_every_rotation_and_the_stretch_when_stretched(kind, angle):
    assert dm.object_aspect(_shape(kind, angle=angle)) == pytest.approx(1.0, abs=0.05)
    assert dm.object_aspect(_shape(kind, 2.0, angle, radius=25)) == pytest.approx(2.0, rel=0.06)
    assert dm.object_aspect(_shape(kind, 0.5, angle, radius=50)) == pytest.approx(0.5, rel=0.06)


def test_aspect_looks_at_the_largest_object_and_is_nan_without_one():
    image = _disc(_shape("circle", 2.0, radius=25), (20, 20), 10)   # a small disc beside a tall ellipse
    assert dm.count_objects(image) == 2
    assert dm.object_aspect(image) == pytest.approx(2.0, rel=0.06)
    assert np.isnan(dm.object_aspect(_background()))


def _wavy_background(size=(192, 192), grain=0.03, seed=0):
    """The native-like background: the demo data's low-frequency waves plus per-pixel grain."""
    ys, xs = np.mgrid[:size[0], :size[1]].astype(float)
    waves = 0.04 * np.sin(2 * np.pi * (0.6 * xs + 0.8 * ys) / 48)[..., None]
    return np.clip(_background(size, grain=grain, seed=seed) + waves, 0, 1)


def test_background_texture_scales_with_the_grain_and_ignores_the_waves():
    native = dm.background_texture(_wavy_background(grain=0.03))
    assert dm.background_texture(_wavy_background(grain=0.0)) < 0.05 * native     # flat but wavy: no texture
    assert dm.background_texture(_wavy_background(grain=0.06)) == pytest.approx(4 * native, rel=0.1)
    other_seed = dm.background_texture(_wavy_background(grain=0.03, seed=7))
    assert other_seed == pytest.approx(native, rel=0.05)


def test_background_texture_sees_latent_scale_colour_grain():
    rng = np.random.default_rng(3)
    blocks = np.repeat(np.repeat(0.04 * rng.standard_normal((24, 24, 3)), 8, axis=0), 8, axis=1)
    grainy = np.clip(_wavy_background() + blocks, 0, 1)
    assert dm.background_texture(grainy) > 1.8 * dm.background_texture(_wavy_background())   # ~2.1 measured


def test_background_texture_excludes_the_objects():
    plain = _wavy_background()
    striped = _disc(plain.copy(), (96, 96), 40)
    ys, xs = np.mgrid[:192, :192]
    inside = (ys - 96) ** 2 + (xs - 96) ** 2 <= 40 ** 2
    striped[inside & (xs % 4 < 2)] = (0.95, 0.30, 0.30)       # a strongly textured object
    assert dm.count_objects(striped) == 1
    assert dm.background_texture(striped) == pytest.approx(dm.background_texture(plain), rel=0.1)
    assert dm.background_mask(striped, 16)[96, 96] == False   # noqa: E712  (numpy bool)
    filled = _disc(plain.copy(), (96, 96), 150)                 # an object over the whole image
    assert np.isnan(dm.background_texture(filled)) or dm.count_objects(filled) == 0


def test_texture_relative_to_the_reference_weighs_every_group_once():
    reference = {"sand": [4.0, 4.0], "night": [1.0, 1.0]}
    assert dm.relative_to_reference({"sand": [4.0], "night": [2.0]}, reference) == pytest.approx(1.5)
    assert dm.relative_to_reference({"sand": [8.0, np.nan], "night": [1.0]}, reference) == pytest.approx(1.5)
    assert np.isnan(dm.relative_to_reference({"sand": [np.nan]}, reference))
