"""The detail proxy: a demo model whose decoder draws pixel-scale detail from the latent.

The first demo model's decoder (``model.DemoDecoder``) is linear with a fixed grain, so nothing the
diffusion model does changes the detail of an image: an enlarged layout and a true high-resolution
sample decode to the same kind of picture. This one is non-linear, and every fine structure of its
images is drawn by the latent at the scale the latent has:

- colour: the latent's colour field, upsampled, is *snapped* towards the palette colours found
  within two latent pixels (a softmax over their distances, its temperature scaled by the two
  nearest colours' own distance so that every edge is about as wide), so an object's outline is
  a hard, anti-aliased edge about 2 px wide wherever the latent changes colour within one latent
  pixel; a latent that changes colour over two latent
  pixels (a bicubic x2 upscale) decodes to an edge twice as wide;
- pattern: the fourth feature ``p = cos(psi)`` carries a wave whose phase ``psi`` turns once every
  4-6 latent px; the decoder draws ``T_m(p) = cos(m psi)`` (a Chebyshev fold, m = 6), stripes of
  5-8 px. A bicubic x2 upscale of the latent doubles the wave's period and so the stripes' period:
  magnified, not drawn. The stripes' contrast comes with the snapped colour: objects and textured
  backgrounds carry it, plain backgrounds do not (their ``p`` is 0 in the data and ignored).

Objects carry stripes whose period is set by the shape word (the prompt chooses it), at a random
orientation; sand and grass backgrounds carry an irregular texture (the same fold of a warped
phase field), slate and night are plain. The prompt vocabulary and text encoder are the first demo
model's (``model.VOCABULARY``).

The latent of a training image is rendered directly: colour and pattern per latent pixel, with the
shape's coverage from 4x4 supersampling, mixed by ``model.LATENT_MIX``. ``encode`` maps an image back
(for a hires fix that upscales in pixel space): it inverts the colour but not the stripes.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import einsum, rearrange

from . import data
from . import model as dm

MODEL_PATH = Path(__file__).resolve().parents[1] / "models" / "cutdiffusion_detail.safetensors"
FOLD = 6                                          # stripes per turn of the latent wave's phase
STRIPE_PERIOD_LATENT = {"circle": 4.0, "square": 5.0, "triangle": 6.0, "ring": 4.0, "cross": 5.0}
# background -> period (latent px) of its texture's phase, or None for a plain background
BACKGROUND_TEXTURE_LATENT = {"sand": 4.0, "grass": 6.0, "slate": None, "night": None}
PATTERN_CONTRAST = 0.12                           # +- in each RGB channel, on objects and textured backgrounds
SNAP_TEMPERATURE = 0.1                            # of the palette snapping, over the two nearest colours' squared distance
SNAP_NEIGHBOURHOOD = 5                            # latent px: a pixel snaps only to colours found within this window
PURE_DISTANCE = 0.1                               # squared feature distance within which a latent pixel names its colour
WARP_PERIODS = (6.0, 12.0)                        # latent px: the background phase field's slow warps


def stripe_period_px(shape: str) -> float:
    """The stripes' period in px of a native-size sample of this shape."""
    return STRIPE_PERIOD_LATENT[shape] * dm.LATENT_SCALE / FOLD


def palette_features() -> torch.Tensor:
    """Every colour an image is drawn in (objects, then backgrounds), as features 2 rgb - 1: [K, 3]."""
    colours = list(dm.COLOURS.values()) + [colour for colour, _ in dm.BACKGROUNDS.values()]
    return torch.tensor(colours) * 2 - 1


def palette_contrast() -> torch.Tensor:
    """Pattern contrast of each palette colour [K]: objects striped, sand and grass textured, the rest plain."""
    backgrounds = [float(BACKGROUND_TEXTURE_LATENT[name] is not None) for name in dm.BACKGROUNDS]
    return torch.tensor([1.0] * len(dm.COLOURS) + backgrounds) * PATTERN_CONTRAST


