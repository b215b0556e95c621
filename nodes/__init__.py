"""The pack's ComfyUI nodes (V3 schema)."""
from .adaptive import AdaptiveDiffusion
from .cutdiffusion import CutDiffusion, CutDiffusionKSampler
from .demo import CutDiffusionDemoDecode, CutDiffusionDemoDiT, CutDiffusionDemoModel

NODES = [CutDiffusion, CutDiffusionKSampler, AdaptiveDiffusion, CutDiffusionDemoModel, CutDiffusionDemoDiT,
         CutDiffusionDemoDecode]
