"""Learning-rate schedules as pure functions of the step, so a resumed run needs only the step."""

from __future__ import annotations

import math


def learning_rate(step: int, total_steps: int, peak_lr: float, schedule: str, warmup_steps: int,
                  min_lr_ratio: float = 0.1, decay_fraction: float = 0.2) -> float:
    """Learning rate for optimiser step `step` (0-based) of `total_steps`.

    - warmup: linear from peak/warmup_steps to peak over the first `warmup_steps` steps;
    - `cosine`: cosine decay from peak to min_lr_ratio*peak at the last step;
    - `wsd` (warmup-stable-decay): constant peak, then linear decay to min_lr_ratio*peak over the
      last `decay_fraction` of the steps;
    - `constant`: peak after warmup.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    min_lr = peak_lr * min_lr_ratio
    if schedule == "constant":
        return peak_lr
    if schedule == "cosine":
        span = max(1, total_steps - 1 - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
    if schedule == "wsd":
        decay_steps = max(1, round(total_steps * decay_fraction))
        decay_start = total_steps - decay_steps
        if step < decay_start:
            return peak_lr
        progress = min(1.0, (step - decay_start + 1) / decay_steps)
        return peak_lr + (min_lr - peak_lr) * progress
    raise ValueError(f"unknown schedule {schedule!r}")
