"""Run a Python script importing only what the GPU machine has (scripts/gpu_bench.sh prepare).

    python scripts/device_import_check.py --allow torchsde,trampoline SCRIPT [ARGS...]

The device machine has no network: a package missing there stops a paid-for run. This runs the
script here with every installed distribution that the machine's image lacks made unimportable
(ModuleNotFoundError, which optional imports survive), plus the `--allow`ed ones that the run
carries as wheels. It prints what was refused, and exits non-zero where the script failed.
"""
from __future__ import annotations

import argparse
import importlib.abc
import importlib.metadata
import os
import re
import runpy
import sys

# The 'cuda' image of the nvidia-h200 kind, as /work/.library/device/KINDS.md lists it (read 2026-11-17).
DEVICE_DISTRIBUTIONS = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
wrapt xarray xxhash yarl zipp
""".split())


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def top_level_modules(dist) -> set[str]:
    text = dist.read_text("top_level.txt")
    if text:
        return {line.strip() for line in text.splitlines() if line.strip()}
    tops = set()
    for path in dist.files or []:
        first = path.parts[0]
        if first.endswith((".dist-info", ".egg-info", ".data")) or first in ("..", "__pycache__"):
            continue
        name = first[:-3] if first.endswith(".py") else first
        if name.isidentifier():
            tops.add(name)
    return tops


def with_requirements(allowed: set[str], dists: dict) -> set[str]:
    """`allowed` and what those distributions require here: on the device each comes with the
    requirements of its own version (huggingface-hub here needs httpx2, the device's may not)."""
    todo, seen = list(allowed), set(allowed)
    while todo:
        dist = dists.get(todo.pop())
        for req in (dist.requires or []) if dist else []:
            if "extra ==" in req:
                continue
            name = normalize(re.match(r"[A-Za-z0-9._-]+", req).group(0))
            if name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


def refused_modules(allowed: set[str]) -> dict[str, str]:
    """Top-level module -> distribution, for installed distributions the device lacks."""
    dists = {normalize(d.metadata["Name"] or ""): d for d in importlib.metadata.distributions()}
    allowed = with_requirements(allowed, dists)
    refused, kept = {}, set()
    for dist in dists.values():
        name = normalize(dist.metadata["Name"] or "")
        tops = top_level_modules(dist)
        if name in allowed:
            kept |= tops
        else:
            refused.update({top: name for top in tops})
    for top in kept:  # a module two distributions ship (torch's and a plugin's) stays importable
        refused.pop(top, None)
    return refused


class DeviceImports(importlib.abc.MetaPathFinder):
    def __init__(self, refused: dict[str, str]):
        self.refused, self.hits = refused, {}

    def find_spec(self, fullname, path, target=None):
        top = fullname.partition(".")[0]
        if top in self.refused:
            self.hits.setdefault(self.refused[top], set()).add(fullname)
            raise ModuleNotFoundError(f"No module named {fullname!r} (not on the device machine)", name=fullname)
        return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--allow", default="", help="comma list of distributions the run carries as wheels")
    p.add_argument("script")
    p.add_argument("args", nargs=argparse.REMAINDER)
    a = p.parse_args()
    allowed = DEVICE_DISTRIBUTIONS | {normalize(n) for n in a.allow.split(",") if n}
    finder = DeviceImports(refused_modules(allowed))
    for name in [m for m in sys.modules if m.partition(".")[0] in finder.refused]:
        del sys.modules[name]  # nothing refused may stay importable through the cache
    sys.meta_path.insert(0, finder)
    sys.argv = [a.script, *a.args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(a.script)))  # as `python SCRIPT` would
    status = 0
    try:
        runpy.run_path(a.script, run_name="__main__")
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException as error:  # noqa: BLE001  (report it with what was refused)
        print(f"[device imports] {a.script} failed: {type(error).__name__}: {error}", file=sys.stderr)
        status = 1
    refused = "; ".join(f"{d} ({', '.join(sorted(m))})" for d, m in sorted(finder.hits.items())) or "nothing"
    print(f"[device imports] refused: {refused}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
