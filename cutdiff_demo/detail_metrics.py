"""Detail metrics: does an image carry detail drawn at its own resolution, or an enlarged layout?

Pure numpy, torch and einops (no ComfyUI). Images are float arrays ``[H, W, 3]`` in [0, 1], as one
image of a ComfyUI IMAGE batch, any size. The detail proxy's decoder (cutdiff_demo.detail) draws
every fine structure at the scale its latent has, so an image whose layout was made at native size
and then enlarged (a pixel or latent upscale) shows *magnified* detail: wider edges, coarser stripes,
less power at the finest scales. These metrics measure that, mirroring the two Fréchet distances
high-resolution papers report:

- FID_r: the images resized to the native size (128 px) against native samples. Resizing
  throws the fine detail away, so this compares layouts: an enlarged native layout scores well.
- FID_crop: crops at the image's own pixel scale against crops of native samples. This compares
  detail: magnified detail scores badly however good the layout is.

Both use a small feature network trained on the detail proxy's images (``FeatureNet``,
scripts/train_detail_features.py) in place of Inception, plus direct measurements of the
decoder's fine structures: edge width, fine-octave power and stripe period.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from einops import einsum, rearrange, reduce

from . import metrics

FEATURES_PATH = Path(__file__).resolve().parents[1] / "models" / "cutdiffusion_detail_features.safetensors"
NATIVE_PX = 128                  # the demo models' native size
LUMA = np.array([0.299, 0.587, 0.114])
GREY = np.ones(3) / np.sqrt(3)
BACKGROUND_BLUR_PX = 3           # box radius that averages the background texture before its colour is taken
INTERIOR_PX = 4                  # erosion that keeps the outline out of an object's interior
EDGE_BAND_PX = 3                 # each side of the object mask's boundary: holds a 2x-magnified edge
EDGE_LEVELS = (0.1, 0.9)         # the edge's rise is measured between these fractions of it
GREY_WEIGHT = 0.3                # of the grey component of colour differences, for the edge's level
MIN_STRIPE_AREA_PX = 100         # eroded object pixels below which there is no period to measure


def luminance(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, dtype=np.float64) @ LUMA


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    return metrics.box_mean(mask.astype(np.float64), radius) > 1 - 1e-9


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    return metrics.box_mean(mask.astype(np.float64), radius) > 1e-9


def _cell_gradient(field: np.ndarray) -> np.ndarray:
    """|grad| [H - 1, W - 1] on 2 x 2 cells (forward differences, averaged across the cell)."""
    gy, gx = np.diff(field, axis=0), np.diff(field, axis=1)
    return np.hypot((gy[:, :-1] + gy[:, 1:]) / 2, (gx[:-1] + gx[1:]) / 2)


def background_colour(image: np.ndarray) -> np.ndarray:
    """metrics.background_colour of the image lightly blurred.

    The detail proxy's sand and grass carry a high-contrast texture. At native size its light and
    dark phases mix within metrics' 4 px blocks, but magnified x2 the light phase forms plateaus
    of whole blocks, the block mode lands on it (~0.1 off the mean colour), and the dark phase
    then crosses metrics.OBJECT_DISTANCE: up to ~30 "objects" (in 4 of 64 native samples upscaled x2,
    in pixels or in the latent), and a largest object merged with texture. Averaging over
    7 x 7 px first removes the texture at both scales.
    """
    return metrics.background_colour(metrics.box_mean(image, BACKGROUND_BLUR_PX))


def object_masks(image: np.ndarray) -> list[np.ndarray]:
    """As metrics.object_masks (same distance and minimum area), from the blurred background colour.

    Distances are taken on the image itself, so the masks keep the objects' sharp outlines."""
    far = np.linalg.norm(image - background_colour(image), axis=-1) > metrics.OBJECT_DISTANCE
    labels, ids = metrics._components(far, metrics.MIN_AREA_PX)
    return [labels == i for i in ids]


