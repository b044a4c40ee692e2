"""One LightningDataModule over the three backends: embedded (generated), folder, ffcv.

Batches are ``{"image": float32 B x 3 x H x W in [0, 1], "label": int64 B}`` (label ``NO_LABEL`` where
a sample has no class). Each rank's loader is built inside the dataloader hooks from the trainer's
rank and world size:

- training: a random order per epoch, sharded across ranks, last partial batch dropped;
- validation: every held-out sample exactly once across ranks (rank ``r`` of ``w`` takes samples
  ``r, r + w, ...``), no padding duplicates, nothing dropped.

The torch samplers subclass ``DistributedSampler`` so that Lightning keeps them instead of wrapping
them in its own (which would pad the validation set).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from uniflow.data.config import BACKENDS, DataConfig
from uniflow.data.embedded import CachedDataset, EmbeddedMixture, EmbeddedScenes, PhotoCrops
from uniflow.data.ffcv import FFCVLoader
from uniflow.data.folder import ImageFolderDataset, draft_side_for, eval_transform, train_transform

log = logging.getLogger(__name__)


class EvalShardSampler(DistributedSampler):
    """Rank ``rank`` of ``world_size`` visits samples ``rank, rank + world_size, ...``, in order."""

    def __init__(self, dataset: Dataset, rank: int, world_size: int):
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = len(range(rank, len(dataset), world_size))  # type: ignore[arg-type]
        self.total_size = len(dataset)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


def heldout_scenes(num: int, size: int = 64, seed: int = 0, annotations: bool = True) -> EmbeddedScenes:
    """Held-out embedded scenes (val split) with masks and depth; boxes and Q/A via ``.scene(i)``."""
    return EmbeddedScenes("val", num, size, seed, annotations)


def probe_train_scenes(num: int, size: int = 64, seed: int = 0, annotations: bool = True) -> EmbeddedScenes:
    """Training-split scenes to fit probes on (linear probe, dense heads) before testing held-out."""
    return EmbeddedScenes("train", num, size, seed, annotations)


def heldout_photo_crops(num: int, size: int = 64, seed: int = 0) -> PhotoCrops:
    """Held-out real-photo crops (val regions of the photos) for reconstruction PSNR/SSIM."""
    return PhotoCrops("val", num, size, seed)


class UniFlowDataModule(L.LightningDataModule):
    def __init__(
        self,
        backend: str = "embedded",
        train_path: str | None = None,
        val_path: str | None = None,
        image_size: int = 64,
        batch_size: int = 64,
        num_workers: int = 2,
        num_train: int = 4096,
        num_val: int = 512,
        seed: int = 0,
        photo_fraction: float = 0.5,
        cache: bool = True,
        crop_scale: tuple[float, float] = (0.35, 1.0),
        train_crop: str = "random_resized_crop",
        folder_mode: str = "auto",
        ffcv_os_cache: bool = True,
        attributes: bool = False,
    ):
        super().__init__()
        if attributes and backend != "embedded":
            raise ValueError(f"scene attributes exist only for data.backend='embedded', got {backend!r}")
        if backend not in BACKENDS:
            raise ValueError(f"data backend must be one of {BACKENDS}, got {backend!r}")
        if backend != "embedded":
            for key, value in (("data.train_path", train_path), ("data.val_path", val_path)):
                if value is None:
                    raise ValueError(f"{key} is required for data.backend={backend!r}")
                if not Path(value).exists():
                    raise FileNotFoundError(f"{key} not found: {value}")
        if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"data.crop_scale must be [min, max] with 0 < min <= max <= 1, got {crop_scale}")
        self.backend = backend
        self.train_path, self.val_path = train_path, val_path
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        self.num_train, self.num_val, self.seed = num_train, num_val, seed
        self.photo_fraction, self.cache = photo_fraction, cache
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.train_crop = train_crop
        self.folder_mode, self.ffcv_os_cache = folder_mode, ffcv_os_cache
        self.attributes = attributes
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    @classmethod
    def from_config(cls, cfg: DataConfig, attributes: bool = False) -> UniFlowDataModule:
        """The data module of a ``data`` section; ``attributes``: embedded samples carry scene attributes."""
        return cls(
            attributes=attributes,
            backend=cfg.backend,
            train_path=cfg.train_path,
            val_path=cfg.val_path,
            image_size=cfg.image_size,
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            num_train=cfg.num_train,
            num_val=cfg.num_val,
            seed=cfg.seed,
            photo_fraction=cfg.photo_fraction,
            cache=cfg.cache,
            crop_scale=tuple(cfg.crop_scale),  # type: ignore[arg-type]
            train_crop=cfg.train_crop,
            folder_mode=cfg.folder_mode,
            ffcv_os_cache=cfg.ffcv_os_cache,
        )

    # ----------------------------------------------------------------------------------------------
    def _embedded(self, split: str, num: int) -> Dataset:
        data = EmbeddedMixture(split, num, self.image_size, self.seed, self.photo_fraction, self.attributes)
        return CachedDataset(data) if self.cache else data

    def _folder(self, root: str, train: bool) -> ImageFolderDataset:
        zooms = train and self.train_crop == "random_resized_crop"
        scale = self.crop_scale if zooms else None
        transform = (
            train_transform(self.image_size, self.crop_scale, self.train_crop)
            if train
            else eval_transform(self.image_size)
        )
        return ImageFolderDataset(root, transform, self.folder_mode, draft_side_for(self.image_size, scale))

    def setup(self, stage: str | None = None) -> None:
        if self.backend == "ffcv":
            return  # FFCV reads its files inside the loaders; nothing to prepare per process
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = (
                self._embedded("train", self.num_train)
                if self.backend == "embedded"
                else self._folder(self.train_path, train=True)  # type: ignore[arg-type]
            )
        if self.val_set is None and stage in (None, "fit", "validate"):
            self.val_set = (
                self._embedded("val", self.num_val)
                if self.backend == "embedded"
                else self._folder(self.val_path, train=False)  # type: ignore[arg-type]
            )

    @property
    def skipped(self) -> int:
        """Unreadable images skipped so far by the folder datasets (FFCV skips them when writing)."""
        return sum(d.skipped for d in (self.train_set, self.val_set) if isinstance(d, ImageFolderDataset))

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, dataset: Dataset, sampler: DistributedSampler, train: bool) -> DataLoader:
        # A cached embedded split is plain memory indexing: worker processes would only add overhead.
        workers = 0 if isinstance(dataset, CachedDataset) else self.num_workers
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=train,
        )

    def _ffcv(self, train: bool, rank: int, world_size: int) -> FFCVLoader:
        return FFCVLoader(
            self.train_path if train else self.val_path,  # type: ignore[arg-type]
            image_size=self.image_size,
            batch_size=self.batch_size,
            train=train,
            num_workers=self.num_workers,
            rank=rank,
            world_size=world_size,
            seed=self.seed,
            crop_scale=self.crop_scale,
            train_crop=self.train_crop,
            os_cache=self.ffcv_os_cache,
        )

    def make_train_loader(self, rank: int = 0, world_size: int = 1) -> Iterable[dict[str, torch.Tensor]]:
        """This rank's training loader (random order, sharded, last partial batch dropped)."""
        if self.backend == "ffcv":
            return self._ffcv(train=True, rank=rank, world_size=world_size)
        self.setup("fit")
        assert self.train_set is not None
        sampler = DistributedSampler(
            self.train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=self.seed, drop_last=True
        )
        return self._loader(self.train_set, sampler, train=True)

    def make_val_loader(self, rank: int = 0, world_size: int = 1) -> Iterable[dict[str, torch.Tensor]]:
        """This rank's validation loader: its share of the held-out samples, each exactly once."""
        if self.backend == "ffcv":
            return self._ffcv(train=False, rank=rank, world_size=world_size)
        self.setup("validate")
        assert self.val_set is not None
        if self.skipped:
            log.warning("%d unreadable images skipped so far", self.skipped)
        return self._loader(self.val_set, EvalShardSampler(self.val_set, rank, world_size), train=False)

    def train_dataloader(self) -> Iterable[dict[str, torch.Tensor]]:
        return self.make_train_loader(*self._rank_world())

    def val_dataloader(self) -> Iterable[dict[str, torch.Tensor]]:
        return self.make_val_loader(*self._rank_world())

    def teardown(self, stage: str) -> None:
        if self.skipped:
            log.warning("%d unreadable images were skipped in this run", self.skipped)
