"""Dataset readers for evaluation: every sample once, with dataset indices and validity, and the
annotations a benchmark scores against.

A map-style reader returns, per sample, a uint8 3 x H x W image, or a dict with an ``"image"`` (uint8,
or float in [0, 1] as the data package's readers give it) and annotations (:data:`STACKED_FIELDS`,
boxes, questions, ...). :func:`sharded_samples` batches this rank's share as a :data:`LabelledBatch`
dict (``"image"``, ``"index"``, ``"valid"`` and the annotations);
:func:`sharded_batches` is its image-only view, the :data:`Batch` tuple ``(images uint8 B x 3 x H x W,
index int64 B, valid bool B)`` that reconstruction and generation read. Map-style sets are sharded
with :func:`uniflow.metrics.shard_indices` (``DistributedSampler`` order; the padding that evens out
the ranks is marked invalid, so the metrics drop it); FFCV files are sharded by the FFCV loader of
``uniflow.data`` (disjoint rank::world slices, no padding).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from uniflow.metrics import adm_center_crop, shard_indices, to_uint8
from uniflow.metrics.reference import ADM_CROP, list_images

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
LabelledBatch = dict[str, Any]

# Annotations with one shape for every sample of a set, stacked into one tensor per batch. The
# names and layouts are those of the data package's readers (uniflow.data.embedded,
# uniflow.data.probe_readers), so their samples batch here unchanged:
#   label     int64 ()           class index (classification)
#   semantic  int64 H x W        class per pixel (segmentation; 255 where a dataset leaves pixels unlabelled)
#   mask      int64 H x W        instance per pixel, 0 = background
#   depth     float32 1 x H x W  depth per pixel, 0 = no measurement
STACKED_FIELDS: Mapping[str, torch.dtype] = {
    "label": torch.int64,
    "semantic": torch.int64,
    "mask": torch.int64,
    "depth": torch.float32,
}
# Every other field varies in size from sample to sample and is kept as one list entry per sample:
# ``boxes`` (n x 4 xyxy pixels) with their ``labels`` (n), ``questions`` with their ``answers``,
# file paths, ids. Stacking them whenever a batch happens to agree in size would change their type
# from batch to batch.


def collate_samples(samples: Sequence[Mapping[str, Any]]) -> LabelledBatch:
    """Batch per-sample dicts: ``image`` and the :data:`STACKED_FIELDS` stacked, ``index`` and ``valid``
    as tensors, every other field as a list with one entry per sample.

    Every sample must carry the same fields, so a batch never has an annotation for some samples only.
    """
    fields = list(samples[0])
    for sample in samples[1:]:
        if set(sample) != set(fields):
            raise ValueError(
                f"samples in one batch carry different fields: {sorted(fields)} vs {sorted(sample)}"
            )
    images = torch.stack([torch.as_tensor(s["image"]) for s in samples])
    if (
        images.ndim != 4
        or images.shape[1] != 3
        or not (images.dtype == torch.uint8 or images.is_floating_point())
    ):
        raise ValueError(
            f"expected 3 x H x W images, uint8 or float in [0, 1], got {images.dtype} {tuple(images.shape[1:])}"
        )
    batch: LabelledBatch = {"image": images}
    for name in fields:
        if name == "image":
            continue
        values = [s[name] for s in samples]
        if name == "index":
            batch[name] = torch.as_tensor(values, dtype=torch.int64)
        elif name == "valid":
            batch[name] = torch.as_tensor(values, dtype=torch.bool)
        elif name in STACKED_FIELDS:
            batch[name] = torch.stack([torch.as_tensor(v, dtype=STACKED_FIELDS[name]) for v in values])
        else:
            batch[name] = values
    return batch


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
    """Images under a folder (recursive, sorted, as ``python -m uniflow data ref-stats`` lists them), ADM-centre-cropped.

    With ``labels``, every subdirectory of ``folder`` is a class (labels by sorted name, as for
    training on class folders) and each sample is ``{"image", "label"}``.
    """

    def __init__(self, folder: str | Path, size: int, num: int | None = None, labels: bool = False) -> None:
        if labels:
            # Imported here: the data package pulls in Lightning, which image-only readers never need.
            from uniflow.data.folder import scan_image_folder

            found, self.classes = scan_image_folder(folder, "classes")
        else:
            found, self.classes = [(path, None) for path in list_images(folder)], []
        chosen = [found[i] for i in spread(len(found), num)]
        self.files = [path for path, _ in chosen]
        self.labels = [label for _, label in chosen] if labels else None
        self.total_in_folder = len(found)
        self.size = size
        self.description = f"{ADM_CROP}({size}) from image files"

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor | dict[str, Any]:
        path = self.files[index]
        try:
            with Image.open(path) as image:
                pixels = adm_center_crop(image, self.size)
        except OSError as err:
            # A skipped image would silently change the set the reference statistics describe.
            raise OSError(f"cannot read evaluation image {path}: {err}") from err
        image = torch.from_numpy(np.array(pixels)).permute(2, 0, 1)  # a writable copy
        return image if self.labels is None else {"image": image, "label": self.labels[index]}


class SceneSource(Protocol):
    """The embedded scenes' interface (``uniflow.data.embedded.EmbeddedScenes``): ``scene(i)`` renders
    scene ``i`` with every annotation."""

    def __len__(self) -> int: ...
    def scene(self, index: int) -> Any: ...


class LabelledScenes(Dataset):
    """Embedded scenes with every annotation a probe or an MLLM benchmark reads: the CPU stand-in
    for ImageNet labels, ADE20K class maps, NYU depth, COCO boxes and VQA questions. Images stay
    uint8, as the reconstruction and FID metrics take them."""

    def __init__(self, source: SceneSource, description: str) -> None:
        self.source = source
        self.description = description

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene = self.source.scene(index)
        return {
            "image": torch.from_numpy(scene.image).permute(2, 0, 1).contiguous(),
            "label": scene.label,
            "semantic": torch.from_numpy(scene.semantic_mask.astype(np.int64)),
            "mask": torch.from_numpy(scene.instance_mask.astype(np.int64)),
            "depth": torch.from_numpy(scene.depth)[None],
            "boxes": torch.from_numpy(scene.boxes),
            "labels": torch.from_numpy(scene.box_labels),
            "questions": [question for question, _ in scene.qa],
            "answers": [answer for _, answer in scene.qa],
        }


class _Shard(Dataset):
    def __init__(self, dataset: Dataset, indices: torch.Tensor, valid: torch.Tensor) -> None:
        self.dataset, self.indices, self.valid = dataset, indices.tolist(), valid.tolist()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict[str, Any]:
        index = self.indices[position]
        item = self.dataset[index]
        sample = dict(item) if isinstance(item, Mapping) else {"image": item}
        return {**sample, "index": index, "valid": self.valid[position]}


def sharded_samples(
    dataset: Dataset, rank: int, world_size: int, batch_size: int, num_workers: int = 0
) -> Iterator[LabelledBatch]:
    """This rank's share of a map-style set as labelled batches, padded like DistributedSampler,
    padding invalid: ``{"image", "index", "valid"}`` plus the annotations its samples carry."""
    indices, valid = shard_indices(len(dataset), rank, world_size)  # type: ignore[arg-type]
    yield from DataLoader(
        _Shard(dataset, indices, valid),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_samples,
    )


def sharded_batches(
    dataset: Dataset, rank: int, world_size: int, batch_size: int, num_workers: int = 0
) -> Iterator[Batch]:
    """This rank's share of a map-style set of uint8 images, padded like DistributedSampler, padding invalid."""
    for batch in sharded_samples(dataset, rank, world_size, batch_size, num_workers):
        yield batch["image"], batch["index"], batch["valid"]


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