def _plane_wave_phase(gen, batch, ys, xs, period):
    """Phase [B, h, w] of a plane wave of the given period (latent px, [B]) at a random angle and offset."""
    direction = data.uniform(gen, batch, 0, 2 * math.pi)[:, None, None]
    offset = data.uniform(gen, batch, 0, 2 * math.pi)[:, None, None]
    along = torch.cos(direction) * xs + torch.sin(direction) * ys
    return 2 * math.pi * along / period[:, None, None] + offset


def render_batch(gen: torch.Generator, batch: int):
    """Latents [B, 4, 16, 16], token ids [B, 3] and SDXL size conditioning [B, 6], as data.render_batch."""
    scenes = data.draw_scenes(gen, batch)
    cy, cx = scenes.latent_centres()
    stripe_period = torch.tensor([STRIPE_PERIOD_LATENT[name] for name in dm.SHAPES])[scenes.shape_id]
    object_pattern = torch.cos(_plane_wave_phase(gen, batch, cy, cx, stripe_period))
    texture_period = torch.tensor([BACKGROUND_TEXTURE_LATENT[name] or 1.0
                                   for name in dm.BACKGROUNDS])[scenes.background_id]
    textured = torch.tensor([BACKGROUND_TEXTURE_LATENT[name] is not None
                             for name in dm.BACKGROUNDS])[scenes.background_id]
    warp = sum(math.pi * torch.sin(_plane_wave_phase(gen, batch, cy, cx, torch.full((batch,), period)))
               for period in WARP_PERIODS)
    background_pattern = torch.cos(_plane_wave_phase(gen, batch, cy, cx, texture_period) + warp)
    background_pattern = torch.where(textured[:, None, None], background_pattern, torch.zeros_like(background_pattern))

    palette = palette_features()
    object_colour = palette[scenes.colour_id][:, :, None, None]
    background_colour = palette[len(dm.COLOURS) + scenes.background_id][:, :, None, None]
    coverage = scenes.coverage
    colour = coverage * object_colour + (1 - coverage) * background_colour
    pattern = coverage * object_pattern[:, None] + (1 - coverage) * background_pattern[:, None]
    latent = einsum(dm.LATENT_MIX, torch.cat([colour, pattern], dim=1), "c f, b f h w -> b c h w")
    return latent, scenes.token_ids(), scenes.size_conditioning()


def chebyshev_fold(p: torch.Tensor, m: int = FOLD) -> torch.Tensor:
    """T_m(p) = cos(m arccos p) for p in [-1, 1]: a wave cos(psi) becomes cos(m psi)."""
    return torch.cos(m * torch.arccos(p.clamp(-1, 1)))


