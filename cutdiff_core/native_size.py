"""The native (training) resolution of a ComfyUI model, the size of CutDiffusion's patches
and windows when patch_size is 0, and how many pixels one of its latent pixels stands for."""
from __future__ import annotations

import comfy.model_base

from .plan import LATENT_SCALE

# Native (training) resolutions in pixels, by ComfyUI model config class name
# (comfy/supported_models.py of ComfyUI 0.3.75 and 0.33.0).
_NATIVE_PX_BY_CONFIG = {
    "SD15": 512, "SD15_instructpix2pix": 512, "SD20": 512, "SD21UnclipL": 768, "SD21UnclipH": 768,
    "SDXL": 1024, "SDXLRefiner": 1024, "SSD1B": 1024, "Segmind_Vega": 1024, "KOALA_700M": 1024,
    "KOALA_1B": 1024, "SDXL_instructpix2pix": 1024,
    # DiT / flow-matching families (issue 15).
    "SD3": 1024,                                   # SD3 / SD3.5 (one config class for both)
    "Flux": 1024, "FluxSchnell": 1024, "FluxInpaint": 1024,
    "Chroma": 1024,          # Flux-Schnell-derived; trained at 512 and 1024 px (unsure which dominates)
    "Lumina2": 1024, "ZImage": 1024,               # Lumina-Image 2.0, Z-Image (Turbo)
    "QwenImage": 1328,       # Qwen-Image's 1:1 training size (its model card's 1328x1328)
    "HiDream": 1024,
    "AuraFlow": 1024, "PixArtSigma": 1024, "HunyuanDiT": 1024, "HunyuanDiT1": 1024,
    # Latents that are not 8 px per latent px (see _LATENT_PX_BY_CONFIG).
    "Flux2": 1024, "HunyuanImage21": 2048, "ChromaRadiance": 1024,
}
_NATIVE_PX_BY_LATENT_FORMAT = {"SD15": 512, "SDXL": 1024, "SD3": 1024, "Flux": 1024}
# Pixels per latent pixel where it is not SD's 8 (newer ComfyUI also says it as the latent
# format's `spacial_downscale_ratio`; 0.3.75 does not).
_LATENT_PX_BY_CONFIG = {"Flux2": 16, "HunyuanImage21": 32, "ChromaRadiance": 1}


def latent_px(model) -> int:
    """Pixels per latent pixel of the model's latent (8 for SD/SDXL/Flux.1, 16 for Flux.2)."""
    base = model.model
    config_name = type(getattr(base, "model_config", None)).__name__
    return int(_LATENT_PX_BY_CONFIG.get(config_name, getattr(base.latent_format, "spacial_downscale_ratio",
                                                             LATENT_SCALE)))


def native_size_px(model) -> int:
    """The model's training resolution in pixels, or a clear error asking for patch_size."""
    base = model.model
    declared = getattr(getattr(base, "model_config", None), "native_size_px", None)
    if declared:
        return int(declared)  # a model config may say it outright (the pack's demo model does)
    config_name = type(getattr(base, "model_config", None)).__name__
    if config_name == "SD20" and base.model_type == comfy.model_base.ModelType.V_PREDICTION:
        return 768  # SD 2.x 768-v
    if config_name in _NATIVE_PX_BY_CONFIG:
        return _NATIVE_PX_BY_CONFIG[config_name]
    format_name = type(base.latent_format).__name__
    if format_name in _NATIVE_PX_BY_LATENT_FORMAT:
        return _NATIVE_PX_BY_LATENT_FORMAT[format_name]
    raise ValueError(f"CutDiffusion: cannot tell the native resolution of a {config_name} model "
                     f"(latent format {format_name}); set patch_size to its training size in px, e.g. 1024")
