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
from .step_counter import StepCounter


@dataclass
class RunReport:
    """What one sampling run did; filled by the patch, read by the node that ran it."""
    plan: Plan | None = None
    batch: int = 0
    stage1_evaluations: int = 0   # patch images through the denoiser (per CFG half; with global guidance
                                  # also those made in stage 2)
    stage2_evaluations: int = 0   # window images through the denoiser (per CFG half)
    stage2_windows_per_step: list[int] = field(default_factory=list)   # the drawn stage-2 schedule
    layout: object = None         # layout.NativeFirst of a native-first run: its layout pass
    notes: list[str] = field(default_factory=list)

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
    guidance: float = 0.0               # global guidance strength of this run's stage 2
    pixel_interaction: bool = True      # stage 1 exchanges pixels among its patches
    window_batch_size: int = 0          # windows per model call; 0 = as many as free memory holds
    layout_anchor: torch.Tensor | None = None      # native first: the upscaled layout, in model space
    anchor_size: tuple[int, int] = (1, 1)          # the size its coarse structure is taken at
    steps: StepCounter = field(default_factory=StepCounter)
    eval_step: int | None = None        # step of the model evaluation in progress
    eval_permutation: torch.Tensor | None = None   # its pixel exchange, drawn once per evaluation
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
        steps = self.steps
        if steps.callback_seen:
            return steps.steps_done - 1 if steps.evals_since_callback < steps.extra_after_callback else steps.steps_done
        sigma = float(timestep.reshape(-1)[0])
        lookup = sum(1 for s in self.sigmas[1:-1] if s >= sigma * (1 - 1e-4))
        return 0 if lookup <= 1 else lookup

    def begin_evaluation(self, timestep: torch.Tensor) -> int:
        step = self.peek_step(timestep)
        self.steps.count_evaluation()
        self.eval_step, self.eval_permutation = step, None
        return step

    def end_evaluation(self) -> None:
        self.eval_step, self.eval_permutation = None, None

    def in_stage1(self, step: int) -> bool:
        return step < self.plan.stage1_steps

    def permutation(self, stack_shape: torch.Size, device: torch.device) -> torch.Tensor:
        """This evaluation's exchange of elements among the stage-1 patches (every model call
        of one evaluation, e.g. a guidance hook's second one, sees the same patches)."""
        if self.eval_permutation is None or self.eval_permutation.shape != stack_shape:
            if self.perm_generator is None:
                self.perm_generator = torch.Generator(device=device)
                self.perm_generator.manual_seed(sub_seed(self.seed, 0))
            n = self.plan.grid.n
            self.eval_permutation = draw_permutation(n, stack_shape[0] // n, stack_shape[1:], self.perm_generator,
                                                     device)
        return self.eval_permutation

    def stage2_windows(self, step: int) -> StepWindows:
        if not self.stage2_schedule:  # only reachable through a sampler that misreports its steps
            return StepWindows(self.plan.layout.windows())
        index = min(max(step - self.plan.stage1_steps, 0), len(self.stage2_schedule) - 1)
        return self.stage2_schedule[index]
