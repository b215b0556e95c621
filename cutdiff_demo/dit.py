"""The pack's tiny demo DiT: a small Flux-architecture transformer trained with rectified flow
on the same procedural one-object shapes as the UNet demo model (issue 15 item 5).

One safetensors file (models/cutdiffusion_demo_dit.safetensors, made by scripts/train_demo_dit.py):

- ``diffusion_model.*``: ComfyUI's own ``comfy.model_base.Flux`` (``comfy.ldm.flux.model.Flux``)
  with a small ``comfy.supported_models.Flux`` config (``DIT_CONFIG``): the demo's 4 latent
  channels, 2x2-patchified inside the model (img_in takes 4 x 2 x 2 = 16 features, as Flux.1
  takes 16 x 2 x 2 = 64), hidden 128, 2 heads of 64 with RoPE axes 16 + 24 + 24 (index, y, x),
  2 double-stream and 2 single-stream blocks, no guidance embedding (Schnell-style: real CFG).
  The text goes in as Flux's T5 context (``context_in_dim`` 64) and CLIP pooled ``y``
  (``vec_in_dim`` 1280): exactly what ``cutdiff_demo.model.DemoTextEncoder`` outputs.
- ``text.*``: a ``DemoTextEncoder`` (the UNet demo's class) trained together with the DiT.
- ``decoder.*``: the UNet demo's fixed ``DemoDecoder`` (no VAE; the latent is 8x8-block colour
  and texture), whose latent format (4 channels, scale 1) the model config takes.

Model sampling: ComfyUI's FLUX model type, i.e. CONST (x_t = (1 - t) x0 + t noise, the model
predicts the velocity noise - x0) with ModelSamplingFlux at ``shift`` 0: ModelSamplingFlux's shift
is Flux's mu, sigma(t) = e^mu / (e^mu + 1/t - 1), so mu = 0 is the plain schedule sigma = t
(shift 1). The model was trained on exactly that schedule (t uniform), at one size (128 px,
64 image tokens), so there is no resolution-dependent shift to apply.

Its native size is 128 px (a 16 x 16 latent, 8 x 8 tokens), declared as ``native_size_px`` on the
model config so CutDiffusion's patch_size 0 finds it.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import comfy.ldm.flux.model
import comfy.model_base
import comfy.supported_models
import comfy.utils

from . import model as dm
from .model import DemoDecoder, DemoModel

MODEL_PATH = Path(__file__).resolve().parents[1] / "models" / "cutdiffusion_demo_dit.safetensors"
NATIVE_SIZE_PX = dm.NATIVE_SIZE_PX   # 128 px = a 16 x 16 latent = 8 x 8 tokens
FLUX_SHIFT = 0.0                     # ModelSamplingFlux's mu: 0 = sigma(t) = t (shift 1)

# In the keys comfy.model_detection produces for a Flux checkpoint (FluxParams' fields).
DIT_CONFIG = {
    "image_model": "flux",
    "guidance_embed": False,
    "in_channels": 4, "out_channels": 4, "patch_size": 2,     # 4 latent channels x 2 x 2 = 16 per token
    "vec_in_dim": dm.POOLED_DIM, "context_in_dim": dm.CONTEXT_DIM,
    "hidden_size": 128, "mlp_ratio": 4.0, "num_heads": 2,
    "depth": 2, "depth_single_blocks": 2,
    "axes_dim": [16, 24, 24],          # sums to the head dim 128 / 2 = 64, as Flux.1's 16 + 56 + 56 = 128
    "theta": 10000, "qkv_bias": True,
}


class DemoFluxConfig(comfy.supported_models.Flux):
    """supported_models.Flux with the demo's plain flow schedule."""

    sampling_settings = {"shift": FLUX_SHIFT}

    def get_model(self, state_dict, prefix="", device=None):
        return comfy.model_base.Flux(self, device=device)


def model_config(decoder: DemoDecoder) -> DemoFluxConfig:
    """The Flux model config of the demo DiT, with the decoder's latent format and the native size."""
    unet_config = dict(DIT_CONFIG)
    if "txt_ids_dims" in {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}:
        unet_config["txt_ids_dims"] = []   # newer ComfyUI: required, [] for Flux.1
    config = DemoFluxConfig(unet_config)
    config.latent_format = decoder.latent_format()
    config.native_size_px = NATIVE_SIZE_PX   # read by native_size.native_size_px (patch_size = 0)
    return config


def _submodule_state(state: dict, prefix: str) -> dict:
    return {key[len(prefix):]: value.float() for key, value in state.items() if key.startswith(prefix)}


def load_demo_dit(path: Path = MODEL_PATH) -> DemoModel:
    """Load the shipped file into a ModelPatcher (as comfy.sd.load_diffusion_model_state_dict does:
    ComfyUI picks the dtype and devices), the text encoder and the decoder.

    ``.text.conditioning(prompt)`` gives the CONDITIONING (Flux's context + pooled_output);
    ``.decoder(latent)`` the IMAGE.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CutDiffusion demo DiT {path} is missing; make it with scripts/train_demo_dit.py")
    return dm.load_demo_file(comfy.utils.load_torch_file(str(path)), model_config)

