"""Exponential moving average of the trainable weights.

Lightning's ``WeightAveraging`` callback does not serve here: it averages a deep copy of the whole
LightningModule (the frozen teacher too, doubling its memory for nothing), it does not support
sharded (FSDP2) models, and it has no decay warm-up for short runs. Instead the averaged weights live
in an ordinary submodule of the LightningModule (a teacher-less tokenizer), so they are sharded,
checkpointed and resumed exactly like the live weights, and validation and export simply use it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def ema_decay_at(update: int, decay: float, warmup: bool) -> float:
    """The decay of the ``update``-th EMA update (0-based): ``min(decay, (1 + k) / (10 + k))`` with warm-up."""
    return min(decay, (1.0 + update) / (10.0 + update)) if warmup else decay


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (FSDP2 parameter), else the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


@torch.no_grad()
def copy_weights(target: Sequence[nn.Parameter], source: Sequence[nn.Parameter]) -> None:
    for t, s in zip(target, source, strict=True):
        _local(t).copy_(_local(s))


@torch.no_grad()
def ema_update(averaged: Sequence[nn.Parameter], live: Sequence[nn.Parameter], decay: float) -> None:
    """``averaged <- decay * averaged + (1 - decay) * live``, in place, on local shards."""
    avg = [_local(p) for p in averaged]
    cur = [_local(p).to(a.dtype) for p, a in zip(live, avg, strict=True)]
    torch._foreach_lerp_(avg, cur, 1.0 - decay)
