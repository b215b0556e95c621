"""The pack's ComfyUI nodes (V3 schema)."""
from .cutdiffusion import CutDiffusion, CutDiffusionKSampler

NODES = [CutDiffusion, CutDiffusionKSampler]