def counting_masks(image: np.ndarray) -> list[np.ndarray]:
    """Object masks for counting, aspect and contrast, from the image blurred at its own scale.

    A model that draws the background texture at the layout's scale (a latent upscale re-entered late)
    leaves sand and grass plateaus ~4x wider at 16x area than at native size: with distances taken on
    the sharp image, 40 such plateaus counted as objects in one 512 px image. Blurring over 7 px per
    native size (the image's linear scale) and asking an object to cover 128 px per native size
    removes the texture at every scale while an object drawn at native scale (30 px or more across at
    native size) stays. At native size this is BACKGROUND_BLUR_PX and metrics.MIN_AREA_PX."""
    scale = max(1.0, float(np.sqrt(image.shape[0] * image.shape[1])) / NATIVE_PX)
    blurred = metrics.box_mean(image, max(BACKGROUND_BLUR_PX, round(BACKGROUND_BLUR_PX * scale)))
    far = np.linalg.norm(blurred - metrics.background_colour(blurred), axis=-1) > metrics.OBJECT_DISTANCE
    labels, ids = metrics._components(far, round(metrics.MIN_AREA_PX * scale))
    return [labels == i for i in ids]


def object_count_detail(image: np.ndarray) -> int:
    """metrics.count_objects, robust to background texture at any scale (see counting_masks)."""
    return len(counting_masks(image))


def object_aspect_detail(image: np.ndarray) -> float:
    """metrics.object_aspect on the largest of counting_masks; NaN without an object."""
    masks = counting_masks(image)
    if not masks:
        return float("nan")
    ys, xs = np.nonzero(masks[0])
    return float(np.sqrt(ys.var() / max(xs.var(), 1e-12)))


def object_contrast_detail(image: np.ndarray) -> float:
    """Mean RGB distance from the background over the pixels of counting_masks (0 without an object);
    comparable between images only relative to a reference, as metrics.object_contrast."""
    masks = counting_masks(image)
    if not masks:
        return 0.0
    objects = np.logical_or.reduce(masks)
    return float(np.linalg.norm(image[objects] - background_colour(image), axis=-1).mean())


def _largest_object(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The largest object's mask and its interior (eroded by INTERIOR_PX); both empty without one."""
    masks = object_masks(image)
    mask = masks[0] if masks else np.zeros(image.shape[:2], dtype=bool)
    return mask, _erode(mask, INTERIOR_PX)


def edge_width(image: np.ndarray) -> float:
    """The largest object's outline transition: its 10-90% rise distance in px, averaged along it.

    Each pixel's level t runs from 0 (background colour) to 1 (the object's median colour)
    along their colour difference, with the difference's grey component weighted down
    (GREY_WEIGHT): the detail proxy's stripes and textures are grey, and would otherwise read as
    transition. The width is the number of pixels near the outline with t between 0.1 and 0.9
    over the outline's length: a point-sampled ramp of width w puts on average w such pixels per
    px of outline, whatever its sub-pixel position, so this resolves widths of 1-2 px and below.
    The rise over the steepest slope does not: it cannot measure less than the one pixel a
    slope is taken over (on an earlier detail decoder with sub-pixel outlines it gave a latent
    x2 upscale 1.2 times the native width; this gives 2). NaN without an object.
    """
    mask, interior = _largest_object(image)
    if not interior.any():
        return float("nan")
    background = background_colour(image)
    difference = np.median(image[interior], axis=0) - background
    damp = np.eye(3) - (1 - GREY_WEIGHT ** 2) * np.outer(GREY, GREY)
    t = (image - background) @ (damp @ difference) / (difference @ damp @ difference)
    band = _dilate(mask, EDGE_BAND_PX) & ~_erode(mask, EDGE_BAND_PX)
    rising = band & (t > EDGE_LEVELS[0]) & (t < EDGE_LEVELS[1])
    return float(rising.sum() / _outline_length(mask))


def _outline_length(mask: np.ndarray) -> float:
    """Length in px of a mask's outline: the total gradient of the mask slightly blurred, which,
    unlike a count of boundary pixels, does not depend on the outline's direction."""
    return float(_cell_gradient(metrics.box_mean(mask.astype(np.float64), 2)).sum())


def _radial_frequency(shape: tuple[int, int]) -> np.ndarray:
    """|f| in cycles per px of each bin of an rfft2 of that shape."""
    return np.hypot(*np.meshgrid(np.fft.fftfreq(shape[0]), np.fft.rfftfreq(shape[1]), indexing="ij"))


def fine_octave_power(image: np.ndarray) -> tuple[float, float]:
    """Fractions of the luminance's power at periods under 4 px and at 4-8 px.

    The luminance, mean removed and under a 2-D Hann window (the image's borders would otherwise
    leak a step's power into every frequency), as fractions of its total power: a magnified
    image moves every octave's power one octave down, so the finest octave empties, while the
    fractions of an image with the same kind of detail at its own pixel scale do not depend on
    its size. The finest octave includes the spectrum's corners (diagonal periods down to 1.4 px).
    """
    y = luminance(image)
    window = np.outer(np.hanning(y.shape[0]), np.hanning(y.shape[1]))
    power = np.abs(np.fft.rfft2((y - y.mean()) * window)) ** 2
    f = _radial_frequency(y.shape)
    total = max(power.sum(), 1e-20)
    return float(power[f >= 1 / 4].sum() / total), float(power[(f >= 1 / 8) & (f < 1 / 4)].sum() / total)


def stripe_period(image: np.ndarray) -> float:
    """Dominant period in px of the luminance pattern inside the largest object; NaN if none.

    The object's mask, eroded so that its outline does not count and softened so that its own
    border does not ring, weighs the mean-removed luminance; the period is the inverse of the
    peak of its zero-padded 2-D power spectrum (a power-weighted centroid of the 3 x 3 bins
    around the peak, for sub-bin precision). Periods longer than half the object's smaller
    extent are not looked at: they are its shape, not its pattern.
    """
    _, core = _largest_object(image)
    if core.sum() < MIN_STRIPE_AREA_PX:
        return float("nan")
    rows, cols = np.nonzero(core)
    box = slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)
    weight = metrics.box_mean(core.astype(np.float64), 2)[box] * core[box]
    y = luminance(image)[box]
    y = (y - (y * weight).sum() / weight.sum()) * weight
    size = 4 * max(y.shape)
    power = np.fft.fftshift(np.abs(np.fft.fft2(y, s=(size, size))) ** 2)
    fy, fx = np.meshgrid(*(np.fft.fftshift(np.fft.fftfreq(size)),) * 2, indexing="ij")
    power[np.hypot(fy, fx) < 2 / min(y.shape)] = 0
    py, px = np.unravel_index(power.argmax(), power.shape)
    near = (slice(max(py - 1, 0), py + 2), slice(max(px - 1, 0), px + 2))
    weights = power[near]
    peak = np.hypot((fy[near] * weights).sum(), (fx[near] * weights).sum()) / weights.sum()
    return float(1 / peak)


