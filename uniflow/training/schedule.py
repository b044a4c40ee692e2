"""Optimiser and learning-rate schedule: AdamW, linear warm-up, then cosine decay (or constant) to a floor."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from uniflow.training.config import SCHEDULES


def warmup_cosine(
    max_steps: int, warmup_steps: int, schedule: str = "cosine", min_ratio: float = 0.0
) -> Callable[[int], float]:
    """A multiplier of the base learning rate for optimizer step ``step`` (0-based), for ``LambdaLR``.

    Warm-up rises linearly from 1/warmup to 1 (never 0, so the first step already moves); the cosine
    then falls from 1 to ``min_ratio`` at ``max_steps``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {list(SCHEDULES)}")
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


def weight_decay_groups(
    params: Sequence[torch.nn.Parameter], weight_decay: float, lr: float, name: str
) -> list[dict[str, Any]]:
    """AdamW groups at ``lr``: matrices decay, gains, biases and other vectors do not (empty groups dropped).

    ``name`` and ``<name>_no_decay`` name the groups in the learning-rate logs.
    """
    groups = [
        {"params": [p for p in params if p.ndim > 1], "lr": lr, "weight_decay": weight_decay, "name": name},
        {
            "params": [p for p in params if p.ndim <= 1],
            "lr": lr,
            "weight_decay": 0.0,
            "name": f"{name}_no_decay",
        },
    ]
    return [g for g in groups if g["params"]]


def adamw_warmup_cosine(groups: list[dict[str, Any]], optim: Any, max_steps: int) -> dict[str, Any]:
    """AdamW over ``groups`` with :func:`warmup_cosine` stepped every optimizer step, as Lightning's
    ``configure_optimizers`` returns it. ``optim``: an ``OptimConfig`` (betas, warmup_steps,
    schedule, min_lr_ratio); the learning rates and weight decay are the groups'."""
    optimizer = torch.optim.AdamW(groups, betas=tuple(optim.betas))
    factor = warmup_cosine(max_steps, optim.warmup_steps, optim.schedule, optim.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
