"""AdaptiveDiffusion as a ComfyUI model patch (spec section 4).

Four wrappers on a clone of the ModelPatcher, all *outside* CutDiffusion's:

- OUTER_SAMPLE: the run's state, in the run's own copy of the model options
  (so two samplers, or two prompts, never share it); reports at the end.
- SAMPLER_SAMPLE: watches the step callback to tell how many model
  evaluations the sampler makes per step.
- PREDICT_NOISE: once per model evaluation, on the full latent the sampler
  steps, decides evaluate or skip (`adaptive.SkipCriterion`).
- CALC_COND_BATCH: caches the raw noise prediction of each cond slot (cond
  and uncond) and, on a skipped step, answers from that cache at the current
  latent and sigma without calling the model. CFG (incl. sampler_cfg_function
  and post-CFG hooks) then runs as usual on those outputs: the denoised value
  is recomputed, never reused. With CutDiffusion inside, this is the full-size
  frame before it is cut into patches or windows, so a skipped step skips every
  patch (stage 1) or window (stage 2).

Where the cache lives, and why: the cache must be in the frame the sampler
steps, because the reuse happens at the *next* latent. Should no call at that
frame happen (a patch below us that calls the model on other shapes), a skip
reuses the CFG-combined eps = (x - denoised) / sigma of the last evaluation at
the PREDICT_NOISE level instead; for ordinary CFG the two are the same number.

Step policy: the criterion runs over model evaluations. Samplers with one
evaluation per step (euler, dpmpp_2m, ddim, lcm, uni_pc, ...) are exactly the
paper's per-step rule. Samplers with several evaluations per step (heun,
dpm_2, dpmpp_sde, ...) never skip: the criterion would mix predictor and
corrector latents, and reusing eps turns them into a first-order method.
They are recognised by a second evaluation between two step callbacks,
which happens before the first possible skip (the criterion needs four
latents).
"""
from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field

import torch

from .adaptive import AdaptiveConfig, SkipCriterion, denoised_from_eps, eps_from_denoised, validate_config
from .cutdiffusion_patch import WRAPPER_KEY as CUTDIFFUSION_KEY
from .cutdiffusion_patch import cutdiffusion_stage
from .step_counter import StepCounter
from .wrapping import WRAPPERS, install, run_holder, run_of, watch_step_callback

log = logging.getLogger("cutdiffusion")

WRAPPER_KEY = "adaptivediffusion"
RUN_KEY = "adaptivediffusion_run"
FRONTEND_EVENT = "cutdiffusion.adaptive"


@dataclass
class AdaptiveReport:
    """What the last sampling run did, counted in model evaluations (one = the whole CFG batch)."""
    evaluated: int = 0
    skipped: int = 0
    skipped_at: list[int] = field(default_factory=list)   # evaluation indices, from 0
    multi_evaluation_sampler: bool = False

    def summary(self) -> str:
        total = self.evaluated + self.skipped
        text = (f"AdaptiveDiffusion: {self.evaluated} of {total} model evaluations made, {self.skipped} skipped"
                f" ({total / max(1, self.evaluated):.2f}x fewer)")
        if self.multi_evaluation_sampler:
            text += "; the sampler evaluates several times per step, so nothing is skipped"
        return text


@dataclass
class _RunState:
    criterion: SkipCriterion
    report: AdaptiveReport
    start_sigma: float
    end_sigma: float
    stage: tuple | None = None          # (CutDiffusion stage, latent shape) of the last evaluation
    frame: torch.Size | None = None     # latent shape of the evaluation in progress
    skipping: bool = False
    call_index: int = 0                 # calc_cond_batch calls at the frame, this evaluation
    cond_eps: list[list[torch.Tensor | None]] = field(default_factory=list)  # per call, per cond slot
    cfg_eps: torch.Tensor | None = None  # only where no call was at the frame
    steps: StepCounter = field(default_factory=StepCounter)

    def new_denoiser(self, stage: int | None) -> None:
        """CutDiffusion's stage changed: a prediction of the other denoiser is no use here."""
        self.stage = stage
        self.criterion.reset_history()
        self.cond_eps, self.cfg_eps = [], None

    def count_evaluation(self) -> None:
        if self.steps.several_per_step and not self.report.multi_evaluation_sampler:
            self.report.multi_evaluation_sampler = True
            log.info("AdaptiveDiffusion: the sampler evaluates the model several times per step; not skipping")
        self.steps.count_evaluation()

    def may_skip(self, sigma: float) -> bool:
        has_cache = bool(self.cond_eps) or self.cfg_eps is not None
        in_range = self.end_sigma < sigma <= self.start_sigma  # ComfyUI's percent convention, as LazyCache
        return has_cache and in_range and not self.report.multi_evaluation_sampler


def _send_to_frontend(node_id: str | None, report: AdaptiveReport) -> None:
    if node_id is None:
        return
    try:
        from server import PromptServer
    except ImportError:  # not inside a ComfyUI server process
        return
    server = getattr(PromptServer, "instance", None)
    if server is not None:
        server.send_sync(FRONTEND_EVENT, {"node": node_id, "evaluated": report.evaluated, "skipped": report.skipped},
                         getattr(server, "client_id", None))


