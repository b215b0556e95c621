"""Demo nodes: the pack's tiny embedded model, so a graph runs on a CPU with no downloaded weights."""
from __future__ import annotations

from comfy_api.latest import io

from ..cutdiff_demo import dit as demo_dit
from ..cutdiff_demo import model as demo_model

CATEGORY = "sampling/cutdiffusion/demo"


def _demo_schema(node_id: str, display_name: str, description: str, model_tooltip: str,
                 positive_tooltip: str) -> io.Schema:
    return io.Schema(
        node_id=node_id,
        display_name=display_name,
        category=CATEGORY,
        description=description,
        inputs=[
            io.String.Input("prompt", default="red circle on sand",
                            tooltip="'[colour] [shape] [on background]', every part optional. Colours: "
                                    f"{', '.join(demo_model.COLOURS)}; shapes: {', '.join(demo_model.SHAPES)}; "
                                    f"backgrounds: {', '.join(demo_model.BACKGROUNDS)}."),
        ],
        outputs=[
            io.Model.Output(display_name="MODEL", tooltip=model_tooltip),
            io.Conditioning.Output(display_name="positive", tooltip=positive_tooltip),
            io.Conditioning.Output(display_name="negative", tooltip="The empty prompt (what CFG pushes away from)."),
        ],
    )


class _DemoModelNode(io.ComfyNode):
    """A demo model with its prompt encoded; subclasses name the loader and the schema."""
    @staticmethod
    def load():
        raise NotImplementedError

    @classmethod
    def validate_inputs(cls, prompt: str) -> bool | str:
        try:
            demo_model.parse_prompt(prompt)
        except ValueError as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, prompt: str) -> io.NodeOutput:
        demo = cls.load()
        return io.NodeOutput(demo.model, demo.text.conditioning(prompt), demo.text.conditioning(""))


class CutDiffusionDemoModel(_DemoModelNode):
    load = staticmethod(demo_model.load_demo_model)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return _demo_schema(
            "CutDiffusionDemoModel", "CutDiffusion Demo Model",
            f"The pack's tiny demo model (an SDXL-architecture UNet trained on procedural shapes, native size "
            f"{demo_model.NATIVE_SIZE_PX} px) with its prompt encoded: sample it like SDXL, decode with "
            "CutDiffusion Demo Decode. A demo, not a real image model.",
            f"The demo UNet (SDXL conditioning, EPS, native {demo_model.NATIVE_SIZE_PX} px).",
            "The prompt, with SDXL's pooled output.")


class CutDiffusionDemoDiT(_DemoModelNode):
    load = staticmethod(demo_dit.load_demo_dit)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return _demo_schema(
            "CutDiffusionDemoDiT", "CutDiffusion Demo DiT",
            f"The pack's tiny demo DiT (a Flux-architecture transformer trained with rectified flow on the same "
            f"shapes, native size {demo_dit.NATIVE_SIZE_PX} px) with its prompt encoded: sample it like Flux "
            "schnell (real CFG about 3, euler / simple), decode with CutDiffusion Demo Decode. A demo, not a real "
            "image model.",
            f"The demo DiT (Flux conditioning, flow matching, native {demo_dit.NATIVE_SIZE_PX} px).",
            "The prompt, as Flux's text context and pooled vector.")


class CutDiffusionDemoDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CutDiffusionDemoDecode",
            display_name="CutDiffusion Demo Decode",
            category=CATEGORY,
            description="Turn a latent of the CutDiffusion demo model into an image (the demo's stand-in for a VAE "
                        "decoder: 8 px per latent pixel).",
            inputs=[io.Latent.Input("samples", tooltip="A latent sampled with the CutDiffusion Demo Model or Demo "
                                                       "DiT.")],
            outputs=[io.Image.Output(tooltip="The decoded image, 8x the latent's width and height.")],
        )

    @classmethod
    def execute(cls, samples: dict) -> io.NodeOutput:
        latent = samples["samples"]
        if latent.ndim != 4 or latent.shape[1] != 4:
            raise ValueError(f"CutDiffusion Demo Decode: expected a 4-channel image latent [B, 4, H, W] from the demo "
                             f"model, got shape {tuple(latent.shape)}")
        return io.NodeOutput(demo_model.load_decoder()(latent))
