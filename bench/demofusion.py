"""DemoFusion (Du et al., CVPR 2024, arXiv 2311.16973) as a bench-only baseline for issue 17.

Follows the official SDXL pipeline (github.com/PRIS-CV/DemoFusion, pipeline_demofusion_sdxl.py),
re-written for a ComfyUI model and its k-diffusion sigma schedule:

1. Phase 1: plain sampling at native size on the long side (the target divided by
   `scale_num = int(max(H, W) / native)`; a 3:1 target starts at native width, a third of it tall).
2. Phases 2 .. scale_num: the previous latent upsampled (bicubic, in latent space) to `native * s` on
   the long side, noised to every step's level with one noise draw (`x0 + sigma_i * noise`), then all
   steps again. Each step:
   - skip residual: `x = (1 - c1) x + c1 noised_i`, `c1 = cosine^3` (cosine_scale_1 = 3);
   - MultiDiffusion: native windows at stride half a window, jittered by up to a quarter of the
     overlap over a zero-padded latent, averaged;
   - dilated sampling: the `s^2` strided views `x[h::s, w::s]`, whose model input is the latent
     Gaussian-filtered (kernel `2s - 1`, sigma `c3 = 0.99 cosine + 0.01`, cosine_scale_3 = 1) and
     renormalised to the latent's mean and std, stepped from the unfiltered view;
   - the two mixed with `c2 = cosine` (cosine_scale_2 = 1): `(1 - c2) local + c2 dilated`,
   where `cosine = (1 + cos(pi (1000 - t) / 1000)) / 2` at the step's timestep `t`.
   After each phase the latent is renormalised to phase 1's mean and std.

The official code averages the views' Euler-stepped latents; every view steps from the same
latent values (the dilated ones too: only their model input is filtered), so that average is one
Euler step with the averaged noise prediction, which is what this loop takes.

Differences, each because the demo model is not SDXL:
- SDXL size conditioning follows the demo model's meaning of the six numbers (the canvas being
  drawn and the window's place in it): phase 1 gets its own size (the official code passes the
  final target size at every phase, which on SDXL means "a high-resolution source" but on the
  demo model would mean a 2-4x larger canvas); every later phase gets its own size, windows their
  crop in the padded frame as the official code computes it, dilated views crop 0.
- The schedule is the bench's (ComfyUI sampler euler, scheduler normal) instead of diffusers'
  EulerDiscreteScheduler with its "leading" timesteps.
- Jitter comes from a torch generator seeded by the run's seed, not Python's global `random`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

C1, C2, C3 = 3.0, 1.0, 1.0   # the official cosine_scale_1 / 2 / 3
GAUSSIAN_SIGMA = 1.0         # the official `sigma`
LATENT_SCALE = 8


@dataclass(frozen=True)
class Phase:
    """One DemoFusion phase in latent px: its size, and the views evaluated per step (per CFG half)."""
    scale: int
    height: int
    width: int
    windows: int
    dilated: int

    @property
    def views(self) -> int:
        return self.windows + self.dilated


def blocks(length: int, window: int, stride: int) -> int:
    """Windows along one dimension, as the official get_views counts them."""
    return int((length - window) / stride - 1e-6) + 2 if length > window else 1


def phases(width_px: int, height_px: int, native_px: int) -> list[Phase]:
    """The official pipeline's phases for a target; phase 1 is the plain native pass (1 view a step)."""
    scale_num = int(max(height_px / native_px, width_px / native_px))
    aspect = min(height_px, width_px) / max(height_px, width_px)
    window, stride = native_px // LATENT_SCALE, native_px // LATENT_SCALE // 2
    out = [Phase(1, height_px // scale_num // LATENT_SCALE, width_px // scale_num // LATENT_SCALE, 1, 0)]
    for s in range(2, scale_num + 1):
        h_px = w_px = native_px * s
        if height_px > width_px:
            w_px = int(w_px * aspect)
        else:
            h_px = int(h_px * aspect)
        h, w = h_px // LATENT_SCALE, w_px // LATENT_SCALE
        out.append(Phase(s, h, w, blocks(h, window, stride) * blocks(w, window, stride), s * s))
    return out


def evaluations(width_px: int, height_px: int, native_px: int, steps: int) -> int:
    """Model evaluations per image and CFG half (a view smaller than native counts as one)."""
    return steps * sum(p.views for p in phases(width_px, height_px, native_px))


def window_views(height: int, width: int, window: int, stride: int, generator: torch.Generator):
    """The official get_views with random_jitter: (y0, y1, x0, x1) in the frame padded by `jitter`
    on every side, and that padding. A window on a border may move outwards into the zero padding."""
    jitter = (window - stride) // 4
    rows, cols = blocks(height, window, stride), blocks(width, window, stride)
    views = []
    for i in range(rows * cols):
        y0, x0 = (i // cols) * stride, (i % cols) * stride
        y0, x0 = min(y0, max(0, height - window)), min(x0, max(0, width - window))
        y1, x1 = min(y0 + window, height), min(x0 + window, width)
        dy = _jitter(y0, y1, height, jitter, generator)
        dx = _jitter(x0, x1, width, jitter, generator)
        views.append((y0 + dy + jitter, y1 + dy + jitter, x0 + dx + jitter, x1 + dx + jitter))
    return views, jitter


def _jitter(start: int, end: int, length: int, jitter: int, generator: torch.Generator) -> int:
    if start == 0 and end == length:
        return 0
    low = -jitter if end != length else 0   # a border window only moves outwards, into the zero padding
    high = jitter if start != 0 else 0
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def gaussian_filter(latents: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Per-channel Gaussian blur with zero padding, as the official gaussian_filter."""
    coords = torch.arange(kernel_size, dtype=latents.dtype)
    g = torch.exp(-(coords - (kernel_size - 1) / 2) ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    kernel = repeat(g[:, None] * g[None, :], "h w -> c 1 h w", c=latents.shape[1])
    return F.conv2d(latents, kernel, padding=kernel_size // 2, groups=latents.shape[1])


def renormalise(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`x` shifted and scaled to `like`'s mean and std, per image (the official code has batch 1)."""
    dims = (1, 2, 3)
    mean, std = x.mean(dims, keepdim=True), x.std(dims, keepdim=True)
    return (x - mean) / std * like.std(dims, keepdim=True) + like.mean(dims, keepdim=True)


def cosine_factor(timestep: float, train_steps: int = 1000) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * (train_steps - timestep) / train_steps))


class CfgModel:
    """The ComfyUI model's CFG noise prediction for a batch of views with their own SDXL size
    conditioning; counts the views it evaluates (per CFG half)."""

    def __init__(self, base_model, positive, negative, cfg: float, chunk: int = 256):
        self.base, self.cfg, self.chunk = base_model, cfg, chunk
        self.halves = [(c[0][0], c[0][1]["pooled_output"]) for c in (positive, negative)]
        self.evaluations = 0

    def adm(self, pooled, height_px, width_px, crop_h, crop_w) -> torch.Tensor:
        return self.base.encode_adm(pooled_output=pooled, width=width_px, height=height_px, crop_w=crop_w,
                                    crop_h=crop_h, target_width=width_px, target_height=height_px)

    def eps(self, views: torch.Tensor, sigma: float, sizes: list[tuple[int, int, int, int]]) -> torch.Tensor:
        """Noise prediction [V*B, C, h, w] for views [V*B, ...] (view-major); sizes: per view (H, W, crop_h,
        crop_w) in px."""
        per_view = views.shape[0] // len(sizes)
        out = []
        for start in range(0, views.shape[0], self.chunk):
            x = views[start:start + self.chunk]
            idx = [k // per_view for k in range(start, start + x.shape[0])]
            preds = []
            for context, pooled in self.halves:
                y = torch.cat([self.adm(pooled, *sizes[i]) for i in idx])
                ctx = repeat(context, "1 t d -> b t d", b=x.shape[0])
                s = torch.full((x.shape[0],), sigma)
                preds.append(self.base.apply_model(x, s, c_crossattn=ctx, y=y))
            cond, uncond = preds
            denoised = uncond + self.cfg * (cond - uncond)
            out.append((x - denoised) / sigma)
            self.evaluations += x.shape[0]
        return torch.cat(out)


def local_eps(model: CfgModel, x: torch.Tensor, sigma: float, native: int, generator) -> torch.Tensor:
    """MultiDiffusion: the windows' noise predictions averaged per pixel."""
    b, _, h, w = x.shape
    views, jitter = window_views(h, w, native, native // 2, generator)
    padded = F.pad(x, (jitter,) * 4)
    crops = torch.cat([padded[:, :, y0:y1, x0:x1] for y0, y1, x0, x1 in views])
    sizes = [(h * LATENT_SCALE, w * LATENT_SCALE, y0 * LATENT_SCALE, x0 * LATENT_SCALE) for y0, _, x0, _ in views]
    eps = model.eps(crops, sigma, sizes)
    value, count = torch.zeros_like(padded), torch.zeros_like(padded)
    for k, (y0, y1, x0, x1) in enumerate(views):
        value[:, :, y0:y1, x0:x1] += eps[k * b:(k + 1) * b]
        count[:, :, y0:y1, x0:x1] += 1
    return (value / count)[:, :, jitter:jitter + h, jitter:jitter + w]


def dilated_eps(model: CfgModel, x: torch.Tensor, sigma: float, scale: int, cosine: float) -> torch.Tensor:
    """Dilated sampling: each strided view's prediction from its Gaussian-filtered input, back in place."""
    b, _, h, w = x.shape
    pad_h, pad_w = (scale - h % scale) % scale, (scale - w % scale) % scale
    padded = F.pad(x, (pad_w, 0, pad_h, 0))
    c3 = 0.99 * cosine ** C3 + 1e-2
    blurred = renormalise(gaussian_filter(padded, 2 * scale - 1, GAUSSIAN_SIGMA * c3), padded)
    # The official code renormalises over the whole batch tensor; with its batch of 1 that is per image.
    views = rearrange(blurred, "b c (h s1) (w s2) -> (s1 s2 b) c h w", s1=scale, s2=scale)
    size = (h * LATENT_SCALE, w * LATENT_SCALE, 0, 0)
    eps = model.eps(views, sigma, [size] * scale * scale)
    eps = rearrange(eps, "(s1 s2 b) c h w -> b c (h s1) (w s2)", s1=scale, s2=scale, b=b)
    return eps[:, :, pad_h:, pad_w:]


def upscale_phase(model: CfgModel, latent: torch.Tensor, phase: Phase, sigmas: torch.Tensor, timesteps,
                  native: int, noise_gen: torch.Generator, jitter_gen: torch.Generator) -> torch.Tensor:
    """One phase 2..scale_num: upsample, noise to every level, all steps with skip residuals."""
    x0 = F.interpolate(latent, size=(phase.height, phase.width), mode="bicubic")
    noise = torch.randn(x0.shape, generator=noise_gen)
    x = x0 + noise * sigmas[0]
    for i in range(len(sigmas) - 1):
        sigma, cosine = float(sigmas[i]), cosine_factor(timesteps[i])
        c1, c2 = cosine ** C1, cosine ** C2
        x = (1 - c1) * x + c1 * (x0 + noise * sigma)
        eps = (1 - c2) * local_eps(model, x, sigma, native, jitter_gen)
        eps = eps + c2 * dilated_eps(model, x, sigma, phase.scale, cosine)
        x = x + eps * (float(sigmas[i + 1]) - sigma)
    return x


def sample(demo, prompt: str, width_px: int, height_px: int, seed: int, batch: int, steps: int, cfg: float,
           sampler: str = "euler", scheduler: str = "normal") -> tuple[torch.Tensor, int]:
    """Latents [B, 4, H/8, W/8] of one prompt and the evaluations made per image and CFG half."""
    import comfy.model_management
    import comfy.sample
    import comfy.samplers

    native_px = demo.model.model.model_config.native_size_px
    plan = phases(width_px, height_px, native_px)
    positive, negative = demo.text.conditioning(prompt), demo.text.conditioning("")
    first = plan[0]
    empty = torch.zeros(batch, 4, first.height, first.width)
    with torch.inference_mode():
        latent = comfy.sample.sample(demo.model, comfy.sample.prepare_noise(empty, seed), steps, cfg, sampler,
                                     scheduler, positive, negative, empty, disable_pbar=True, seed=seed)
        anchor = latent.clone()
        comfy.model_management.load_models_gpu([demo.model])
        base = demo.model.model
        model_sampling = demo.model.get_model_object("model_sampling")
        sigmas = comfy.samplers.calculate_sigmas(model_sampling, scheduler, steps).cpu()
        timesteps = [float(model_sampling.timestep(s)) for s in sigmas[:-1]]
        model = CfgModel(base, positive, negative, cfg)
        noise_gen, jitter_gen = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
        for phase in plan[1:]:
            latent = upscale_phase(model, latent, phase, sigmas, timesteps, native_px // LATENT_SCALE,
                                   noise_gen, jitter_gen)
            latent = renormalise(latent, anchor)
    return latent, steps * first.views + model.evaluations // batch
