"""Every test runs against the real ComfyUI runtime: start it before anything imports comfy."""
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))          # comfy_runtime, the harness
sys.path.insert(0, str(TESTS.parent))   # the pure core as a top-level package (cutdiff_core.plan, ...)

import comfy_runtime  # noqa: E402

comfy_runtime.bootstrap()
