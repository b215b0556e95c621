"""The demo model's procedural training data: one object on a textured background per image.

Shared by the training script and the benchmarks that compare samples with what the model saw.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import einsum, reduce

from . import model as dm

NATIVE = dm.NATIVE_SIZE_PX // dm.LATENT_SCALE   # 16 latent px
SUPERSAMPLE = 4
CANVAS_SIDES = (16, 24, 32)                     # latent px per side of the larger canvases
P_CANVAS = 0.2                                  # fraction of samples cropped from a larger canvas
OBJECT_RADIUS = (0.16, 0.30)                    # fraction of the canvas' shorter side
COLOUR_JITTER = 0.04


def uniform(gen, shape, low=0.0, high=1.0):
    return low + (high - low) * torch.rand(shape, generator=gen)


def shape_masks(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside-masks [B, 5, ...] of every shape, in SHAPES order, at object coordinates (radius 1)."""
    rho = torch.sqrt(u ** 2 + v ** 2)
    triangle = torch.ones_like(u, dtype=torch.bool)
    for k in range(3):  # three half-planes, inradius 0.55 (circumradius 1.1)
        angle = math.pi / 2 + 2 * math.pi * k / 3
        triangle &= u * math.cos(angle) + v * math.sin(angle) <= 0.55
    bar = 0.33
    cross = ((u.abs() <= 1) & (v.abs() <= bar)) | ((u.abs() <= bar) & (v.abs() <= 1))
    return torch.stack([rho <= 1, torch.maximum(u.abs(), v.abs()) <= 0.8, triangle,
                        (rho >= 0.5) & (rho <= 1), cross], dim=1)


def canvas_geometry(gen, batch):
    """Per sample: canvas size (latent px), crop offset of the native window, object centre/radius."""
    native = torch.rand(batch, generator=gen) >= P_CANVAS
    sides = torch.tensor(CANVAS_SIDES)
    canvas = sides[torch.randint(len(CANVAS_SIDES), (batch, 2), generator=gen)]
    canvas[native] = NATIVE
    offset = (torch.rand(batch, 2, generator=gen) * (canvas - NATIVE + 1)).floor()
    radius = uniform(gen, batch, *OBJECT_RADIUS) * canvas.min(dim=1).values
    margin = 1.2 * radius + 0.5  # the square's and triangle's corners reach 1.13 r
    centre = margin[:, None] + torch.rand(batch, 2, generator=gen) * (canvas - 2 * margin[:, None])
    return canvas, offset, centre, radius


@dataclass(frozen=True)
class Scenes:
    """One object per sample: its prompt's word ids, its coverage of each latent pixel, and where the
    native window lies in its canvas (shared by this data set and the detail proxy's)."""
    colour_id: torch.Tensor       # [B]
    shape_id: torch.Tensor        # [B]
    background_id: torch.Tensor   # [B]
    coverage: torch.Tensor        # [B, 1, 16, 16]: fraction of each latent pixel inside the object
    canvas: torch.Tensor          # [B, 2] latent px
    offset: torch.Tensor          # [B, 2] latent px

    def latent_centres(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Canvas coordinates of the latent pixels' centres: ys [B, 16, 1] and xs [B, 1, 16]."""
        centres = torch.arange(NATIVE) + 0.5
        return (self.offset[:, 0, None, None] + centres[None, :, None],
                self.offset[:, 1, None, None] + centres[None, None, :])

    def token_ids(self) -> torch.Tensor:
        """Full token ids [B, 3] of "colour shape on background"."""
        return torch.stack([_token(dm.COLOURS, self.colour_id), _token(dm.SHAPES, self.shape_id),
                            _token(dm.BACKGROUNDS, self.background_id)], dim=1)

    def size_conditioning(self) -> torch.Tensor:
        """(height, width, crop_h, crop_w, target_height, target_width) in px [B, 6], as SDXL.encode_adm takes them."""
        px = dm.LATENT_SCALE
        return torch.cat([self.canvas * px, self.offset * px, self.canvas * px], dim=1)


def draw_scenes(gen: torch.Generator, batch: int) -> Scenes:
    """Random geometry, words and rotation of one object per sample, its coverage supersampled 4x4."""
    canvas, offset, centre, radius = canvas_geometry(gen, batch)
    colour_id = torch.randint(len(dm.COLOURS), (batch,), generator=gen)
    shape_id = torch.randint(len(dm.SHAPES), (batch,), generator=gen)
    background_id = torch.randint(len(dm.BACKGROUNDS), (batch,), generator=gen)
    angle = uniform(gen, batch, 0, 2 * math.pi)

    # Supersampled coordinates of the native window in canvas latent px, [B, 2, Hs, Ws].
    fine = (torch.arange(NATIVE * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    ys = offset[:, 0, None, None] + fine[None, :, None]
    xs = offset[:, 1, None, None] + fine[None, None, :]
    dy = (ys - centre[:, 0, None, None]) / radius[:, None, None]
    dx = (xs - centre[:, 1, None, None]) / radius[:, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    u, v = cos * dx + sin * dy, cos * dy - sin * dx
    inside = shape_masks(u, v)[torch.arange(batch), shape_id].float()
    coverage = reduce(inside, "b (h s1) (w s2) -> b 1 h w", "mean", s1=SUPERSAMPLE, s2=SUPERSAMPLE)
    return Scenes(colour_id, shape_id, background_id, coverage, canvas, offset)


def render_batch(gen: torch.Generator, batch: int):
    """Latents [B, 4, 16, 16], full token ids [B, 3] and SDXL size conditioning [B, 6] in px."""
    scenes = draw_scenes(gen, batch)
    palette = torch.tensor(list(dm.COLOURS.values()))
    backgrounds = torch.tensor([colour for colour, _ in dm.BACKGROUNDS.values()])
    textures = torch.tensor([texture for _, texture in dm.BACKGROUNDS.values()])
    object_rgb = palette[scenes.colour_id] + uniform(gen, (batch, 3), -COLOUR_JITTER, COLOUR_JITTER)
    background_rgb = backgrounds[scenes.background_id] + uniform(gen, (batch, 3), -COLOUR_JITTER, COLOUR_JITTER)
    shading = _background_waves(gen, batch, *scenes.latent_centres())
    background = background_rgb[:, :, None, None] + shading[:, None]
    coverage = scenes.coverage
    rgb = coverage * object_rgb[:, :, None, None] + (1 - coverage) * background
    texture = (1 - coverage) * textures[scenes.background_id][:, None, None, None]
    features = torch.cat([rgb.clamp(0, 1), texture], dim=1) * 2 - 1
    latent = einsum(dm.LATENT_MIX, features, "c f, b f h w -> b c h w")
    return latent, scenes.token_ids(), scenes.size_conditioning()


def _token(group, index):
    """Vocabulary ids of the index-th words of a word group."""
    return index + dm.VOCABULARY.index(next(iter(group)))


def _background_waves(gen, batch, ys, xs, waves=2, amplitude=0.025):
    """Mild low-frequency shading [B, h, w]: a sum of plane waves (periods 4-10 latent px)."""
    total = torch.zeros(batch, ys.shape[1], xs.shape[2])
    for _ in range(waves):
        direction = uniform(gen, batch, 0, 2 * math.pi)[:, None, None]
        wavenumber = 2 * math.pi / uniform(gen, batch, 4, 10)[:, None, None]
        phase = uniform(gen, batch, 0, 2 * math.pi)[:, None, None]
        total += amplitude * torch.sin(wavenumber * (torch.cos(direction) * xs + torch.sin(direction) * ys) + phase)
    return total
