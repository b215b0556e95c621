"""The optimisation both demo models are trained with (scripts/train_demo_model.py, the UNet;
scripts/train_demo_dit.py, the DiT): AdamW, linear warm-up and cosine decay, gradient clipping,
and an exponential moving average of the weights that the model takes at the end."""
from __future__ import annotations

import math
import time
from typing import Callable

import torch


def train_with_ema(params: list[torch.Tensor], loss_on_batch: Callable[[], torch.Tensor], steps: int, lr: float,
                   ema_decay: float, on_step: Callable[[int, list[torch.Tensor]], None] | None = None) -> float:
    """Run `steps` optimiser steps on `loss_on_batch()`; `on_step(step, ema)` after each. The params
    end as their EMA. Returns the seconds it took."""
    ema = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 50)
    schedule = torch.optim.lr_scheduler.LambdaLR(   # linear warm-up, cosine decay
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    start = time.perf_counter()
    for step in range(steps):
        loss = loss_on_batch()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():  # EMA, with a short memory early on so it follows the fast start
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - min(ema_decay, (1 + step) / (10 + step)))
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.perf_counter() - start:6.0f} s", flush=True)
        if on_step is not None:
            on_step(step, ema)
    with torch.no_grad():
        for p, averaged in zip(params, ema):
            p.copy_(averaged)
    return time.perf_counter() - start
