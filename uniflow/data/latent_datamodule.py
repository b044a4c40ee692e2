"""Training batches of a latent cache: ``{"latent", "label", "index"}``, shuffled per epoch, sharded over ranks.

Training is one step-indexed stream (:class:`uniflow.training.data.StepStream`), so a resumed run
reads exactly the batches the uninterrupted one would; there is no validation split (generators
are judged by their samples, at the end of the run).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, DistributedSampler

from uniflow.generation.latent_cache import LatentShards
from uniflow.training.data import StepStream


class LatentDataModule(L.LightningDataModule):
    def __init__(
        self,
        root: str | Path,
        batch_size: int,
        num_workers: int = 0,
        seed: int = 0,
        random_flip: bool = False,
    ):
        super().__init__()
        self.root, self.batch_size, self.num_workers = Path(root), batch_size, num_workers
        self.seed, self.random_flip = seed, random_flip
        self.dataset: LatentShards | None = None

    def setup(self, stage: str) -> None:
        if self.dataset is None:
            self.dataset = LatentShards(self.root, random_flip=self.random_flip)

    def train_dataloader(self) -> StepStream:
        assert self.dataset is not None
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(
            self.dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed, drop_last=True
        )
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            drop_last=True,
            persistent_workers=self.num_workers > 0,
        )
        # Called after Lightning restored a checkpoint: global_step is where this run resumes.
        return StepStream(loader, start=self.trainer.global_step)
