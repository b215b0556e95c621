"""What the CutDiffusion and AdaptiveDiffusion patches share as ComfyUI model patches:
registration on a clone, the per-run holder, and the sampler's step callback (counted by
`step_counter.StepCounter`)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import comfy.patcher_extension

WRAPPERS = comfy.patcher_extension.WrappersMP


def install(model, key: str, wrappers: dict, settings) -> object:
    """A clone of `model` with `wrappers` ({wrapper kind: function}) under `key`, replacing any
    earlier ones under that key (patching a patched model re-patches, it does not stack), and
    `settings` under `key` in its transformer_options, where the wrappers find them (run_of)."""
    patched = model.clone()
    for kind, fn in wrappers.items():
        patched.remove_wrappers_with_key(kind, key)
        patched.add_wrapper_with_key(kind, key, fn)
    patched.model_options.setdefault("transformer_options", {})[key] = settings
    return patched


@contextmanager
def run_holder(guider, key: str, state):
    """Put a run's state in the guider's model options for the length of the run.

    They are the run's own copy (CFGGuider.sample clones them), so the state dies with the
    run and never reaches the user's MODEL or another run sharing it."""
    options = guider.model_options.setdefault("transformer_options", {})
    options[key] = state
    try:
        yield
    finally:
        options.pop(key, None)


def run_of(model_options: dict, key: str):
    """The state `run_holder` put under `key`, or None outside such a run."""
    return model_options.get("transformer_options", {}).get(key)


def watch_step_callback(executor, args, kwargs, key: str, watch: Callable):
    """SAMPLER_SAMPLE plumbing: run the sampler with its step callback replaced by
    `watch(run, callback)` when a run of `key` is in progress."""
    # args: (guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)
    args = list(args)
    extra_args = kwargs["extra_args"] if "extra_args" in kwargs else args[2]
    run = run_of(extra_args.get("model_options", {}), key)
    if run is not None:
        if "callback" in kwargs:
            kwargs["callback"] = watch(run, kwargs["callback"])
        else:
            args[3] = watch(run, args[3])
    return executor(*args, **kwargs)
