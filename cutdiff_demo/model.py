"""The pack's tiny demo model: a small SDXL-architecture UNet trained on procedural shapes.

Everything a demo graph needs ships in one safetensors file (models/, made by
scripts/train_demo_model.py):

- ``diffusion_model.*``: a ``comfy.model_base.SDXL`` UNet (adm 2816 = pooled 1280 + 6 x 256
  size/crop embeddings), so ComfyUI's SDXL conditioning path, CFG and every sampler run as
  they do for a real SDXL checkpoint. Its native size is 128 px (a 16 x 16 latent).
- ``text.*``: the "text encoder", tokenizer-free: a prompt is "[colour] [shape] [on background]"
  (every part optional, "" = unconditional); each part is one learned embedding row, giving
  a context ``[1, 3, 64]`` and a pooled vector ``[1, 1280]`` (the sum of the parts' rows).
- ``decoder.*``: there is no VAE. The latent of an image is its 8x8-block mean colour and
  texture strength, mixed by a fixed 4x4 Hadamard matrix (``LATENT_MIX``: about unit-variance
  latents, as SDXL's); the decoder is the inverse mix, a bilinear x8 upsampling and a fixed
  grain scaled by the texture strength.

This module imports ComfyUI (it builds ComfyUI objects), as cutdiffusion_patch, adaptive_patch and
control_hints do.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import einsum, rearrange

import comfy.latent_formats
import comfy.model_management as mm
import comfy.model_patcher
import comfy.supported_models
import comfy.utils

MODEL_PATH = Path(__file__).resolve().parents[1] / "models" / "cutdiffusion_demo.safetensors"
NATIVE_SIZE_PX = 128  # a 16 x 16 latent: small enough to train on 2 CPU cores
LATENT_SCALE = 8  # px per latent pixel, as for SD/SDXL

# The data set's vocabulary, in embedding-row order; the palettes are what the training data draws.
COLOURS = {
    "red": (0.85, 0.12, 0.12),
    "yellow": (0.95, 0.85, 0.15),
    "blue": (0.15, 0.30, 0.90),
    "white": (0.95, 0.95, 0.95),
    "purple": (0.60, 0.20, 0.75),
}
SHAPES = ("circle", "square", "triangle", "ring", "cross")
# background name -> (base colour, texture strength in [0, 1])
BACKGROUNDS = {
    "sand": ((0.78, 0.68, 0.48), 0.9),
    "grass": ((0.22, 0.48, 0.20), 0.6),
    "slate": ((0.38, 0.40, 0.45), 0.35),
    "night": ((0.07, 0.09, 0.20), 0.15),
}
# Token 0 is "unspecified"; slot k of a prompt takes its row from the k-th word group.
WORD_GROUPS = (tuple(COLOURS), SHAPES, tuple(BACKGROUNDS))
VOCABULARY = ("",) + tuple(word for group in WORD_GROUPS for word in group)
CONTEXT_DIM = 64
POOLED_DIM = 1280  # SDXL's pooled text embedding

# Latent channel k = sum_j LATENT_MIX[k, j] * feature_j, features = (2r-1, 2g-1, 2b-1, 2t-1):
# a symmetric Hadamard mix (2 x an orthogonal matrix), so every channel carries colour and
# texture. The factor 2 gives the data's latents about unit variance (1.08), as SDXL's scale
# factor gives its VAE latents: SDXL's noise schedule assumes that scale, and with half of it
# (the Hadamard / 2 of models before 2026-11-26) every noise level destroyed 4x more of the
# image than it does for SDXL, so a split at half the timesteps sat at a quarter of SDXL's
# signal-to-noise ratio there.
LATENT_MIX = torch.tensor([
    [1.0, 1.0, 1.0, 1.0],
    [1.0, -1.0, 1.0, -1.0],
    [1.0, 1.0, -1.0, -1.0],
    [1.0, -1.0, -1.0, 1.0],
])

# The UNet, in the keys comfy.model_detection produces: SDXL's layout (no attention at the
# highest resolution, a linear-in transformer), small enough for an 8 MB fp16 file.
UNET_CONFIG = {
    "use_checkpoint": False,
    "image_size": 16,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": POOLED_DIM + 6 * 256,  # SDXL: pooled + 6 size embeddings
    "num_classes": "sequential",
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 32,
    "num_res_blocks": [1, 1, 1],
    "channel_mult": [1, 2, 3],
    "transformer_depth": [0, 1, 1],
    "transformer_depth_output": [0, 0, 1, 1, 1, 1],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": True,
    "context_dim": CONTEXT_DIM,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
}
HEAD_CHANNELS = 32  # SDXL's config forces 64, i.e. one or two heads at these widths


def parse_prompt(prompt: str) -> tuple[int, int, int]:
    """Token ids (colour, shape, background) of "[colour] [shape] [on background]"; 0 = unspecified.

    Raises ValueError naming the problem and the whole vocabulary.
    """
    words = prompt.lower().split()
    ids = [0, 0, 0]
    position = 0
    for slot, group in enumerate(WORD_GROUPS):
        if slot == 2 and words[position:position + 1] == ["on"]:
            if position + 1 == len(words):
                raise ValueError(_prompt_error(prompt, "'on' must be followed by a background"))
            position += 1
        if position < len(words) and words[position] in group:
            ids[slot] = VOCABULARY.index(words[position])
            position += 1
    if position < len(words):
        raise ValueError(_prompt_error(prompt, f"unexpected word {words[position]!r}"))
    return ids[0], ids[1], ids[2]


def _prompt_error(prompt: str, problem: str) -> str:
    colours, shapes, backgrounds = (", ".join(group) for group in WORD_GROUPS)
    return (f"Demo prompt {prompt!r}: {problem}. The demo model only knows prompts of the form "
            f"'[colour] [shape] [on background]' (every part optional, '' = unconditional), e.g. "
            f"'red circle on sand'; colours: {colours}; shapes: {shapes}; backgrounds: {backgrounds}")


class DemoTextEncoder(torch.nn.Module):
    """Token ids [B, 3] -> (context [B, 3, CONTEXT_DIM], pooled [B, POOLED_DIM])."""

    def __init__(self):
        super().__init__()
        self.context = torch.nn.Parameter(torch.randn(len(VOCABULARY), CONTEXT_DIM))
        # Summed over three slots: scale so the pooled vector has about unit variance.
        self.pooled = torch.nn.Parameter(torch.randn(len(VOCABULARY), POOLED_DIM) / 3 ** 0.5)

    def forward(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.context[token_ids], self.pooled[token_ids].sum(dim=1)

    def conditioning(self, prompt: str) -> list:
        """ComfyUI CONDITIONING for one prompt (SDXL style: context + pooled_output)."""
        with torch.no_grad():
            context, pooled = self(torch.tensor([parse_prompt(prompt)]))
        return [[context.float(), {"pooled_output": pooled.float()}]]


class DemoDecoder(torch.nn.Module):
    """Latent [B, 4, h, w] (as KSampler outputs it) -> ComfyUI IMAGE [B, 8h, 8w, 3] in [0, 1]."""

    GRAIN_SEED = 0

    def __init__(self):
        super().__init__()
        # features in [0, 1] (r, g, b, texture) = weight @ latent + bias; grain: its amplitude
        self.weight = torch.nn.Parameter(torch.linalg.inv(LATENT_MIX) / 2, requires_grad=False)
        self.bias = torch.nn.Parameter(torch.full((4,), 0.5), requires_grad=False)
        self.grain = torch.nn.Parameter(torch.tensor(0.035), requires_grad=False)

    def features(self, latent: torch.Tensor) -> torch.Tensor:
        """(r, g, b, texture strength) in [0, 1] per latent pixel, [B, 4, h, w]."""
        mixed = einsum(self.weight, latent.float(), "f c, b c h w -> b f h w")
        return mixed + rearrange(self.bias, "f -> f 1 1")

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        features = F.interpolate(self.features(latent), scale_factor=LATENT_SCALE, mode="bilinear",
                                 align_corners=False)
        rgb, texture = features[:, :3], features[:, 3:].clamp(0, 1)
        # The same grain for every image of a size: texture is a property of the background, not noise.
        grain = torch.randn(rgb.shape[-2:], generator=torch.Generator().manual_seed(self.GRAIN_SEED))
        image = (rgb + self.grain * texture * grain).clamp(0, 1)
        return rearrange(image, "b c h w -> b h w c")

    def latent_format(self) -> comfy.latent_formats.LatentFormat:
        """The model's latent format: no scaling (KSampler's output is the latent the decoder takes),
        and previews through the decoder's colour map (Latent2RGB maps [-1, 1] to [0, 1])."""
        latent_format = comfy.latent_formats.LatentFormat()
        latent_format.scale_factor = 1.0
        latent_format.latent_channels = 4
        latent_format.latent_rgb_factors = (2 * self.weight[:3].T).tolist()
        latent_format.latent_rgb_factors_bias = (2 * self.bias[:3] - 1).tolist()
        return latent_format


