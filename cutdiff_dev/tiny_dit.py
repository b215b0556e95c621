"""Tiny in-process DiT / flow-matching models, built from ComfyUI's own classes (issue 15).

Like comfy_runtime.tiny_sdxl: a `comfy.supported_models` config with a small unet_config,
the matching `comfy.model_base` class, random weights (torch's default init; ComfyUI's
ops skip it), float32 on CPU, wrapped in a ModelPatcher. Each family keeps its own
latent format and model sampling:

- Flux (dev-style: guidance embedding, pooled `vector_in`), model_base.Flux, 16-channel
  Flux latent, 2x2 patchified inside the model, ModelSamplingFlux; `flux_shift` applies
  ComfyUI's ModelSamplingFlux node (resolution-dependent shift) as a workflow does.
- SD3 (MMDiT with pooled `y`), model_base.SD3, SD3 latent, ModelSamplingDiscreteFlow shift 3.

comfy is imported inside the functions only (after comfy_runtime.bootstrap()).
"""
from __future__ import annotations

import dataclasses

from . import comfy_runtime as rt

FLUX_CONTEXT_DIM = 32    # T5 features (4096 in Flux.1)
FLUX_POOLED_DIM = 32     # CLIP-L pooled (768 in Flux.1)
SD3_CONTEXT_DIM = 48     # joint CLIP/T5 features (4096 in SD3)
SD3_POOLED_DIM = 64      # CLIP-L + CLIP-G pooled (2048 in SD3)
SD3_POS_EMBED_MAX = 32   # tokens per side of SD3's learned position table (192 in SD3)


def _flux_unet_config() -> dict:
    import comfy.ldm.flux.model

    config = {
        "image_model": "flux", "guidance_embed": True,
        "in_channels": 16, "out_channels": 16, "patch_size": 2,
        "vec_in_dim": FLUX_POOLED_DIM, "context_in_dim": FLUX_CONTEXT_DIM,
        "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2,
        "depth": 1, "depth_single_blocks": 1,
        "axes_dim": [8, 12, 12],          # sums to the head dim 64 / 2, as Flux.1's 16+56+56 = 128
        "theta": 10000, "qkv_bias": True,
    }
    fields = {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}
    if "txt_ids_dims" in fields:          # newer ComfyUI (0.33.0): required; [] for Flux.1
        config["txt_ids_dims"] = []
    return config


def tiny_flux(seed: int = 0):
    """Randomly initialised tiny Flux.1-dev transformer (model_base.Flux) as a ModelPatcher."""
    rt.bootstrap()
    import comfy.model_base
    import comfy.supported_models

    model_config = comfy.supported_models.Flux(_flux_unet_config())
    return rt._build(comfy.model_base.Flux, model_config, seed)


def flux_shift(model, width_px: int, height_px: int, max_shift: float = 1.15, base_shift: float = 0.5):
    """The model with ComfyUI's ModelSamplingFlux node applied for an image size (its defaults)."""
    import comfy_extras.nodes_model_advanced as advanced

    (patched,) = advanced.ModelSamplingFlux().patch(model, max_shift, base_shift, width_px, height_px)
    return patched


def flux_node_shift(width_px: int, height_px: int, max_shift: float = 1.15, base_shift: float = 0.5) -> float:
    """The shift ModelSamplingFlux sets, written out independently (its linear fit over tokens)."""
    tokens = width_px * height_px / (16 * 16)
    return base_shift + (max_shift - base_shift) * (tokens - 256) / (4096 - 256)


def tiny_sd3(seed: int = 0):
    """Randomly initialised tiny SD3 MMDiT (model_base.SD3: 2 joint blocks, 128 wide, pooled y)."""
    rt.bootstrap()
    import torch
    import comfy.model_base
    import comfy.supported_models

    hidden = 64 * 2   # MMDiT: hidden = 64 * depth, heads = depth
    unet_config = {
        "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2, "input_size": None,
        "adm_in_channels": SD3_POOLED_DIM,
        "context_embedder_config": {"target": "torch.nn.Linear",
                                    "params": {"in_features": SD3_CONTEXT_DIM, "out_features": hidden}},
        "num_patches": SD3_POS_EMBED_MAX ** 2, "pos_embed_max_size": SD3_POS_EMBED_MAX,
        "pos_embed_scaling_factor": None, "x_block_self_attn_layers": [],
    }
    model_config = comfy.supported_models.SD3(unet_config)
    patcher = rt._build(comfy.model_base.SD3, model_config, seed)
    # pos_embed is a buffer (loaded from the checkpoint), not a parameter: give it values.
    diffusion_model = patcher.model.diffusion_model
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed + 1)
        diffusion_model.pos_embed.copy_(0.5 * torch.randn(diffusion_model.pos_embed.shape, generator=gen))
    return patcher


def flux_conds(seed: int = 0, batch: int = 1, tokens: int = 6, guidance: float = 3.5):
    """(positive, negative) Flux CONDITIONING: T5-like context, CLIP-like pooled vector, guidance."""
    import torch

    gen = torch.Generator().manual_seed(seed)

    def cond():
        return [[torch.randn(batch, tokens, FLUX_CONTEXT_DIM, generator=gen),
                 {"pooled_output": torch.randn(batch, FLUX_POOLED_DIM, generator=gen), "guidance": guidance}]]

    return cond(), cond()


def sd3_conds(seed: int = 0, batch: int = 1, tokens: int = 6):
    """(positive, negative) SD3 CONDITIONING: joint context and pooled CLIP vector."""
    import torch

    gen = torch.Generator().manual_seed(seed)

    def cond():
        return [[torch.randn(batch, tokens, SD3_CONTEXT_DIM, generator=gen),
                 {"pooled_output": torch.randn(batch, SD3_POOLED_DIM, generator=gen)}]]

    return cond(), cond()


def empty_latent(width_px: int, height_px: int, batch: int = 1) -> dict:
    """EmptySD3LatentImage's latent (16 channels, 8x), which Flux and SD3 workflows use."""
    return rt.empty_latent(width_px, height_px, batch=batch, channels=16)
