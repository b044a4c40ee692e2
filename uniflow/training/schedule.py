"""Learning-rate schedule: linear warm-up, then cosine decay (or constant) to a floor."""

from __future__ import annotations

import math
from collections.abc import Callable


def warmup_cosine(
    max_steps: int, warmup_steps: int, schedule: str = "cosine", min_ratio: float = 0.0
) -> Callable[[int], float]:
    """A multiplier of the base learning rate for optimizer step ``step`` (0-based), for ``LambdaLR``.

    Warm-up rises linearly from 1/warmup to 1 (never 0, so the first step already moves); the cosine
    then falls from 1 to ``min_ratio`` at ``max_steps``.
    """
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"unknown schedule {schedule!r}; choose 'cosine' or 'constant'")
    if max_steps < 1:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    warmup = max(0, min(warmup_steps, max_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
