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


class CheckedGradientClipping:
    """Mixin for a stage's LightningModule: Lightning's clipping hook clips the global gradient norm
    to ``optim.grad_clip`` (the Trainer's ``gradient_clip_val``; None or 0: measure only), logs it as
    ``train/grad_norm`` and stops the run on a non-finite norm. Under FSDP2 the norm is a DTensor and
    is gathered before the check.

    With a GradScaler (16-mixed on GPU) an overflowing step is routine: the scaler skips it and
    lowers the scale, so the norm is not checked there.
    """

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        module: L.LightningModule = self  # type: ignore[assignment]
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, gradient_clip_val or float("inf"))
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        if getattr(module.trainer.precision_plugin, "scaler", None) is None:
            check_finite(module, {"grad_norm": norm.detach()}, "gradient norm")
        module.log("train/grad_norm", norm)
