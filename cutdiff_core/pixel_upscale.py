"""Native first's layout upscale in pixel space, where the user gives a VAE: VAEDecode, ImageScale
(bicubic) and VAEEncode, as a hires fix of ComfyUI's core nodes does it. On real VAEs an interpolated
latent decodes to blur and artifacts, which is why hires fixes and papers (HiWave, PixelRush) upscale
the image; without a VAE the layout is upscaled in latent space (layout.latent_upscale)."""
from __future__ import annotations

import torch

import comfy.utils


def check_vae(vae, model) -> None:
    """Refuse, before any work, a VAE whose latents are not the model's (e.g. an SD1.5 VAE on Flux)."""
    wanted = model.get_model_object("latent_format").latent_channels
    got = getattr(vae, "latent_channels", wanted)
    if got != wanted:
        raise ValueError(f"CutDiffusion: vae makes {got}-channel latents and this model samples {wanted}-channel "
                         f"ones; connect the model's own VAE to vae, or nothing (the layout is then upscaled in "
                         f"latent space)")


def pixel_upscale(vae, latent: torch.Tensor, height: int, width: int, latent_px: int) -> torch.Tensor:
    """`latent` (as KSampler returns it) decoded, upscaled bicubically to `height x width` latent px
    (`latent_px` px each) and encoded again, exactly as the core nodes compute it."""
    images = vae.decode(latent)
    if images.ndim == 5:   # as VAEDecode: a video VAE's frames become images
        images = images.reshape(-1, *images.shape[-3:])
    images = comfy.utils.common_upscale(images.movedim(-1, 1), width * latent_px, height * latent_px, "bicubic",
                                        "disabled").movedim(1, -1)
    encoded = vae.encode(images[..., :3])
    expected = (*latent.shape[:-2], height, width)
    if tuple(encoded.shape) != expected:
        raise ValueError(f"CutDiffusion: the vae input encodes the upscaled layout to a latent of shape "
                         f"{tuple(encoded.shape)}, where the model samples {expected}: connect this model's own VAE")
    return encoded
