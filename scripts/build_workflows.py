"""Writes workflows/*.json (UI format, for ComfyUI's template browser) and their .jpg thumbnails.

    .venv/bin/python scripts/build_workflows.py

Each workflow is described below by its nodes, the widget values that differ
from the node's defaults, and its links; everything else (widget order, the
frontend's extra control values, socket lists, link ids) is read from the live
node definitions of the real ComfyUI runtime, so regenerating after a node
gains an input keeps the files loadable. Thumbnails draw the plan the
workflow's CutDiffusion KSampler will run (the same preview the node shows).
tests/test_workflows.py validates the result against the live definitions.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from cutdiff_dev import comfy_runtime as rt  # noqa: E402

rt.bootstrap()

from cutdiff_dev import ui_workflow as uw  # noqa: E402

WORKFLOWS = ROOT / "workflows"
SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
NEGATIVE = "blurry, low quality, deformed, duplicate, watermark, text"
# The paper's settings: 50 steps, cfg 7.5, Euler on the normal (uniform-timestep) schedule.
PAPER_SAMPLING = {"steps": 50, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal"}
THUMB_SIZE = (512, 384)


@dataclass
class N:
    """One node of a workflow: its class, widget overrides and {input: (source node key, output slot)}."""
    key: str
    type: str
    pos: tuple[int, int]
    widgets: dict = field(default_factory=dict)
    links: dict = field(default_factory=dict)
    title: str | None = None
    width: int = 320


def sdxl_front(prompt: str, x0: int = 0) -> list[N]:
    return [
        N("ckpt", "CheckpointLoaderSimple", (x0, 100), {"ckpt_name": SDXL_CHECKPOINT}),
        N("pos", "CLIPTextEncode", (x0 + 360, 0), {"text": prompt}, {"clip": ("ckpt", 1)}, "Positive prompt", 400),
        N("neg", "CLIPTextEncode", (x0 + 360, 260), {"text": NEGATIVE}, {"clip": ("ckpt", 1)}, "Negative prompt", 400),
    ]


def sampler(model_from: tuple[str, int], latent_from: tuple[str, int], x: int, **widgets) -> N:
    return N("sampler", "CutDiffusionKSampler", (x, 0), {"seed": 42, **PAPER_SAMPLING, **widgets},
             {"model": model_from, "positive": ("pos", 0), "negative": ("neg", 0), "latent_image": latent_from},
             width=400)


def decode_and_save(x: int, prefix: str, vae_from: tuple[str, int] = ("ckpt", 2)) -> list[N]:
    return [
        N("decode", "VAEDecode", (x, 0), {}, {"samples": ("sampler", 0), "vae": vae_from}),
        N("save", "SaveImage", (x, 120), {"filename_prefix": prefix}, {"images": ("decode", 0)}, width=520),
    ]


def txt2img(prompt: str, width: int, height: int, prefix: str) -> list[N]:
    return sdxl_front(prompt) + [
        N("latent", "EmptyLatentImage", (360, 520), {"width": width, "height": height, "batch_size": 1}),
        sampler(("ckpt", 0), ("latent", 0), 820),
    ] + decode_and_save(1260, prefix)


def hires_fix() -> list[N]:
    return sdxl_front("a detailed photograph, sharp focus, intricate detail, high resolution") + [
        N("image", "LoadImage", (-400, 420), {"image": "example.png"}, title="Image to upscale"),
        N("scale", "ImageScale", (0, 420), {"upscale_method": "lanczos", "width": 2048, "height": 2048,
                                           "crop": "center"}, {"image": ("image", 0)}),
        N("encode", "VAEEncode", (360, 520), {}, {"pixels": ("scale", 0), "vae": ("ckpt", 2)}),
        # denoise 0.5 keeps the input's layout; stage 1 still gets at least one step.
        sampler(("ckpt", 0), ("encode", 0), 820, denoise=0.5, steps=30),
    ] + decode_and_save(1260, "cutdiffusion/hires_fix")


def adaptive() -> list[N]:
    nodes = txt2img("a cozy reading corner in a sunlit library, wooden shelves full of books, detailed, photo",
                    2048, 2048, "cutdiffusion/adaptive_2048")
    for node in nodes:
        if node.key == "sampler":
            node.links["model"] = ("adaptive", 0)
    return nodes + [N("adaptive", "AdaptiveDiffusion", (360, 700), {}, {"model": ("ckpt", 0)})]


# DiT workflows: loaders, model files and sampling as ComfyUI's own templates for these models
# (flux_dev_full_text_to_image / image_z_image_turbo), at 2048x2048 with the pack's defaults.
# Both models run with cfg 1 (Flux.1-dev is guidance-distilled, Z-Image Turbo few-step), so the
# negative is the templates' ConditioningZeroOut: ComfyUI skips the uncond half at cfg 1.
def dit_txt2img(loaders: list[N], model_from: tuple[str, int], clip_from: tuple[str, int], prompt: str, size: int,
                sampling: dict, prefix: str, guidance: float | None = None) -> list[N]:
    nodes = loaders + [
        N("text", "CLIPTextEncode", (400, 0), {"text": prompt}, {"clip": clip_from}, "Prompt", 400),
        N("neg", "ConditioningZeroOut", (400, 260), {}, {"conditioning": ("text", 0)}, "Negative (unused at cfg 1)"),
        N("latent", "EmptySD3LatentImage", (400, 560), {"width": size, "height": size, "batch_size": 1}),
    ]
    if guidance is None:
        pos = ("text", 0)
    else:
        nodes.append(N("guidance", "FluxGuidance", (400, 380), {"guidance": guidance}, {"conditioning": ("text", 0)}))
        pos = ("guidance", 0)
    return nodes + [
        N("sampler", "CutDiffusionKSampler", (860, 0), {"seed": 42, **sampling},
          {"model": model_from, "positive": pos, "negative": ("neg", 0), "latent_image": ("latent", 0)}, width=400),
    ] + decode_and_save(1300, prefix, vae_from=("vae", 0))


def flux_dev() -> list[N]:
    size = 2048
    return dit_txt2img([
        N("unet", "UNETLoader", (0, 0), {"unet_name": "flux1-dev.safetensors"}),
        N("clip", "DualCLIPLoader", (0, 160), {"clip_name1": "clip_l.safetensors",
                                              "clip_name2": "t5xxl_fp16.safetensors", "type": "flux"}),
        N("vae", "VAELoader", (0, 400), {"vae_name": "ae.safetensors"}),
        # Flux's resolution-dependent shift, set for the target size as ComfyUI's Flux templates do.
        N("shift", "ModelSamplingFlux", (0, 520), {"width": size, "height": size}, {"model": ("unet", 0)}),
    ], ("shift", 0), ("clip", 0),
        "a red fox standing in a snowy birch forest at dawn, soft mist, detailed fur, photo", size,
        {"steps": 28, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple"}, "cutdiffusion/flux_2048",
        guidance=3.5)


def z_image_turbo() -> list[N]:
    return dit_txt2img([
        N("unet", "UNETLoader", (0, 0), {"unet_name": "z_image_turbo_bf16.safetensors"}),
        N("clip", "CLIPLoader", (0, 160), {"clip_name": "qwen_3_4b.safetensors", "type": "lumina2"}),
        N("vae", "VAELoader", (0, 360), {"vae_name": "ae.safetensors"}),
        N("shift", "ModelSamplingAuraFlow", (0, 480), {"shift": 3.0}, {"model": ("unet", 0)}),
    ], ("shift", 0), ("clip", 0),
        "a lighthouse on a rocky coast under a stormy sky, waves breaking, cinematic light, photo", 2048,
        {"steps": 8, "cfg": 1.0, "sampler_name": "res_multistep", "scheduler": "simple"},
        "cutdiffusion/z_image_turbo_2048")


def demo() -> list[N]:
    from cutdiff_demo.model import NATIVE_SIZE_PX

    # A 2:1 panorama at 8x the native area with the sampler's defaults (what a new user runs), at CPU speed.
    return [
        N("demo", "CutDiffusionDemoModel", (0, 0), {"prompt": "red circle on sand"}),
        N("latent", "EmptyLatentImage", (0, 300), {"width": 4 * NATIVE_SIZE_PX, "height": 2 * NATIVE_SIZE_PX,
                                                   "batch_size": 1}),
        N("sampler", "CutDiffusionKSampler", (360, 0), {"seed": 7, "steps": 12, "cfg": 4.0, "sampler_name": "euler",
                                                        "scheduler": "normal"},
          {"model": ("demo", 0), "positive": ("demo", 1), "negative": ("demo", 2), "latent_image": ("latent", 0)},
          width=400),
        N("decode", "CutDiffusionDemoDecode", (800, 0), {}, {"samples": ("sampler", 0)}),
        N("save", "SaveImage", (800, 120), {"filename_prefix": "cutdiffusion/demo"}, {"images": ("decode", 0)},
          width=520),
    ]


def demo_dit() -> list[N]:
    from cutdiff_demo.dit import NATIVE_SIZE_PX

    # 9x the native area with the pack's defaults, sampled as the DiT bench samples (BENCHMARKS.md).
    return [
        N("demo", "CutDiffusionDemoDiT", (0, 0), {"prompt": "red circle on sand"}),
        N("latent", "EmptyLatentImage", (0, 300), {"width": 3 * NATIVE_SIZE_PX, "height": 3 * NATIVE_SIZE_PX,
                                                   "batch_size": 1}),
        N("sampler", "CutDiffusionKSampler", (360, 0), {"seed": 7, "steps": 20, "cfg": 3.0, "sampler_name": "euler",
                                                        "scheduler": "simple"},
          {"model": ("demo", 0), "positive": ("demo", 1), "negative": ("demo", 2), "latent_image": ("latent", 0)},
          width=400),
        N("decode", "CutDiffusionDemoDecode", (800, 0), {}, {"samples": ("sampler", 0)}),
        N("save", "SaveImage", (800, 120), {"filename_prefix": "cutdiffusion/demo_dit"}, {"images": ("decode", 0)},
          width=520),
    ]


def catalogue() -> dict:
    """name -> (title shown in the thumbnail, nodes)."""
    out = {
        "cutdiffusion_sdxl_2048": ("SDXL 2048x2048", txt2img(
            "a majestic lion resting on a rock in the savanna at golden hour, detailed fur, photo",
            2048, 2048, "cutdiffusion/sdxl_2048")),
        "cutdiffusion_sdxl_panorama_4096x2048": ("Panorama 4096x2048", txt2img(
            "a wide panorama of snowy mountains above a calm lake at sunrise, landscape photo, detailed",
            4096, 2048, "cutdiffusion/panorama")),
        "cutdiffusion_hires_fix": ("Hires fix to 2048x2048", hires_fix()),
        "cutdiffusion_adaptivediffusion": ("AdaptiveDiffusion + CutDiffusion", adaptive()),
        "cutdiffusion_flux_2048": ("Flux.1-dev 2048x2048", flux_dev()),
        "cutdiffusion_zimage_2048": ("Z-Image Turbo 2048x2048", z_image_turbo()),
    }
    import nodes
    if "CutDiffusionDemoModel" in nodes.NODE_CLASS_MAPPINGS:  # the demo nodes land separately
        out["cutdiffusion_demo_model"] = ("Demo model (CPU)", demo())
        out["cutdiffusion_demo_dit"] = ("Demo DiT (CPU)", demo_dit())
    return out


def _height(node: N) -> int:
    rows = max(len(uw.link_inputs(node.type)), len(uw.outputs(node.type)))
    widgets = uw.widget_specs(node.type)
    text = sum(100 for w in widgets if w.type == "STRING" and w.options.get("multiline"))
    plan = 300 if node.type == "CutDiffusionKSampler" else 0  # the plan preview (web/js/cutdiffusion.js)
    image = 300 if node.type in ("LoadImage", "SaveImage") else 0
    return 40 + 22 * rows + 24 * sum(1 + w.extra_values for w in widgets) + text + plan + image


def build(nodes: list[N]) -> dict:
    ids = {node.key: i + 1 for i, node in enumerate(nodes)}
    links, out_links = [], {}
    for node in nodes:
        for name, (source, slot) in node.links.items():
            link_id = len(links) + 1
            link_type = uw.outputs(next(n.type for n in nodes if n.key == source))[slot][1]
            target_slot = [n for n, _ in uw.link_inputs(node.type)].index(name)
            links.append([link_id, ids[source], slot, ids[node.key], target_slot, link_type])
            out_links.setdefault((source, slot), []).append(link_id)
    ui_nodes = []
    for order, node in enumerate(_topological(nodes)):
        values = []
        for spec in uw.widget_specs(node.type):
            values.append(node.widgets.get(spec.name, uw.default_value(spec)))
            if spec.options.get("control_after_generate"):
                values.append("fixed")  # examples reproduce their thumbnail's settings
            if spec.options.get("image_upload"):
                values.append("image")
        unknown = set(node.widgets) - {s.name for s in uw.widget_specs(node.type)}
        if unknown:
            raise ValueError(f"{node.key}: {node.type} has no widgets {sorted(unknown)}")
        link_ids = {name: None for name, _ in uw.link_inputs(node.type)}
        for link in links:
            if link[3] == ids[node.key]:
                link_ids[uw.link_inputs(node.type)[link[4]][0]] = link[0]
        ui = {
            "id": ids[node.key], "type": node.type, "pos": list(node.pos), "size": [node.width, _height(node)],
            "flags": {}, "order": order, "mode": 0,
            "inputs": [{"name": name, "type": kind, "link": link_ids[name]}
                       for name, kind in uw.link_inputs(node.type)],
            "outputs": [{"name": name, "type": kind, "links": out_links.get((node.key, slot), []), "slot_index": slot}
                        for slot, (name, kind) in enumerate(uw.outputs(node.type))],
            "properties": {"Node name for S&R": node.type},
            "widgets_values": values,
        }
        if node.title:
            ui["title"] = node.title
        ui_nodes.append(ui)
    return {
        "last_node_id": len(nodes), "last_link_id": len(links),
        "nodes": sorted(ui_nodes, key=lambda n: n["id"]), "links": links, "groups": [], "config": {},
        # Opens with the whole graph in view on a ~1600 px wide window.
        "extra": {"ds": {"scale": 0.75, "offset": [40 - min(n.pos[0] for n in nodes),
                                                   120 - min(n.pos[1] for n in nodes)]}},
        "version": 0.4,
    }


def _topological(nodes: list[N]) -> list[N]:
    done, out = set(), []
    while len(out) < len(nodes):
        for node in nodes:
            if node.key not in done and all(src in done for src, _ in node.links.values()):
                done.add(node.key)
                out.append(node)
    return out


def thumbnail(title: str, workflow: dict, path: Path) -> None:
    """The plan of the workflow's CutDiffusion KSampler: stage-1 patches left, stage-2 windows right."""
    from PIL import Image, ImageDraw, ImageFont

    from comfyui_cutdiffusion.nodes.plan_route import preview_plan

    plan = preview_plan(_plan_params(workflow))
    image = Image.new("RGB", THUMB_SIZE, (24, 26, 32))
    draw = ImageDraw.Draw(image)
    big, small = ImageFont.load_default(size=26), ImageFont.load_default(size=15)
    draw.text((16, 12), title, font=big, fill=(235, 235, 235))
    panel_w, panel_h, top = (THUMB_SIZE[0] - 48) // 2, THUMB_SIZE[1] - 150, 60
    full_w, full_h = plan["width"] + plan["grid"]["pad_w"], plan["height"] + plan["grid"]["pad_h"]
    scale = min(panel_w / full_w, panel_h / full_h)
    g = plan["grid"]
    patches = [(j * g["patch_w"], i * g["patch_h"], g["patch_w"], g["patch_h"])
               for i in range(g["rows"]) for j in range(g["cols"])]
    first = plan["layout"]
    windows = plan["windows"]["rects"]
    if plan.get("target_pass") == "whole frame":   # native first, then the whole image at the target size
        stage1, patches = "no patches", []
        stage2, windows = f"then {plan['steps']} steps, whole frame", [(0, 0, plan["width"], plan["height"])]
    elif first and not first["direct"]:   # native first: the target pass in tiles, after a layout pass
        stage1 = f"layout guidance: {g['rows']}x{g['cols']} patches" if plan["guided"] else "no stage 1"
        stage2 = f"then {plan['stage2_steps']} steps, {plan['windows']['count']} tiles"
    else:
        stage1 = f"stage 1: {plan['stage1_steps']} steps, {g['rows']}x{g['cols']} patches"
        stage2 = f"stage 2: {plan['stage2_steps']} steps, {plan['windows']['count']} windows"
    for k, (rects, color, caption) in enumerate(((patches, (78, 161, 255), stage1),
                                                 (windows, (255, 166, 77), stage2))):
        x0 = 16 + k * (panel_w + 16)
        draw.rectangle([x0, top, x0 + full_w * scale, top + full_h * scale], fill=(44, 46, 54))
        # Translucent fills: overlapping windows show up brighter where they overlap.
        overlay = Image.new("RGBA", THUMB_SIZE, (0, 0, 0, 0))
        for x, y, w, h in rects:
            layer = Image.new("RGBA", THUMB_SIZE, (0, 0, 0, 0))
            ImageDraw.Draw(layer).rectangle(
                [x0 + x * scale + 1, top + y * scale + 1, x0 + (x + w) * scale - 2, top + (y + h) * scale - 2],
                fill=(*color, 45), outline=(*color, 255), width=2)
            overlay = Image.alpha_composite(overlay, layer)
        image.paste(overlay, (0, 0), overlay)
        draw.text((x0, top + full_h * scale + 8), caption, font=small, fill=color)
    layout = f" after a {first['w']}x{first['h']} layout" if first and not first["direct"] else ""
    draw.text((16, THUMB_SIZE[1] - 52), f"{plan['width']}x{plan['height']} px{layout}, {plan['evaluations_per_image']} "
              f"model evaluations per image", font=small, fill=(220, 220, 220))
    draw.text((16, THUMB_SIZE[1] - 30), f"MultiDiffusion: {plan['multidiffusion_evaluations']}", font=small,
              fill=(150, 150, 150))
    image.save(path, quality=88)


