"""CutDiffusion sampling core.

`plan`, `patches`, `windows`, `size_cond`, `config`, `run_state` and `adaptive`
are plain torch and import without ComfyUI; `comfy_adapter` (CutDiffusion),
`adaptive_patch` (AdaptiveDiffusion), `control_hints` and `demo_model` are the
modules that talk to ComfyUI.
"""
