"""Every test runs against the real ComfyUI runtime: start it before anything imports comfy."""
from cutdiff_dev import comfy_runtime

comfy_runtime.bootstrap()


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def model():
    """The tiny SDXL-architecture test model (random weights, ~17M parameters)."""
    return comfy_runtime.tiny_sdxl(seed=0)


@pytest.fixture(scope="module")
def conds():
    """(positive, negative) SDXL-style conditioning for the tiny model."""
    return comfy_runtime.tiny_conds(seed=3)