class DetailDecoder(dm.DemoDecoder):
    """Latent [B, 4, h, w] -> IMAGE [B, 8h, 8w, 3]: palette-snapped colour plus folded stripes."""

    def __init__(self):
        super().__init__()
        self.palette = torch.nn.Parameter(palette_features(), requires_grad=False)
        self.snap_temperature = torch.nn.Parameter(torch.tensor(SNAP_TEMPERATURE), requires_grad=False)
        self.pattern_contrast = torch.nn.Parameter(palette_contrast(), requires_grad=False)
        self.fold = torch.nn.Parameter(torch.tensor(float(FOLD)), requires_grad=False)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        coarse = 2 * self.features(latent) - 1
        features = F.interpolate(coarse, scale_factor=dm.LATENT_SCALE, mode="bicubic", align_corners=False)
        colour, pattern = features[:, :3], features[:, 3]
        distance = self._palette_distance(colour) - self._nearby_colours(coarse[:, :3])
        weights = torch.softmax(-distance / (self.snap_temperature * self._edge_contrast(distance)), dim=1)
        snapped = einsum(weights, self.palette, "b k h w, k f -> b f h w")
        contrast = einsum(weights, self.pattern_contrast, "b k h w, k -> b h w")
        rgb = (snapped + 1) / 2 + (contrast * chebyshev_fold(pattern, int(self.fold)))[:, None]
        return rearrange(rgb.clamp(0, 1), "b c h w -> b h w c")

    def _palette_distance(self, colour: torch.Tensor) -> torch.Tensor:
        """Squared distance [B, K, h, w] of each pixel's colour features to each palette colour."""
        return ((rearrange(colour, "b f h w -> b 1 f h w") - rearrange(self.palette, "k f -> 1 k f 1 1")) ** 2).sum(dim=2)

    def _edge_contrast(self, distance: torch.Tensor) -> torch.Tensor:
        """Squared distance [B, 1, H, W] between the two palette colours nearest each pixel: the
        temperature scales with it, so every edge is about as wide whatever its two colours."""
        nearest = distance.topk(2, dim=1, largest=False).indices
        first, second = self.palette[nearest[:, 0]], self.palette[nearest[:, 1]]
        return ((first - second) ** 2).sum(dim=-1, keepdim=True).movedim(-1, 1).clamp(min=0.05)

    def _nearby_colours(self, coarse_colour: torch.Tensor) -> torch.Tensor:
        """0 for palette colours some latent pixel near this pixel is closest to, -1e4 for the others [B, K, H, W].

        Snapping among all colours would draw a band of a third colour along an edge whose midpoint
        lies closer to it (white to night passes slate); a real edge only mixes the two sides."""
        distance = self._palette_distance(coarse_colour)   # per latent pixel
        closest, nearest = distance.min(dim=1)
        pure = F.one_hot(nearest, len(self.palette)) * (closest < PURE_DISTANCE)[..., None]  # mixed pixels name no colour
        present = F.max_pool2d(rearrange(pure, "b h w k -> b k h w").float(), SNAP_NEIGHBOURHOOD, stride=1,
                               padding=SNAP_NEIGHBOURHOOD // 2)
        present = present + (present.sum(dim=1, keepdim=True) == 0)  # nothing pure nearby: every colour
        present = F.interpolate(present, scale_factor=dm.LATENT_SCALE, mode="nearest")
        return torch.where(present > 0, 0.0, -1e4)


def encode(image: torch.Tensor, pattern: torch.Tensor | None = None) -> torch.Tensor:
    """IMAGE [B, 8h, 8w, 3] -> latent [B, 4, h, w], as a VAE encode: each 8 x 8 block's mean colour and
    the pattern feature `pattern` [B, 1, h, w] (default 0).

    The block mean inverts the decoder's colour: an edge through a block gives the coverage mix the
    training latents carry, so the edges of an image upscaled in pixel space come back sharp (not the
    two-latent-pixel ramp of a bicubic latent upscale). The stripes are not inverted: the fold is
    many-to-one, and conv encoders trained through the decoder here learned none (BENCHMARKS.md).
    Without a pattern the latent carries 0, the data's value on plain backgrounds and the mean of
    its waves (objects then decode unstriped and darker by the pattern contrast); a caller that knows
    the wave, e.g. the magnified one a perfect encoder would find in magnified stripes, passes it."""
    rgb = rearrange(image, "b (h p1) (w p2) c -> b c h w (p1 p2)", p1=dm.LATENT_SCALE, p2=dm.LATENT_SCALE)
    colour = 2 * rgb.mean(dim=-1) - 1
    pattern = torch.zeros_like(colour[:, :1]) if pattern is None else pattern
    return einsum(dm.LATENT_MIX, torch.cat([colour, pattern], dim=1), "c f, b f h w -> b c h w")


def pattern_feature(latent: torch.Tensor) -> torch.Tensor:
    """A latent's pattern feature [B, 1, h, w]: its fourth feature, unmixed by LATENT_MIX's inverse."""
    return einsum(torch.linalg.inv(dm.LATENT_MIX), latent, "f c, b c h w -> b f h w")[:, 3:]


def load_detail_model(path: Path = MODEL_PATH) -> dm.DemoModel:
    """The detail proxy's file (scripts/train_demo_model.py --data detail) as a ModelPatcher, text encoder, decoder."""
    return dm.load_demo_file(dm._load_file(path), dm.model_config, decoder_class=DetailDecoder)