def frechet_distance(a: np.ndarray, b: np.ndarray, ridge: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to feature matrices [N, D] (FID's formula).

    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2), with tr (S_a S_b)^1/2 computed as the trace of
    the square root of the symmetric S_a^1/2 S_b S_a^1/2 (same eigenvalues), all by eigh. A small
    ridge keeps the covariances positive definite when N is not much larger than D.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ridge_matrix = ridge * np.eye(a.shape[1])
    cov_a, cov_b = np.cov(a, rowvar=False) + ridge_matrix, np.cov(b, rowvar=False) + ridge_matrix
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(values.clip(0))) @ vectors.T
    product = root_a @ cov_b @ root_a
    cross = np.sqrt(np.linalg.eigvalsh((product + product.T) / 2).clip(0)).sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


# --------------------------------------------------------------------------- feature network

HEADS = {"colour": 5, "shape": 5, "background": 4, "period": 3}   # output classes of each training head
FEATURE_DIM = 32
BANDS = 16                       # period bands of the detail filters, geometric from 3 to 16 px
ORIENTATIONS = 4
WINDOW_PX, STEP_PX = 32, 8       # the detail filters' support, and the grid both statistics are taken on


def gabor_bank(bands: int = BANDS, orientations: int = ORIENTATIONS, size: int = WINDOW_PX) -> torch.Tensor:
    """Zero-mean, unit-norm cosine Gabor filters [bands * orientations, 1, size, size], band-major;
    the Gaussian's radius is one period, which resolves periods 25% apart (5.3 / 6.7 / 8 px)."""
    ys, xs = torch.meshgrid(*(torch.arange(size) - (size - 1) / 2,) * 2, indexing="ij")
    filters = []
    for period in 3 * (16 / 3) ** torch.linspace(0, 1, bands):
        for angle in torch.arange(orientations) * torch.pi / orientations:
            along = torch.cos(angle) * xs + torch.sin(angle) * ys
            gabor = torch.exp(-(xs ** 2 + ys ** 2) / (2 * period ** 2)) * torch.cos(2 * torch.pi * along / period)
            gabor = gabor - gabor.mean()
            filters.append(gabor / gabor.norm())
    return rearrange(torch.stack(filters), "k h w -> k 1 h w")


