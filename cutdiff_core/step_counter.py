"""Which sampler step a model evaluation belongs to. Pure Python."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass
class StepCounter:
    """Which sampler step the model evaluations belong to, learnt from ComfyUI's step callback,
    which fires right after a step's first evaluation."""
    steps_done: int = 0               # step callbacks seen
    callback_seen: bool = False
    evals_since_callback: int = 0
    extra_after_callback: int = 0     # evaluations of step i that come after callback(i)

    def count_evaluation(self) -> None:
        self.evals_since_callback += 1

    @property
    def several_per_step(self) -> bool:
        """The evaluation about to be counted is not its step's first (heun, dpm_2, ...)."""
        return self.callback_seen and self.evals_since_callback >= 1

    def on_callback(self, step: int) -> None:
        if self.callback_seen:
            self.extra_after_callback = max(0, self.evals_since_callback - 1)
        self.steps_done = int(step) + 1
        self.callback_seen = True
        self.evals_since_callback = 0

    def wrap(self, callback: Callable | None) -> Callable:
        def counted(step, *args, **kwargs):
            self.on_callback(step)
            if callback is not None:
                return callback(step, *args, **kwargs)
        return counted
