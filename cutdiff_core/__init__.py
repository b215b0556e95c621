"""CutDiffusion sampling core.

`plan`, `patches`, `windows` and `size_cond` are plain torch and import without
ComfyUI; `comfy_adapter` is the one module that talks to ComfyUI.
"""