@dataclass(frozen=True)
class AdaptiveSettings:
    """What apply_adaptive fixed for a patched model, kept in its transformer_options under WRAPPER_KEY
    (plain values, copied with every clone; the report is referred to weakly: it belongs to whoever
    patched the model)."""
    config: AdaptiveConfig
    node_id: str | None = None
    report: weakref.ref | None = None

    def run_report(self) -> AdaptiveReport:
        """The report this run fills: the patcher's (emptied) or a new one."""
        report = self.report() if self.report is not None else None
        if report is None:
            return AdaptiveReport()
        report.evaluated = report.skipped = 0
        report.skipped_at, report.multi_evaluation_sampler = [], False
        return report


# -- OUTER_SAMPLE ---------------------------------------------------------
def outer_sample(executor, *args, **kwargs):
    guider = executor.class_obj
    settings = run_of(guider.model_options, WRAPPER_KEY)
    if settings is None:   # another pack took our settings out of the model's options
        return executor(*args, **kwargs)
    model_sampling = guider.model_patcher.get_model_object("model_sampling")
    report = settings.run_report()
    config = settings.config
    run = _RunState(SkipCriterion(config), report, float(model_sampling.percent_to_sigma(config.start_percent)),
                    float(model_sampling.percent_to_sigma(config.end_percent)))
    try:
        with run_holder(guider, RUN_KEY, run):
            return executor(*args, **kwargs)
    finally:
        log.info(report.summary())
        _send_to_frontend(settings.node_id, report)


# -- SAMPLER_SAMPLE -------------------------------------------------------
def sampler_sample(executor, *args, **kwargs):
    return watch_step_callback(executor, args, kwargs, RUN_KEY, lambda run, callback: run.steps.wrap(callback))


# -- PREDICT_NOISE: the decision, once per evaluation ---------------------
def predict_noise(executor, x, timestep, model_options={}, seed=None, **kwargs):
    run = run_of(model_options, RUN_KEY)
    if run is None:
        return executor(x, timestep, model_options, seed, **kwargs)
    # A new CutDiffusion stage, or a new latent size (its native-first layout pass ends):
    # the trajectory and the cached predictions belong to another denoiser.
    stage = (cutdiffusion_stage(model_options, timestep), tuple(x.shape))
    if stage != run.stage:
        run.new_denoiser(stage)
    run.count_evaluation()
    index = run.criterion.evaluations_seen
    skip = run.criterion.decide(x, run.may_skip(float(timestep.reshape(-1)[0])))
    if skip:
        run.report.skipped += 1
        run.report.skipped_at.append(index)
        if not run.cond_eps:  # CutDiffusion stage 1: nothing below us is in this frame
            return denoised_from_eps(x, run.cfg_eps, timestep)
    else:
        run.report.evaluated += 1
        run.cond_eps = []
    run.frame, run.call_index, run.skipping = x.shape, 0, skip
    try:
        out = executor(x, timestep, model_options, seed, **kwargs)
    finally:
        run.frame, run.skipping = None, False
    if not skip:
        run.cfg_eps = None if run.cond_eps else eps_from_denoised(x, out, timestep)
    return out


# -- CALC_COND_BATCH: the per-slot cache ----------------------------------
def calc_cond_batch(executor, model, conds, x_in, timestep, model_options):
    run = run_of(model_options, RUN_KEY)
    if run is None or run.frame is None or x_in.shape != run.frame:
        return executor(model, conds, x_in, timestep, model_options)  # not the sampler's frame
    index = run.call_index
    run.call_index += 1
    if run.skipping:
        cached = run.cond_eps[index] if index < len(run.cond_eps) else None
        if cached is not None and [e is None for e in cached] == [c is None for c in conds]:
            # An absent slot (uncond at cfg 1) is all zeros, as calc_cond_batch returns it.
            return [denoised_from_eps(x_in, eps, timestep) if eps is not None else torch.zeros_like(x_in)
                    for eps in cached]
        # A call the last evaluation did not make (e.g. a hook changed the conds): run it.
        return executor(model, conds, x_in, timestep, model_options)
    out = executor(model, conds, x_in, timestep, model_options)
    run.cond_eps.append([eps_from_denoised(x_in, o, timestep) if c is not None else None
                         for c, o in zip(conds, out)])
    return out


def apply_adaptive(model, config: AdaptiveConfig, report: AdaptiveReport | None = None, node_id: str | None = None):
    """Validate, then return a patched clone of `model` (the input is left untouched)."""
    validate_config(config)
    settings = AdaptiveSettings(config, node_id, None if report is None else weakref.ref(report))
    patched = install(model, WRAPPER_KEY, {WRAPPERS.OUTER_SAMPLE: outer_sample,
                                           WRAPPERS.SAMPLER_SAMPLE: sampler_sample,
                                           WRAPPERS.PREDICT_NOISE: predict_noise,
                                           WRAPPERS.CALC_COND_BATCH: calc_cond_batch}, settings)
    # First key = outermost wrapper. CutDiffusion must stay inside us (see the module
    # docstring), so its wrappers move behind ours. (Its own apply re-adds its key last,
    # so the order also holds the other way round.)
    for kind in (WRAPPERS.OUTER_SAMPLE, WRAPPERS.SAMPLER_SAMPLE, WRAPPERS.PREDICT_NOISE,
                 WRAPPERS.CALC_COND_BATCH):
        inner = patched.get_wrappers(kind, CUTDIFFUSION_KEY)
        if inner:
            patched.remove_wrappers_with_key(kind, CUTDIFFUSION_KEY)
            for wrapper in inner:
                patched.add_wrapper_with_key(kind, CUTDIFFUSION_KEY, wrapper)
    return patched
