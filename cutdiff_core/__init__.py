"""CutDiffusion sampling core.

`plan`, `patches`, `windows`, `size_cond`, `config`, `run_state` and `adaptive`
are plain torch and import without ComfyUI; `cutdiffusion_patch` (CutDiffusion),
`adaptive_patch` (AdaptiveDiffusion) and `control_hints` are the modules that
talk to ComfyUI.
"""
