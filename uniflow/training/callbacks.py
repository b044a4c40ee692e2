"""Callbacks: step-based progress bar, images/s, reconstruction grids in TensorBoard."""

from __future__ import annotations

import sys
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger

from uniflow.tokenizer import UniFlowTokenizer
from uniflow.training.summary import reconstruction_grid


class StepProgressBar(TQDMProgressBar):
    """One bar over optimizer steps (``global_step / max_steps``), named after the stage.

    Training is one endless epoch (see :mod:`uniflow.training.data`), so the default per-epoch bar
    would have no total; this one counts steps, also across a resume.
    """

    def __init__(self, stage: str, refresh_rate: int | None = None):
        # Outside a terminal every refresh is a new line in the log: refresh less often there.
        super().__init__(refresh_rate=refresh_rate or (1 if sys.stdout.isatty() else 25))
        self.stage = stage

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.total = trainer.max_steps
        self.train_progress_bar.n = trainer.global_step
        self.train_progress_bar.set_description(self.stage)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step % self.refresh_rate == 0 or step == trainer.max_steps:
            self.train_progress_bar.n = step
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
            self.train_progress_bar.refresh()


def batch_size_of(batch: Any) -> int:
    """Samples in a batch of any stage: a dict (its ``image`` entry, else its first tensor) or a sequence."""
    if isinstance(batch, dict):
        first = batch.get("image", next((v for v in batch.values() if isinstance(v, torch.Tensor)), None))
    elif isinstance(batch, (list, tuple)) and batch:
        first = batch[0]
    else:
        first = batch
    if not isinstance(first, torch.Tensor):
        raise TypeError(f"cannot tell the batch size of a {type(batch).__name__} batch")
    return first.shape[0]


class ImagesPerSecond(L.Callback):
    """Logs ``perf/images_per_s``: samples of all ranks per second of wall time between steps.

    The time between consecutive step ends covers data loading, forward, backward and the optimizer;
    the interval that contains a validation run is not counted.
    """

    def __init__(self) -> None:
        self._last: float | None = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self._last is not None:
            images = batch_size_of(batch) * trainer.world_size
            pl_module.log("perf/images_per_s", images / max(now - self._last, 1e-9), prog_bar=True)
        self._last = now

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last = None


def _fixed_images(datamodule: Any, count: int) -> torch.Tensor:
    """``count`` validation images spread over the whole split (both halves of an embedded mixture)."""
    data = getattr(datamodule, "data", datamodule)
    dataset = getattr(data, "val_set", None)
    if dataset is not None and len(dataset) > 0:
        picks = torch.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().long().tolist()
        return torch.stack([dataset[i]["image"] for i in picks])
    return next(iter(datamodule.val_dataloader()))["image"][:count]


class PeriodicImages(L.Callback):
    """Calls :meth:`log_images` every ``every_n_steps`` training steps and once more at the end of
    training unless the last step already did; ``every_n_steps <= 0``: only at the end. Every rank
    calls it (an FSDP2-sharded model needs all ranks in each forward); subclasses log on rank 0."""

    def __init__(self, every_n_steps: int):
        self.every_n_steps = every_n_steps

    def log_images(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        raise NotImplementedError

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0:
            self.log_images(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_n_steps <= 0 or trainer.global_step % self.every_n_steps != 0:
            self.log_images(trainer, pl_module)


class ReconstructionGrid(PeriodicImages):
    """Every ``every_n_steps`` steps (and at the end), a TensorBoard grid of fixed validation images:
    the originals, then their reconstructions with each of ``sample_steps`` Euler steps (fixed noise).

    Every rank decodes (an FSDP2-sharded model needs all ranks in each forward); rank 0 logs.
    """

    def __init__(self, every_n_steps: int, sample_steps: list[int], num_images: int = 8, seed: int = 0):
        super().__init__(every_n_steps)
        self.sample_steps = sample_steps
        self.num_images = num_images
        self.seed = seed
        self.images: torch.Tensor | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.images = _fixed_images(trainer.datamodule, self.num_images)

    def grid(self, tokenizer: UniFlowTokenizer, device: torch.device) -> torch.Tensor:
        assert self.images is not None
        return reconstruction_grid(tokenizer, self.images.to(device), self.sample_steps, self.seed)

    def log_images(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.images is None:
            return
        grid = self.grid(pl_module.inference_tokenizer, pl_module.device)
        if trainer.is_global_zero and isinstance(trainer.logger, TensorBoardLogger):
            steps = ",".join(map(str, self.sample_steps))
            trainer.logger.experiment.add_image(
                f"reconstruction/original_then_steps_{steps}", grid, global_step=trainer.global_step
            )
