"""Image metrics for the demo model: object count, object contrast, aspect, seam score, background texture.

Pure numpy and einops (no ComfyUI). Images are float arrays ``[H, W, 3]`` in [0, 1], as one image of a
ComfyUI IMAGE batch. The demo data has one object on a mildly textured background, so:

- the background colour is the most common colour (the mode of quantised colours; a median
  is pulled towards the object, the more so the larger it is);
- objects are the connected groups of pixels far from that colour, above a minimum area
  (the background's grain and small speckles stay below it);
- contrast is how far object pixels are from the background (a faint, washed-out object
  scores low even where it is still counted);
- the aspect is the largest object's height over its width from second moments: all five
  demo shapes have a rotation-independent aspect of 1, so it measures stretching;
- the seam score compares the gradient energy across given window-border lines with the
  energy across every other line of pixels (1 = no seam);
- the background texture is the high-frequency energy of the background away from the
  objects: windowed methods leave latent-scale colour grain there that native-size samples
  do not have, and a washed-out method leaves it flatter than native.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from einops import reduce

OBJECT_DISTANCE = 0.25   # RGB distance from the background that makes a pixel "object"
FAINT_DISTANCE = 0.12    # lower bar for contrast: above the background's grain, catches faint objects
MIN_AREA_PX = 128        # an 11 x 11 px blob; the demo's smallest objects cover ~900 px at native size
QUANT_LEVELS = 16        # per channel, for the background mode


def background_colour(image: np.ndarray, levels: int = QUANT_LEVELS, block: int = 4) -> np.ndarray:
    """The most common colour: the mode of the quantised colours of `block`-px block means.

    The block means take the background's per-pixel grain out (it would otherwise spread the
    background over several bins and let a smaller but flat object win); the mode counts each
    bin together with its neighbours, so a background colour on a bin edge is not split in two.
    """
    h, w = (image.shape[0] // block) * block, (image.shape[1] // block) * block
    pixels = reduce(image[:h, :w], "(h b1) (w b2) c -> (h w) c", "mean", b1=block, b2=block)
    bins = np.clip((pixels * levels).astype(np.int64), 0, levels - 1)
    histogram = np.zeros((levels + 2,) * 3)
    np.add.at(histogram, tuple((bins + 1).T), 1)
    neighbourhood = sum(np.roll(histogram, shift, axis=(0, 1, 2))
                        for shift in itertools.product((-1, 0, 1), repeat=3))
    mode = np.array(np.unravel_index(neighbourhood.argmax(), neighbourhood.shape)) - 1
    return pixels[(np.abs(bins - mode) <= 1).all(axis=1)].mean(axis=0)


def distance_from_background(image: np.ndarray) -> np.ndarray:
    """Per-pixel RGB distance [H, W] from the background colour."""
    return np.linalg.norm(image - background_colour(image), axis=-1)


def connected_components(mask: np.ndarray) -> np.ndarray:
    """Labels [H, W] of the 4-connected components of a boolean mask (-1 outside it).

    Union-find by min-label hooking and pointer jumping, vectorised over all edges; each round
    at least halves the number of disagreeing edges' roots, so it takes a few dozen rounds.
    """
    h, w = mask.shape
    index = np.arange(h * w).reshape(h, w)
    right = mask[:, :-1] & mask[:, 1:]
    down = mask[:-1, :] & mask[1:, :]
    a = np.concatenate([index[:, :-1][right], index[:-1, :][down]])
    b = np.concatenate([index[:, 1:][right], index[1:, :][down]])
    parent = np.arange(h * w)
    while True:
        root_a, root_b = parent[a], parent[b]
        differ = root_a != root_b
        if not differ.any():
            break
        low = np.minimum(root_a[differ], root_b[differ])
        high = np.maximum(root_a[differ], root_b[differ])
        np.minimum.at(parent, high, low)  # hook the higher root under the lower one
        while True:  # compress paths until every pixel points at its root
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    return np.where(mask, parent.reshape(h, w), -1)


def _components(far: np.ndarray, min_area: int) -> tuple[np.ndarray, np.ndarray]:
    """Component labels of `far` and the ids of those of at least `min_area` px, largest first."""
    labels = connected_components(far)
    ids, areas = np.unique(labels[far], return_counts=True)
    order = np.argsort(-areas, kind="stable")
    return labels, ids[order][areas[order] >= min_area]


def _objects(far: np.ndarray, min_area: int) -> np.ndarray:
    """Mask of the pixels of `far` that belong to components of at least `min_area` px."""
    labels, ids = _components(far, min_area)
    return np.isin(labels, ids)


def object_masks(image: np.ndarray, distance: float = OBJECT_DISTANCE,
                 min_area: int = MIN_AREA_PX) -> list[np.ndarray]:
    """Boolean masks [H, W] of the objects found in the image, largest first."""
    labels, ids = _components(distance_from_background(image) > distance, min_area)
    return [labels == i for i in ids]


def object_areas(image: np.ndarray, distance: float = OBJECT_DISTANCE, min_area: int = MIN_AREA_PX) -> list[int]:
    """Areas in px of the objects found in the image, largest first."""
    return [int(mask.sum()) for mask in object_masks(image, distance, min_area)]


def count_objects(image: np.ndarray, distance: float = OBJECT_DISTANCE, min_area: int = MIN_AREA_PX) -> int:
    return len(object_areas(image, distance, min_area))


def object_contrast(image: np.ndarray, distance: float = FAINT_DISTANCE, min_area: int = MIN_AREA_PX) -> float:
    """Mean RGB distance from the background over the object pixels (0 if there are none).

    Object pixels here use a lower bar than counting (`distance`, above the background's grain),
    so a washed-out object still shows up, with a low value. Comparable between images only
    relative to a reference (e.g. native-size samples of the same prompts): the caller divides
    the mean over its images by the reference's mean.
    """
    far = distance_from_background(image)
    objects = _objects(far > distance, min_area)
    return float(far[objects].mean()) if objects.any() else 0.0


def object_aspect(image: np.ndarray, distance: float = OBJECT_DISTANCE, min_area: int = MIN_AREA_PX) -> float:
    """The largest object's stretch: sqrt(variance of its rows / variance of its columns); NaN if none.

    Circle, ring, square, cross and triangle (3- and 4-fold symmetry) all have an isotropic second
    moment whatever their rotation, so an undistorted demo object scores 1 and one drawn at twice
    its height scores 2. An object cut by the image edge scores off 1 too: compare medians.
    """
    masks = object_masks(image, distance, min_area)
    if not masks:
        return float("nan")
    ys, xs = np.nonzero(masks[0])
    return float(np.sqrt(ys.var() / max(xs.var(), 1e-12)))


@dataclass(frozen=True)
class CountSummary:
    images: int
    one: float    # fraction of images with exactly one object
    none: float   # fraction with no object
    mean: float   # mean object count

    def __str__(self) -> str:
        return f"one object {self.one:.0%}, none {self.none:.0%}, mean count {self.mean:.2f} over {self.images} images"


def summarise_counts(counts) -> CountSummary:
    counts = np.asarray(list(counts))
    return CountSummary(len(counts), float((counts == 1).mean()), float((counts == 0).mean()), float(counts.mean()))


def seam_score(image: np.ndarray, rows: list[int] = (), cols: list[int] = ()) -> float:
    """Gradient energy across the given border lines over the mean across all other lines.

    A border at row ``y`` is the line between pixel rows ``y - 1`` and ``y`` (a window starting
    at ``y``); likewise for columns. 1 = the borders look like anywhere else; a visible seam
    scores well above 1. Lines at 0 or at the image edge are ignored.
    """
    image = np.asarray(image, dtype=np.float64)
    across_rows = (np.diff(image, axis=0) ** 2).sum(axis=-1).mean(axis=1)   # [H - 1]: line y -> y + 1
    across_cols = (np.diff(image, axis=1) ** 2).sum(axis=-1).mean(axis=0)   # [W - 1]
    row_lines = sorted({y - 1 for y in rows if 0 < y < image.shape[0]})
    col_lines = sorted({x - 1 for x in cols if 0 < x < image.shape[1]})
    if not row_lines and not col_lines:
        raise ValueError("seam_score needs at least one border line inside the image")
    on = np.concatenate([across_rows[row_lines], across_cols[col_lines]])
    off = np.concatenate([np.delete(across_rows, row_lines), np.delete(across_cols, col_lines)])
    return float(on.mean() / max(off.mean(), 1e-12))


TEXTURE_RADIUS = 8   # px of the box blur the high-pass subtracts: one latent pixel each side, so it keeps
                     # the decoder's grain and latent-scale colour noise and drops the background's waves
                     # (periods of 32 px and more)
EDGE_MARGIN = 8      # px beyond the blur radius kept away from objects: their anti-aliased edges stay out


def box_mean(image: np.ndarray, radius: int) -> np.ndarray:
    """Mean over the (2 radius + 1)^2 box around each pixel (edges reflected), same shape as `image`."""
    width = 2 * radius + 1
    pad = [(radius, radius), (radius, radius)] + [(0, 0)] * (image.ndim - 2)
    padded = np.pad(np.asarray(image, dtype=np.float64), pad, mode="reflect")
    for axis in (0, 1):
        csum = np.cumsum(padded, axis=axis)
        csum = np.concatenate([np.zeros_like(csum.take([0], axis=axis)), csum], axis=axis)
        length = padded.shape[axis] - width + 1
        padded = (csum.take(np.arange(width, width + length), axis=axis)
                  - csum.take(np.arange(length), axis=axis)) / width
    return padded


def background_mask(image: np.ndarray, margin: int) -> np.ndarray:
    """Pixels [H, W] at least `margin` px from every counted object and from the image border."""
    objects = np.zeros(image.shape[:2], dtype=bool)
    for mask in object_masks(image):
        objects |= mask
    away = box_mean(objects.astype(np.float64), margin) == 0 if objects.any() else ~objects
    away[:margin], away[-margin:], away[:, :margin], away[:, -margin:] = False, False, False, False
    return away


def background_texture(image: np.ndarray, radius: int = TEXTURE_RADIUS) -> float:
    """Mean squared high-pass (image minus its box blur, summed over RGB) over the background; NaN
    where no background is left. Absolute values depend on the background kind (sand is grainier
    than night): compare with native-size samples of the same prompts (`relative_to_reference`)."""
    image = np.asarray(image, dtype=np.float64)
    mask = background_mask(image, radius + EDGE_MARGIN)
    if not mask.any():
        return float("nan")
    high = image - box_mean(image, radius)
    return float((high[mask] ** 2).sum(axis=-1).mean())


def relative_to_reference(values: dict, reference: dict) -> float:
    """Mean over the groups (e.g. prompts) of mean(values[g]) / mean(reference[g]), NaNs skipped.

    Per group first, so every background kind weighs the same: one grainy prompt does not decide
    the figure."""
    ratios = [_finite_mean(values[g]) / _finite_mean(reference[g]) for g in values if g in reference]
    ratios = [r for r in ratios if np.isfinite(r)]
    return float(np.mean(ratios)) if ratios else float("nan")


def _finite_mean(values) -> float:
    values = np.asarray(list(values), dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")
