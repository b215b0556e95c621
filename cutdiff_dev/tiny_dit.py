"""Tiny in-process DiT / flow-matching models, built from ComfyUI's own classes (issue 15).

Like comfy_runtime.tiny_sdxl: a `comfy.supported_models` config with a small unet_config,
the matching `comfy.model_base` class, random weights (torch's default init; ComfyUI's
ops skip it), float32 on CPU, wrapped in a ModelPatcher. Each family keeps its own
latent format and model sampling:

- Flux (dev-style: guidance embedding, pooled `vector_in`), model_base.Flux, 16-channel
  Flux latent, 2x2 patchified inside the model, ModelSamplingFlux; `flux_shift` applies
  ComfyUI's ModelSamplingFlux node (resolution-dependent shift) as a workflow does.
- SD3 (MMDiT with pooled `y`), model_base.SD3, SD3 latent, ModelSamplingDiscreteFlow shift 3.
- Lumina 2 and Z-Image (NextDiT, model_base.Lumina2): Flux latent, caption features with an
  attention mask and `num_tokens` instead of a pooled vector, RoPE over (text index, y, x);
  Z-Image's config adds its timestep modulation, time scale and 32-token padding.
- Qwen-Image (model_base.QwenImage): Wan 2.1 latent, which is 5-D [B, C, T=1, H, W] (ComfyUI
  unsqueezes a 4-D empty latent), centred RoPE ids, no pooled vector.
- Flux.2 (model_base.Flux2): 128-channel latent at 16 px per latent px, patch size 1 in the
  model, 4-axis RoPE, no pooled vector (its text features are padded to 512 tokens).

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
LUMINA_CAP_DIM = 32      # Gemma-2 2B features (2304 in Lumina 2)
ZIMAGE_CAP_DIM = 48      # Qwen3 4B features (2560 in Z-Image)
QWEN_CONTEXT_DIM = 32    # Qwen2.5-VL 7B features (3584 in Qwen-Image)
FLUX2_CONTEXT_DIM = 32   # Mistral / Qwen3 features (15360 in Flux.2 dev)
FLUX2_LATENT_PX = 16     # px per latent px: the Flux.2 VAE's 8x, 2x2-packed into 128 channels


def _flux_unet_config() -> dict:
    config = {
        "image_model": "flux", "guidance_embed": True,
        "in_channels": 16, "out_channels": 16, "patch_size": 2,
        "vec_in_dim": FLUX_POOLED_DIM, "context_in_dim": FLUX_CONTEXT_DIM,
        "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2,
        "depth": 1, "depth_single_blocks": 1,
        "axes_dim": [8, 12, 12],          # sums to the head dim 64 / 2, as Flux.1's 16+56+56 = 128
        "theta": 10000, "qkv_bias": True,
    }
    return flux1_config(config)


def flux1_config(unet_config: dict) -> dict:
    """A Flux.1 unet_config as the ComfyUI in use takes it: newer ones (0.33.0) require
    `txt_ids_dims`, which is [] for Flux.1."""
    import comfy.ldm.flux.model

    fields = {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}
    return {**unet_config, "txt_ids_dims": []} if "txt_ids_dims" in fields else dict(unet_config)


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


def _lumina_unet_config(z_image: bool) -> dict:
    if not z_image:   # Lumina 2's layout (grouped-query attention 24/8, axes 32/32/32), scaled down
        return {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 64, "n_heads": 2,
                "n_kv_heads": 1, "axes_dims": [8, 12, 12], "axes_lens": [300, 512, 512], "rope_theta": 10000.0,
                "ffn_dim_multiplier": 4.0, "cap_feat_dim": LUMINA_CAP_DIM, "n_layers": 1, "n_refiner_layers": 1,
                "qk_norm": True}
    # Z-Image's timestep embedder always outputs 256 features and its modulation layers take
    # min(dim, 256): a dim under 256 makes the two disagree (the earlier tiny Z-Image's crash).
    return {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 256, "n_heads": 4,
            "n_kv_heads": 4, "axes_dims": [16, 24, 24], "axes_lens": [1536, 512, 512], "rope_theta": 256.0,
            "ffn_dim_multiplier": 8.0 / 3.0, "z_image_modulation": True, "time_scale": 1000.0,
            "cap_feat_dim": ZIMAGE_CAP_DIM, "n_layers": 1, "n_refiner_layers": 1, "qk_norm": True}


def tiny_lumina2(seed: int = 0):
    """Randomly initialised tiny Lumina 2 NextDiT (supported_models.Lumina2, model_base.Lumina2)."""
    rt.bootstrap()
    import comfy.model_base
    import comfy.supported_models

    return rt._build(comfy.model_base.Lumina2, comfy.supported_models.Lumina2(_lumina_unet_config(False)), seed)


def tiny_zimage(seed: int = 0):
    """Randomly initialised tiny Z-Image NextDiT (supported_models.ZImage, model_base.Lumina2), with
    Z-Image Turbo's caption / image token padding to multiples of 32."""
    rt.bootstrap()
    import torch
    import comfy.model_base
    import comfy.supported_models

    patcher = rt._build(comfy.model_base.Lumina2, comfy.supported_models.ZImage(_lumina_unet_config(True)), seed)
    # The pad tokens are bare parameters that _init_weights refuses to guess an init for, so the
    # model is built without them and given them here: what NextDiT.__init__ does for
    # pad_tokens_multiple=32 (a checkpoint with cap_pad_token), with random values.
    dm = patcher.model.diffusion_model
    gen = torch.Generator().manual_seed(seed + 1)
    dm.pad_tokens_multiple = 32
    dm.x_pad_token = torch.nn.Parameter(torch.randn(1, dm.dim, generator=gen))
    dm.cap_pad_token = torch.nn.Parameter(torch.randn(1, dm.dim, generator=gen))
    patcher.model.model_config.unet_config["pad_tokens_multiple"] = 32
    return patcher