class FeatureNet(torch.nn.Module):
    """IMAGE batch [B, H, W, 3] -> features [B, 32]: a fixed stand-in for FID's Inception network.

    Two local statistics on a grid every 8 px: the log energy of the luminance in 16 period bands
    (3-16 px; fixed Gabor filters over 32 px windows, summed over 4 orientations, so a stripe's
    angle does not matter) and the mean colour of the 8 px cell. Two ReLU conv layers (the
    second strided) combine them, so the energies can be told apart by the colour they sit on
    (object stripes and background texture share periods), and global average pooling makes
    the features, standardised by their mean and spread over the training images (a frozen
    BatchNorm), so every feature weighs the same in a Fréchet distance. Fully convolutional:
    any size of at least 32 px. Trained (scripts/train_detail_features.py) to name the prompt's
    colour, shape and background and the stripes' period class.

    The filters are fixed rather than learned. Small CNNs (3 x 3 or 8 x 8 first layers, mean or
    log-energy pooling) trained for minutes on one CPU thread learned colour and background but
    not the period (45-52% held out, where always naming the commonest class scores 40%), and a
    linear read-out of fixed 16 x 16 px Gabor energies reached 60%: periods 25% apart take
    32 px filters, energies summed over orientation (stripes come at any angle) and no zero
    padding (the image border would be a step in every window along it).
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("bank", gabor_bank(), persistent=False)
        self.register_buffer("luma", torch.tensor(LUMA, dtype=torch.float32), persistent=False)
        self.convs = torch.nn.ModuleList([torch.nn.Conv2d(BANDS + 3, FEATURE_DIM, 3, padding=1),
                                          torch.nn.Conv2d(FEATURE_DIM, FEATURE_DIM, 3, stride=2, padding=1)])
        self.norm = torch.nn.BatchNorm1d(FEATURE_DIM, affine=False)
        self.heads = torch.nn.Linear(FEATURE_DIM, sum(HEADS.values()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = rearrange(images.float(), "b h w c -> b c h w")
        luminance = einsum(x, self.luma, "b c h w, c -> b h w")[:, None]
        margin = (WINDOW_PX - STEP_PX) // 2   # reflected: zeros beyond the border would be a step at every edge
        response = F.conv2d(F.pad(luminance, (margin,) * 4, mode="reflect"), self.bank, stride=STEP_PX)
        energy = reduce(response ** 2, "b (band o) h w -> b band h w", "sum", o=ORIENTATIONS)
        colour = F.avg_pool2d(x, STEP_PX) * 2 - 1
        y = torch.cat([torch.log(energy + 1e-4), 4 * colour], dim=1)
        for conv in self.convs:
            y = F.relu(conv(y))
        return self.norm(y.mean(dim=(2, 3)))

    def logits(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(HEADS, self.heads(features).split(list(HEADS.values()), dim=1)))


def load_feature_net(path: Path = FEATURES_PATH) -> FeatureNet:
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: the detail feature network is missing; "
                                f"scripts/train_detail_features.py writes it")
    net = FeatureNet()
    net.load_state_dict(safetensors.torch.load_file(str(path)))
    return net.eval()


@torch.no_grad()
def whole_image_features(net: FeatureNet, images: np.ndarray) -> np.ndarray:
    """Features [N, D] of images [N, H, W, 3] area-resized to the native 128 x 128 (FID_r)."""
    x = rearrange(torch.as_tensor(np.asarray(images), dtype=torch.float32), "b h w c -> b c h w")
    x = F.interpolate(x, size=(NATIVE_PX, NATIVE_PX), mode="area")
    return net(rearrange(x, "b c h w -> b h w c")).numpy()


@torch.no_grad()
def crop_features(net: FeatureNet, images: np.ndarray, crop: int = 64, per_image: int = 8,
                  seed: int = 0) -> np.ndarray:
    """Features [N * per_image, D] of random crop x crop windows at the images' own pixel scale (FID_crop)."""
    images = np.asarray(images, dtype=np.float32)
    rng = np.random.default_rng(seed)
    n, h, w = images.shape[:3]
    tops, lefts = rng.integers(0, h - crop + 1, (n, per_image)), rng.integers(0, w - crop + 1, (n, per_image))
    crops = np.stack([images[i, t:t + crop, l:l + crop]
                      for i in range(n) for t, l in zip(tops[i], lefts[i])])
    return net(torch.from_numpy(crops)).numpy()
