"""Dataset readers for evaluation: every sample once, as uint8 batches with dataset indices and validity.

Batches are ``(images uint8 B x 3 x H x W, index int64 B, valid bool B)``. Map-style sets are sharded
with :func:`uniflow.metrics.shard_indices` (``DistributedSampler`` order; the padding that evens out
the ranks is marked invalid, so the metrics drop it); FFCV files are sharded by the FFCV loader of
``uniflow.data`` (disjoint rank::world slices, no padding).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from uniflow.metrics import adm_center_crop, shard_indices, to_uint8
from uniflow.metrics.reference import ADM_CROP, list_images

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class RawSource(Protocol):
    """The embedded datasets' interface: ``raw(i)`` -> (uint8 H x W x 3, label)."""

    def __len__(self) -> int: ...
    def raw(self, index: int) -> tuple[np.ndarray, int]: ...


def spread(total: int, num: int | None) -> list[int]:
    """``num`` indices spread evenly over ``range(total)`` (all of them when ``num`` is None or larger).

    Evenly spread rather than the first ``num``: sorted ImageNet folders would otherwise give a few
    classes only.
    """
    if num is None or num >= total:
        return list(range(total))
    if num < 1:
        raise ValueError(f"need at least one sample, got {num}")
    return [i * total // num for i in range(num)]


class MemoryImages(Dataset):
    """A small evaluation set held as one uint8 tensor; its fingerprint is a hash of the pixels."""

    def __init__(self, images: torch.Tensor, description: str) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 N x 3 x H x W, got {images.dtype} {tuple(images.shape)}")
        self.images = images.contiguous()
        self.description = description

    @classmethod
    def render(cls, source: RawSource, description: str) -> MemoryImages:
        pixels = np.stack([source.raw(i)[0] for i in range(len(source))])
        return cls(torch.from_numpy(pixels).permute(0, 3, 1, 2), description)

    def fingerprint(self) -> str:
        """sha256 of the pixels: identifies the set exactly, whatever code or seed produced it."""
        return hashlib.sha256(self.images.numpy().tobytes()).hexdigest()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


class AdmFolderImages(Dataset):
    """Images under a folder (recursive, sorted, as ``python -m uniflow ref-stats`` lists them), ADM-centre-cropped."""

    def __init__(self, folder: str | Path, size: int, num: int | None = None) -> None:
        files = list_images(folder)
        self.files = [files[i] for i in spread(len(files), num)]
        self.total_in_folder = len(files)
        self.size = size
        self.description = f"{ADM_CROP}({size}) from image files"

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        path = self.files[index]
        try:
            with Image.open(path) as image:
                pixels = adm_center_crop(image, self.size)
        except OSError as err:
            # A skipped image would silently change the set the reference statistics describe.
            raise OSError(f"cannot read evaluation image {path}: {err}") from err
        return torch.from_numpy(np.array(pixels)).permute(2, 0, 1)  # a writable copy


class _Shard(Dataset):
    def __init__(self, dataset: Dataset, indices: torch.Tensor, valid: torch.Tensor) -> None:
        self.dataset, self.indices, self.valid = dataset, indices.tolist(), valid.tolist()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int, bool]:
        index = self.indices[position]
        return self.dataset[index], index, self.valid[position]


def sharded_batches(
    dataset: Dataset, rank: int, world_size: int, batch_size: int, num_workers: int = 0
) -> Iterator[Batch]:
    """This rank's share of a map-style set of uint8 images, padded like DistributedSampler, padding invalid."""
    indices, valid = shard_indices(len(dataset), rank, world_size)  # type: ignore[arg-type]
    loader = DataLoader(
        _Shard(dataset, indices, valid), batch_size=batch_size, shuffle=False, num_workers=num_workers
    )
    for images, index, keep in loader:
        yield images, index.long(), keep.bool()


def ffcv_batches(
    path: str | Path,
    rank: int,
    world_size: int,
    *,
    size: int,
    batch_size: int,
    num: int | None = None,
    num_workers: int = 4,
) -> tuple[Iterator[Batch], int, int, str]:
    """(batches, samples evaluated, samples in the file, preprocessing) of an FFCV file, centre-cropped
    by FFCV's decoder.

    The FFCV eval loader visits this rank's samples ``rank, rank + world, ...`` in order, so batch
    positions give the dataset indices. With ``num`` set, only the evenly spread subset is decoded.
    """
    from uniflow.data.ffcv import FFCVLoader, eval_indices, ffcv_num_samples

    total = ffcv_num_samples(path)
    selected = torch.zeros(total, dtype=torch.bool)
    selected[spread(total, num)] = True
    mine = torch.from_numpy(eval_indices(total, rank, world_size))
    mine = mine[selected[mine]]  # only these are decoded
    # A rank can be left without a sample of a small subset; FFCV cannot load an empty index set.
    loader = (
        FFCVLoader(
            path,
            image_size=size,
            batch_size=batch_size,
            train=False,
            num_workers=num_workers,
            indices=mine.numpy(),
        )
        if len(mine)
        else []
    )

    def batches() -> Iterator[Batch]:
        start = 0
        for batch in loader:
            images = to_uint8(batch["image"])
            index = mine[start : start + images.shape[0]]
            start += images.shape[0]
            yield images, index, torch.ones(images.shape[0], dtype=torch.bool)

    preprocessing = f"FFCV CenterCropRGBImageDecoder({size}, ratio 1) of the stored images (not ADM's crop)"
    return batches(), int(selected.sum()), total, preprocessing