def tiny_qwen_image(seed: int = 0):
    """Randomly initialised tiny Qwen-Image MMDiT (supported_models.QwenImage, model_base.QwenImage)."""
    rt.bootstrap()
    import comfy.model_base
    import comfy.supported_models

    unet_config = {"image_model": "qwen_image", "patch_size": 2, "in_channels": 64, "out_channels": 16,
                   "num_layers": 1, "attention_head_dim": 32, "num_attention_heads": 2,
                   "joint_attention_dim": QWEN_CONTEXT_DIM, "axes_dims_rope": (8, 12, 12)}
    return rt._build(comfy.model_base.QwenImage, comfy.supported_models.QwenImage(unet_config), seed)


def tiny_flux2(seed: int = 0):
    """Randomly initialised tiny Flux.2 (supported_models.Flux2, model_base.Flux2): Flux.2 dev's
    layout as model_detection sets it (global modulation, SiLU-gated MLP, no biases, 4 RoPE axes,
    guidance embedding), scaled down."""
    rt.bootstrap()
    import comfy.ldm.flux.model
    import comfy.model_base
    import comfy.supported_models

    config = {
        "image_model": "flux2", "guidance_embed": True, "in_channels": 128, "out_channels": 128, "patch_size": 1,
        "vec_in_dim": None, "context_in_dim": FLUX2_CONTEXT_DIM, "hidden_size": 64, "mlp_ratio": 3.0,
        "num_heads": 2, "depth": 1, "depth_single_blocks": 1, "axes_dim": [8, 8, 8, 8], "theta": 2000,
        "qkv_bias": False, "global_modulation": True, "mlp_silu_act": True, "ops_bias": False,
        "default_ref_method": "index", "ref_index_scale": 10.0,
    }
    if "txt_ids_dims" in {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}:
        config["txt_ids_dims"] = [3]    # newer ComfyUI: Flux.2's text tokens count along the 4th axis
    return rt._build(comfy.model_base.Flux2, comfy.supported_models.Flux2(config), seed)


def lumina_conds(seed: int = 0, batch: int = 1, tokens: int = 6, z_image: bool = False, padded: int = 0):
    """(positive, negative) Lumina 2 / Z-Image CONDITIONING: caption features and the text
    encoder's attention mask, whose last `padded` tokens are padding (0)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    dim = ZIMAGE_CAP_DIM if z_image else LUMINA_CAP_DIM
    mask = torch.ones(batch, tokens, dtype=torch.long)
    if padded:
        mask[:, tokens - padded:] = 0

    def cond():
        return [[torch.randn(batch, tokens, dim, generator=gen), {"attention_mask": mask.clone()}]]

    return cond(), cond()


def context_conds(context_dim: int, seed: int = 0, batch: int = 1, tokens: int = 6, **extra):
    """(positive, negative) CONDITIONING with text features only (Qwen-Image, Flux.2: no pooled
    vector), plus `extra` entries (e.g. guidance) in both."""
    import torch

    gen = torch.Generator().manual_seed(seed)

    def cond():
        return [[torch.randn(batch, tokens, context_dim, generator=gen), dict(extra)]]

    return cond(), cond()


def flux_conds(seed: int = 0, batch: int = 1, tokens: int = 6, guidance: float = 3.5,
               context_dim: int = FLUX_CONTEXT_DIM, pooled_dim: int = FLUX_POOLED_DIM):
    """(positive, negative) Flux CONDITIONING: T5-like context, CLIP-like pooled vector, guidance
    (the tiny model's widths unless told: Flux.1's are 4096 and 768)."""
    import torch

    gen = torch.Generator().manual_seed(seed)

    def cond():
        return [[torch.randn(batch, tokens, context_dim, generator=gen),
                 {"pooled_output": torch.randn(batch, pooled_dim, generator=gen), "guidance": guidance}]]

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
    """EmptySD3LatentImage's latent (16 channels, 8x), which Flux, SD3, Lumina 2, Z-Image and
    Qwen-Image workflows use (Qwen-Image's 5-D shape comes from ComfyUI's fix_empty_latent_channels)."""
    return rt.empty_latent(width_px, height_px, batch=batch, channels=16)


def empty_flux2_latent(width_px: int, height_px: int, batch: int = 1) -> dict:
    """EmptyFlux2LatentImage's latent: 128 channels, 16 px per latent px."""
    import torch

    return {"samples": torch.zeros(batch, 128, height_px // FLUX2_LATENT_PX, width_px // FLUX2_LATENT_PX)}
