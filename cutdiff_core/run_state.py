"""Per-run state of the CutDiffusion patch: which step and stage an evaluation
belongs to, the seeded generators, the stage-2 window schedule. Pure torch; it
lives in the run's own model options and dies with the run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .patches import draw_permutation
from .plan import Plan, StepWindows

# Evaluations that k-diffusion samplers make in a step *after* its step callback
# (which fires right after the step's first evaluation). Only a first guess:
# the run learns the real number from the gap between its first two callbacks.
EXTRA_EVALUATIONS_AFTER_CALLBACK = {
    "sample_heun": 1, "sample_heunpp2": 1, "sample_dpm_2": 1, "sample_dpm_2_ancestral": 1,
    "sample_dpm_2_ancestral_RF": 1, "sample_dpmpp_2s_ancestral": 1, "sample_dpmpp_2s_ancestral_RF": 1,
    "sample_dpmpp_2s_ancestral_cfg_pp": 1, "sample_dpmpp_sde": 1, "sample_dpmpp_sde_gpu": 1,
    "sample_seeds_2": 1, "sample_seeds_3": 2,
}


@dataclass
class RunReport:
    """What one sampling run did; filled by the patch, read by the node that ran it."""
    plan: Plan | None = None
    batch: int = 0
    stage1_evaluations: int = 0   # patch images through the denoiser (per CFG half; with global guidance
                                  # also those made in stage 2)
    stage2_evaluations: int = 0   # window images through the denoiser (per CFG half)
    stage2_windows_per_step: list[int] = field(default_factory=list)   # the drawn stage-2 schedule
    notes: list[str] = field(default_factory=list)

    def __deepcopy__(self, memo):
        return self  # shared with model clones on purpose: it belongs to the node call that made it

    def summary(self) -> str:
        if self.plan is None:
            return "CutDiffusion: " + ("; ".join(self.notes) or "no sampling run")
        text = (f"CutDiffusion: {self.plan.summary()}; made {self.stage1_evaluations} patch + "
                f"{self.stage2_evaluations} window evaluations for a batch of {self.batch}")
        return "; ".join([text] + self.notes)


def sub_seed(seed: int | None, stream: int) -> int:
    """Private generator seeds derived from the run's seed (never the global RNG)."""
    return (int(seed or 0) * 2 + stream) % (2 ** 63)


@dataclass
class RunState:
    plan: Plan
    seed: int
    report: RunReport
    sigmas: list[float]
    steps_done: int = 0                 # step callbacks seen
    callback_seen: bool = False
    evals_since_callback: int = 0
    extra_after_callback: int = 0       # evaluations of step i that come after callback(i)
    eval_step: int | None = None        # step of the evaluation in progress
    inside_stage1: bool = False
    perm_generator: torch.Generator | None = None
    jitter_generator: torch.Generator = field(default_factory=torch.Generator)
    stage2_schedule: list[StepWindows] = field(default_factory=list)
    window_weights: Callable | None = None   # the blending strategy, built once per run
    hint_cache: dict = field(default_factory=dict)
    blend_buffers: dict = field(default_factory=dict)   # full-size accumulators, reused every step
    crop_embeddings: dict = field(default_factory=dict)  # SDXL size embedding per crop value, on device
    window_batches: dict = field(default_factory=dict)   # automatic window batch per window shape

    def blend_buffers_for(self, slot: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (slot, tuple(like.shape), like.dtype, like.device)
        if key not in self.blend_buffers:
            self.blend_buffers[key] = (torch.empty_like(like),
                                       torch.empty(like.shape[-2:], device=like.device, dtype=like.dtype))
        return self.blend_buffers[key]

    def cached_embedder(self, embed: Callable[[torch.Tensor], torch.Tensor], device, dtype) -> Callable:
        """`embed` memoised per scalar, so windows met again (every step) cost no embedder call or copy."""
        def cached(values: torch.Tensor) -> torch.Tensor:
            keys = values.tolist()
            missing = [v for v in dict.fromkeys(keys) if (v, device, dtype) not in self.crop_embeddings]
            if missing:
                for v, e in zip(missing, embed(torch.tensor(missing)).to(device=device, dtype=dtype)):
                    self.crop_embeddings[(v, device, dtype)] = e
            return torch.stack([self.crop_embeddings[(v, device, dtype)] for v in keys])
        return cached

    def __post_init__(self):
        self.jitter_generator.manual_seed(sub_seed(self.seed, 1))

    def draw_stage2_schedule(self) -> None:
        """Every stage-2 step's windows, drawn up front so the plan knows its cost before sampling."""
        layout = self.plan.layout
        self.stage2_schedule = [layout.step_windows(self.jitter_generator) for _ in range(self.plan.stage2_steps)]
        self.report.stage2_windows_per_step = [len(step.windows) for step in self.stage2_schedule]

    def peek_step(self, timestep: torch.Tensor) -> int:
        """The step the next model evaluation (at `timestep`) belongs to, without counting it.

        Heun/DPM2-style samplers evaluate the end of step i at the next step's
        sigma, after step i's callback, so neither the sigma nor the callback
        count alone tells the step: after callback(i) the next
        `extra_after_callback` evaluations are still step i. A sigma lookup
        covers samplers that never report steps.
        """
        if self.callback_seen:
            return self.steps_done - 1 if self.evals_since_callback < self.extra_after_callback else self.steps_done
        sigma = float(timestep.reshape(-1)[0])
        lookup = sum(1 for s in self.sigmas[1:-1] if s >= sigma * (1 - 1e-4))
        return 0 if lookup <= 1 else lookup

    def begin_evaluation(self, timestep: torch.Tensor) -> int:
        step = self.peek_step(timestep)
        self.evals_since_callback += 1
        self.eval_step = step
        return step

    def in_stage1(self, step: int) -> bool:
        return step < self.plan.stage1_steps

    def on_step_callback(self, step: int) -> None:
        if self.callback_seen:
            self.extra_after_callback = max(0, self.evals_since_callback - 1)
        self.steps_done = int(step) + 1
        self.callback_seen = True
        self.evals_since_callback = 0

    def counting_callback(self, original: Callable | None) -> Callable:
        def callback(step, *args, **kwargs):
            self.on_step_callback(step)
            if original is not None:
                return original(step, *args, **kwargs)
        return callback

    def permutation(self, stack_shape: torch.Size, device: torch.device) -> torch.Tensor:
        if self.perm_generator is None:
            self.perm_generator = torch.Generator(device=device)
            self.perm_generator.manual_seed(sub_seed(self.seed, 0))
        n = self.plan.grid.n
        return draw_permutation(n, stack_shape[0] // n, stack_shape[1:], self.perm_generator, device)

    def stage2_windows(self, step: int) -> StepWindows:
        if not self.stage2_schedule:  # only reachable through a sampler that misreports its steps
            return StepWindows(self.plan.layout.windows())
        index = min(max(step - self.plan.stage1_steps, 0), len(self.stage2_schedule) - 1)
        return self.stage2_schedule[index]
