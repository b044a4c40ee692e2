"""Stop a run on NaN/inf: every rank together, with a message naming the step and the term."""

from __future__ import annotations

import lightning as L
import torch


class NonFiniteLossError(RuntimeError):
    """A loss term or the gradient norm became NaN or infinite; the run stops without saving that step."""


def check_finite(module: L.LightningModule, values: dict[str, torch.Tensor], what: str) -> None:
    """Raise :class:`NonFiniteLossError` on every rank when any rank saw a non-finite value in ``values``.

    The decision is all-reduced so that all ranks stop at the same step instead of one rank leaving
    the others waiting in a collective. No checkpoint of this step is written (checkpoints are saved
    after a step completes), so ``last.ckpt`` stays the last good one.
    """
    # One host sync for all terms (this runs every step).
    finite = torch.stack([torch.isfinite(value).all() for value in values.values()]).tolist()
    if module.trainer.strategy.reduce_boolean_decision(all(finite), all=True):
        return
    bad = [name for name, ok in zip(values, finite) if not ok]
    shown = ", ".join(f"{name}={value.item():.4g}" for name, value in values.items() if value.numel() == 1)
    where = ", ".join(bad) if bad else "a value on another rank"
    # global_step counts completed steps: this is step global_step + 1 (1-based).
    raise NonFiniteLossError(
        f"non-finite {what} in training step {module.global_step + 1}: {where} ({shown}); "
        "the run stops here and the last good checkpoint is kept"
    )
