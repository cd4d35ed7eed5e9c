"""Learning-rate schedules as pure functions of the global step.

A pure function of (step, steps per epoch) needs no state of its own, so a resumed run gets
exactly the learning rates of an uninterrupted one.
"""

from __future__ import annotations

import math


def scheduled_lr(base_lr: float, name: str, step: int, steps_per_epoch: int, epochs: int,
                 warmup_epochs: int = 0, step_size: int = 30, gamma: float = 0.1) -> float:
    """The learning rate for optimizer step ``step`` (0-based).

    - warmup: linear from base_lr/warmup_steps up to base_lr over ``warmup_epochs``;
    - ``constant``: base_lr;
    - ``step``: base_lr * gamma ** (epoch // step_size), epoch = step // steps_per_epoch;
    - ``cosine``: half a cosine from base_lr to 0 over the steps after warmup (per step).
    """
    warmup_steps = warmup_epochs * steps_per_epoch
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if name == "constant":
        return base_lr
    if name == "step":
        return base_lr * gamma ** ((step // steps_per_epoch) // step_size)
    if name == "cosine":
        total = max(epochs * steps_per_epoch - warmup_steps, 1)
        progress = min((step - warmup_steps) / total, 1.0)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {name!r}")