def _plan_params(workflow: dict) -> dict:
    prompt = uw.to_api_prompt(workflow)
    sampler_id, sampler_node = next((k, v) for k, v in prompt.items() if v["class_type"] == "CutDiffusionKSampler")
    params = {k: v for k, v in sampler_node["inputs"].items() if not isinstance(v, list)}
    # The target size: the first node upstream of latent_image that has width/height (as the web preview does).
    source = sampler_node["inputs"]["latent_image"][0]
    while "width" not in prompt[source]["inputs"]:
        source = next(v[0] for v in prompt[source]["inputs"].values() if isinstance(v, list))
    params.update(width=prompt[source]["inputs"]["width"], height=prompt[source]["inputs"]["height"])
    model_source = sampler_node["inputs"]["model"][0]
    while "model" in prompt[model_source]["inputs"]:
        model_source = prompt[model_source]["inputs"]["model"][0]
    params["model_source"] = prompt[model_source]["class_type"]
    return {k: str(v) for k, v in params.items()}


def main() -> None:
    rt.init_nodes()
    WORKFLOWS.mkdir(exist_ok=True)
    for name, (title, nodes) in catalogue().items():
        workflow = build(nodes)
        (WORKFLOWS / f"{name}.json").write_text(json.dumps(workflow, indent=1) + "\n")
        thumbnail(title, workflow, WORKFLOWS / f"{name}.jpg")
        print(f"wrote workflows/{name}.json + .jpg")


if __name__ == "__main__":
    main()
