"""The training stream: the data module's epochs joined into one step-indexed stream that resumes exactly.

Lightning restarts a plain DataLoader from the beginning of its epoch when a run resumes from a
mid-epoch checkpoint, so the resumed run would see other batches than the uninterrupted one. Here
training is one endless stream of the backend's epochs (``max_steps`` ends it) and batch ``k`` is
always batch ``k % len(loader)`` of epoch ``k // len(loader)``: the stream is rebuilt from the
restored ``global_step``, skipping the consumed part of the epoch at the sampler (no data is read for
skipped batches) where the loader is a torch DataLoader, by reading ahead otherwise.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, DistributedSampler, Subset

from uniflow.data.datamodule import UniFlowDataModule


def _set_epoch(loader: Any, epoch: int) -> None:
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    elif isinstance(loader, DataLoader) and isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)


def _tail_loader(loader: DataLoader, skip_batches: int) -> DataLoader:
    """A one-off loader over the samples of ``loader``'s current epoch after its first ``skip_batches``."""
    indices = list(loader.sampler)[skip_batches * loader.batch_size :]
    return DataLoader(
        Subset(loader.dataset, indices),
        batch_size=loader.batch_size,
        shuffle=False,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
    )


class StepStream:
    """Endless batches from ``loader``'s successive epochs, starting at global batch ``start``.

    It has no ``__len__``, so Lightning treats training as one unbounded epoch ended by ``max_steps``.
    """

    def __init__(self, loader: Iterable[Any], start: int = 0):
        self.loader = loader
        self.steps_per_epoch = len(loader)  # type: ignore[arg-type]
        if self.steps_per_epoch == 0:
            raise ValueError(
                "the training loader yields no batch: fewer training samples per process than the batch size"
            )
        self.start = start

    def __iter__(self) -> Iterator[Any]:
        epoch, skip = divmod(self.start, self.steps_per_epoch)
        for e in itertools.count(epoch):
            _set_epoch(self.loader, e)
            if e == epoch and skip:
                if isinstance(self.loader, DataLoader) and isinstance(
                    self.loader.sampler, DistributedSampler
                ):
                    yield from _tail_loader(self.loader, skip)
                else:
                    yield from itertools.islice(self.loader, skip, None)
            else:
                yield from self.loader


class StepDataModule(L.LightningDataModule):
    """Wraps a :class:`UniFlowDataModule`: training as a resumable :class:`StepStream`, validation as is."""

    def __init__(self, data: UniFlowDataModule):
        super().__init__()
        self.data = data

    def setup(self, stage: str) -> None:
        self.data.setup(stage)

    def _rank_world(self) -> tuple[int, int]:
        return self.trainer.global_rank, self.trainer.world_size

    def train_dataloader(self) -> StepStream:
        # Called after Lightning restored the checkpoint, so global_step is where this run resumes.
        return StepStream(self.data.make_train_loader(*self._rank_world()), start=self.trainer.global_step)

    def val_dataloader(self) -> Iterable[Any]:
        return self.data.make_val_loader(*self._rank_world())

    def teardown(self, stage: str) -> None:
        self.data.teardown(stage)