def model_config(decoder: DemoDecoder) -> comfy.supported_models.SDXL:
    """The SDXL model config of the demo UNet, with its latent format and declared native size."""
    config = comfy.supported_models.SDXL(UNET_CONFIG)
    config.unet_config["num_head_channels"] = HEAD_CHANNELS
    config.latent_format = decoder.latent_format()
    config.native_size_px = NATIVE_SIZE_PX  # read by cutdiffusion_patch.native_size_px (patch_size = 0)
    return config


@dataclass
class DemoModel:
    model: comfy.model_patcher.ModelPatcher
    text: DemoTextEncoder
    decoder: DemoDecoder


def _submodule_state(state: dict, prefix: str) -> dict:
    return {key[len(prefix):]: value.float() for key, value in state.items() if key.startswith(prefix)}


def _load_file(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"CutDiffusion demo model {path} is missing; make it with "
                                f"scripts/train_demo_model.py")
    return comfy.utils.load_torch_file(str(path))


def load_decoder(path: Path = MODEL_PATH) -> DemoDecoder:
    decoder = DemoDecoder()
    decoder.load_state_dict(_submodule_state(_load_file(path), "decoder."))
    return decoder


def load_demo_model(path: Path = MODEL_PATH) -> DemoModel:
    """Load the shipped file into a ModelPatcher, the text encoder and the decoder."""
    return load_demo_file(_load_file(path), model_config)


def load_demo_file(state: dict, make_config, decoder_class: type[DemoDecoder] = DemoDecoder) -> DemoModel:
    """A demo model's file (diffusion model, text encoder, decoder) as a ModelPatcher the way
    comfy.sd.load_diffusion_model_state_dict loads one (ComfyUI picks the dtype and devices);
    `make_config(decoder)` gives the model config."""
    text, decoder = DemoTextEncoder(), decoder_class()
    text.load_state_dict(_submodule_state(state, "text."))
    decoder.load_state_dict(_submodule_state(state, "decoder."))

    model_state = {key: value for key, value in state.items() if key.startswith("diffusion_model.")}
    config = make_config(decoder)
    load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
    dtype = mm.unet_dtype(model_params=comfy.utils.calculate_parameters(model_state),
                          supported_dtypes=config.supported_inference_dtypes,
                          weight_dtype=comfy.utils.weight_dtype(model_state))
    config.set_inference_dtype(dtype, mm.unet_manual_cast(dtype, load_device, config.supported_inference_dtypes))
    model = config.get_model(model_state).to(offload_device)
    model.load_model_weights(model_state, "diffusion_model.")
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)
    return DemoModel(patcher, text, decoder)
