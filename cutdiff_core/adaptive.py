"""AdaptiveDiffusion's skip criterion (arXiv 2410.09873; spec section 4).

Pure torch; importable without ComfyUI. The sampler keeps every latent
update; only the noise prediction of some steps is reused. Whether the
evaluation at latent `x_k` may reuse the last prediction is decided from the
third-order difference of the latent trajectory:

    d_k = mean|x_k - x_{k-1}|
    skip  iff  |d_k - 2 d_{k-1} + d_{k-2}| <= 2 * delta * d_{k-1}

unless the first `warmup` evaluations are not over yet, or the last
`max_skip` evaluations were all skipped.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class AdaptiveConfig:
    """The node's settings. `threshold` is the paper's delta; 0 turns skipping off."""
    threshold: float = 0.01
    max_skip_steps: int = 4
    warmup_steps: int = 4
    start_percent: float = 0.0
    end_percent: float = 1.0


RANGES = {
    "threshold": (0.0, 1.0),
    "max_skip_steps": (0, 1000),
    "warmup_steps": (0, 10000),
    "start_percent": (0.0, 1.0),
    "end_percent": (0.0, 1.0),
}


def validate_config(config: AdaptiveConfig) -> None:
    """Raise ValueError naming the field and its allowed range, before any work starts."""
    for name, (lo, hi) in RANGES.items():
        value = getattr(config, name)
        if not lo <= value <= hi:
            raise ValueError(f"AdaptiveDiffusion: {name} = {value} is outside the allowed range [{lo}, {hi}]")
    if config.start_percent > config.end_percent:
        raise ValueError(f"AdaptiveDiffusion: start_percent = {config.start_percent} must not be greater than "
                         f"end_percent = {config.end_percent}")


def third_order_is_small(d: tuple[float, float, float], threshold: float) -> bool:
    """The paper's estimator on (d_{k-2}, d_{k-1}, d_k)."""
    d_2, d_1, d_0 = d
    return abs(d_0 - 2.0 * d_1 + d_2) <= 2.0 * threshold * d_1


def _per_item(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sigma per batch item ([B] or scalar), shaped to broadcast over `like`."""
    sigma = sigma.to(like)
    return sigma.reshape(-1, *([1] * (like.ndim - 1))) if sigma.ndim else sigma


def eps_from_denoised(x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The raw noise prediction behind a denoised prediction: eps = (x - denoised) / sigma."""
    return (x - denoised) / _per_item(sigma, x)


def denoised_from_eps(x: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A reused noise prediction at the *current* latent and sigma: x - sigma * eps.

    Reusing the old denoised value instead would pull every skipped step back
    to where the last evaluated step pointed.
    """
    return x - _per_item(sigma, x) * eps


@dataclass
class SkipCriterion:
    """Per-run decisions; feed it every latent the sampler evaluates, in order."""
    config: AdaptiveConfig
    evaluations_seen: int = 0          # in the whole run: warmup counts these
    skips_in_a_row: int = 0
    _previous: torch.Tensor | None = None
    _diffs: list[float] = field(default_factory=list)   # the last three d_k, oldest first

    def reset_history(self) -> None:
        """Forget the trajectory (a new denoiser starts, e.g. CutDiffusion's stage 2)."""
        self._previous, self._diffs, self.skips_in_a_row = None, [], 0

    def decide(self, x: torch.Tensor, allowed: bool = True) -> bool:
        """True if the evaluation at latent `x` may reuse the last noise prediction.

        `allowed` = False (outside the percent range, no cached prediction, ...)
        forces an evaluation but still records `x` in the trajectory.
        """
        if self._previous is not None:
            self._diffs = (self._diffs + [float((x - self._previous).abs().mean())])[-3:]
        self._previous = x.detach().clone()
        cfg = self.config
        skip = (allowed and cfg.threshold > 0 and len(self._diffs) == 3
                and self.evaluations_seen >= cfg.warmup_steps and self.skips_in_a_row < cfg.max_skip_steps
                and third_order_is_small(tuple(self._diffs), cfg.threshold))
        self.evaluations_seen += 1
        self.skips_in_a_row = self.skips_in_a_row + 1 if skip else 0
        return skip
