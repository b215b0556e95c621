"""CutDiffusion for ComfyUI: tuning-free high-resolution generation (arXiv 2404.15141)."""
from comfy_api.latest import ComfyExtension, io

from .nodes import NODES
from .nodes import plan_route  # noqa: F401  (registers GET /cutdiffusion/plan, the plan preview, on a server)

WEB_DIRECTORY = "./web"


class CutDiffusionExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> ComfyExtension:
    return CutDiffusionExtension()
