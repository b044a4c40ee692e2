"""What a probe trains and is scored on: images with task targets, their frozen features, and batches.

:func:`probe_splits` builds the training and evaluation splits of a probe config as
:class:`ProbeSet` datasets (``{"image", "target"}`` at the probe resolution, optionally mirrored);
:class:`ProbeDataModule` extracts each split's features once through the feature cache
(``uniflow.understanding.features``, sharded exactly once across ranks) and serves
``(features, targets)`` batches: pooled ``B x D`` features for classification, ``B x N x D`` patch
tokens for the dense tasks.

Embedded scenes give every task (label, semantic mask, depth, boxes); the on-disk datasets are read
by ``uniflow.data.probe_readers``:

- imagenet: ``<root>/{train,val}/<wnid>/*.JPEG``;
- ade20k: ``<root>/[ADEChallengeData2016/]{images,annotations}/{training,validation}``;
- nyu: BTS's packaging: ``<root>/nyudepthv2_{train,test}_files_with_gt.txt`` with the training
  files under ``<root>/sync/`` and the test files under ``<root>/official_splits/test/``;
- coco: ``<root>/{train2017,val2017}/`` and ``<root>/annotations/instances_{train,val}2017.json``.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from uniflow.data.embedded import NUM_CLASSES, SHAPES, Scene, render_scene
from uniflow.metrics.dense import ADE20K_NUM_CLASSES
from uniflow.tokenizer.model import padded_size
from uniflow.understanding.features import LATENT, FeatureSource, cached_features, rank_share
from uniflow.understanding.probe_config import ProbeConfig

Sample = dict[str, Any]

# Classes of each task on the embedded scenes: the dominant shape; background + every shape type;
# every shape type as a detection category (torchvision's label 0 is the background).
EMBEDDED_CLASSES = {"classification": NUM_CLASSES, "segmentation": 1 + len(SHAPES), "detection": len(SHAPES)}
IMAGENET_CLASSES = 1000
NYU_LISTS = {"train": "nyudepthv2_train_files_with_gt.txt", "val": "nyudepthv2_test_files_with_gt.txt"}
NYU_DIRS = {"train": "sync", "val": "official_splits/test"}


@functools.lru_cache(maxsize=8192)
def _scene(seed: int, split: str, index: int, size: int) -> Scene:
    """A rendered scene, kept: every probe of an evaluation reads the same scenes twice (features,
    then targets) for each of its feature sources, and rendering costs more than the probes."""
    return render_scene(seed, split, index, size)


class EmbeddedSceneTargets(Dataset):
    """Embedded scenes with every probe target, as torchvision ``tv_tensors`` (so one transform
    moves an image and its targets together): ``image``, ``label``, ``semantic``, ``depth``,
    ``boxes`` (xyxy), ``labels`` (shape type + 1), ``image_id``."""

    def __init__(self, split: str, num: int, size: int, seed: int) -> None:
        self.split, self.num, self.size, self.seed = split, num, size, seed

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.num:
            raise IndexError(f"scene index {index} out of range for {self.num} scenes")
        scene = _scene(self.seed, self.split, index, self.size)
        size = scene.image.shape[:2]
        image = torch.from_numpy(scene.image).permute(2, 0, 1).float().div_(255.0)
        return {
            "image": tv_tensors.Image(image),
            "label": scene.label,
            "semantic": tv_tensors.Mask(torch.from_numpy(scene.semantic_mask.astype("int64"))),
            "depth": tv_tensors.Mask(torch.from_numpy(scene.depth.copy())[None]),
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(scene.boxes), format="XYXY", canvas_size=size),
            "labels": torch.from_numpy(scene.box_labels) + 1,
            "image_id": index,
        }


class ResizeCover(v2.Transform):
    """Resize so the image covers ``size`` (H, W) with its aspect kept, then centre-crop to ``size``;
    label maps and depth follow with nearest-neighbour sampling, boxes are moved and clipped."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size

    def forward(self, *inputs: Any) -> Any:
        sample = inputs[0] if len(inputs) == 1 else inputs
        height, width = sample["image"].shape[-2:]
        scale = max(self.size[0] / height, self.size[1] / width)
        resized = (max(self.size[0], round(height * scale)), max(self.size[1], round(width * scale)))
        return v2.Compose([v2.Resize(resized, antialias=True), v2.CenterCrop(self.size)])(sample)


def _target(sample: Sample, task: str) -> Any:
    """The task's target of a (transformed) sample, as plain tensors."""
    if task == "classification":
        return int(sample["label"])
    if task == "segmentation":
        return sample["semantic"].as_subclass(torch.Tensor).to(torch.uint8)  # 255 = ignored
    if task == "depth":
        return sample["depth"].as_subclass(torch.Tensor).float()
    boxes = sample["boxes"].as_subclass(torch.Tensor).float().reshape(-1, 4)
    target = {"boxes": boxes, "labels": sample["labels"].reshape(-1).long(), "image_id": sample["image_id"]}
    for key in ("iscrowd", "area"):
        if key in sample:
            target[key] = sample[key]
    return target


class ProbeSet(Dataset):
    """One split of a probe: ``{"image": float 3 x H x W in [0, 1], "target"}`` at the probe resolution.

    ``name`` and ``split`` key the feature cache; a mirrored view (``flip``) is its own split there.
    """

    def __init__(
        self,
        base: Dataset,
        task: str,
        name: str,
        split: str,
        resolution: tuple[int, int],
        flip: bool = False,
    ) -> None:
        self.base, self.task, self.name = base, task, name
        self.split = f"{split}-hflip" if flip else split
        steps: list[Callable[[Sample], Sample]] = [ResizeCover(resolution)]
        if flip:
            steps.append(v2.RandomHorizontalFlip(p=1.0))
        if task == "detection":
            # Boxes cropped away (or to a sliver) cannot be learned and would divide by zero widths.
            steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(labels_getter=_detection_fields)]
        self.transform = v2.Compose(steps)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:
        sample = self.transform(dict(self.base[index]))
        image = sample["image"].as_subclass(torch.Tensor)
        return {"image": image.clamp(0.0, 1.0), "target": _target(sample, self.task)}


def _detection_fields(sample: Sample) -> tuple[torch.Tensor, ...]:
    # Everything indexed by box is filtered with the boxes.
    return tuple(sample[k] for k in ("labels", "iscrowd", "area") if k in sample)


class _Capped(Dataset):
    """The first ``count`` samples of ``dataset`` (a cap on an on-disk split)."""

    def __init__(self, dataset: Dataset, count: int | None) -> None:
        self.dataset = dataset
        self.count = len(dataset) if count is None else min(count, len(dataset))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < self.count:
            raise IndexError(f"index {index} out of range for {self.count} samples")
        return self.dataset[index]


def _on_disk(cfg: ProbeConfig, split: str) -> Dataset:
    """The raw on-disk split (``train`` or ``val``) of ``cfg.dataset`` at its original resolution."""
    from uniflow.data import probe_readers as readers

    if cfg.data_path is None:
        raise ValueError(f"probe.dataset={cfg.dataset} reads files: set probe.data_path to its root")
    root = Path(cfg.data_path).expanduser()
    if cfg.dataset == "imagenet":
        return _ImageNetSamples(readers.imagenet_folder(root, split, v2.PILToTensor()))
    if cfg.dataset == "ade20k":
        return readers.ADE20KSegmentation(root, split)
    if cfg.dataset == "nyu":
        return readers.NYUDepthV2(root / NYU_DIRS[split], root / NYU_LISTS[split])
    return readers.COCODetection(root, split, skip_empty=split == "train")


class _ImageNetSamples(Dataset):
    """ImageNet class folders as ``{"image": tv_tensors.Image, "label"}`` (uint8 until the resize)."""

    def __init__(self, folder: Dataset) -> None:
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:
        item = self.folder[index]
        return {"image": tv_tensors.Image(item["image"]), "label": item["label"]}


def num_classes(cfg: ProbeConfig) -> int | None:
    """Classes of the probe's task on its dataset (None for depth, a regression)."""
    if cfg.task == "depth":
        return None
    if cfg.dataset == "embedded":
        return EMBEDDED_CLASSES[cfg.task]
    if cfg.dataset == "imagenet":
        return IMAGENET_CLASSES
    if cfg.dataset == "ade20k":
        return ADE20K_NUM_CLASSES
    # COCO: its category list (80 in 2017), read from the validation annotations.
    from uniflow.data.probe_readers import COCODetection

    return len(COCODetection(Path(cfg.data_path or ""), "val").categories)


def probe_splits(cfg: ProbeConfig, seed: int) -> dict[str, list[ProbeSet]]:
    """``{"train": [views...], "val": [view]}``: the training split (and its mirror with
    ``augmentation=hflip``) and the evaluation split, each at ``cfg.resolution``."""
    resolution = (int(cfg.resolution[0]), int(cfg.resolution[1]))
    bases: dict[str, Dataset] = {}
    for split, count in (("train", cfg.num_train), ("val", cfg.num_val)):
        if cfg.dataset == "embedded":
            if count is None or count < 1:
                raise ValueError(f"probe.num_{split} must be set (>= 1) for embedded scenes, got {count}")
            if resolution[0] != resolution[1]:
                raise ValueError(
                    f"embedded scenes are square: probe.resolution must be [s, s], got {resolution}"
                )
            bases[split] = EmbeddedSceneTargets(split, count, resolution[0], seed)
        else:
            bases[split] = _Capped(_on_disk(cfg, split), count)
    # The feature cache's dataset key: what decides the images besides split and count (the scenes'
    # seed; the root of an on-disk dataset) and the resolution they are probed at.
    if cfg.dataset == "embedded":
        origin = f"seed{seed}"
    else:
        origin = hashlib.sha256(str(Path(cfg.data_path or "").expanduser().resolve()).encode()).hexdigest()[
            :12
        ]
    name = f"{cfg.dataset}-{origin}-{resolution[0]}x{resolution[1]}"
    train = [ProbeSet(bases["train"], cfg.task, name, "train", resolution)]
    if cfg.augmentation == "hflip":
        train.append(ProbeSet(bases["train"], cfg.task, name, "train", resolution, flip=True))
    return {"train": train, "val": [ProbeSet(bases["val"], cfg.task, name, "val", resolution)]}


def targets_of(dataset: ProbeSet, indices: torch.Tensor, num_workers: int = 0) -> list[Any]:
    """The targets of ``indices`` (the images are decoded again: the feature cache keeps features only)."""
    loader = DataLoader(
        torch.utils.data.Subset(dataset, indices.tolist()),
        batch_size=32,
        num_workers=num_workers,
        collate_fn=lambda batch: [item["target"] for item in batch],
    )
    return [target for batch in loader for target in batch]


@dataclass(frozen=True)
class FeatureSpec:
    """What a head needs to know about its input: feature width, token grid, classes, image size."""

    dim: int
    grid: tuple[int, int]
    num_classes: int | None
    image_size: tuple[int, int]


def token_grid(
    source: FeatureSource, resolution: tuple[int, int], dense: bool, layer: Any = -1
) -> tuple[int, int]:
    """The token grid of an input of ``resolution`` (patches, or latent positions for ``"latent"``);
    dense probes need sides that are multiples of the source's stride (a padded border would shift
    every token against its label pixels)."""
    if dense and (resolution[0] % source.stride or resolution[1] % source.stride):
        raise ValueError(
            f"probe.resolution {list(resolution)} must be a multiple of the encoder's stride "
            f"{source.stride} for a dense probe"
        )
    height, width = padded_size(*resolution, source.stride)
    step = source.stride if layer == LATENT else source.encoder.patch_size
    return height // step, width // step


def build_source(cfg: ProbeConfig, seed: int) -> FeatureSource:
    """The student or the teacher of ``cfg.tokenizer``; both are :class:`FeatureSource` objects read
    through the same methods from here on."""
    from uniflow.run_dir import RunDirectory
    from uniflow.tokenizer.model import WEIGHTS_FILE

    directory = RunDirectory.find_export(cfg.tokenizer, "tokenizer", WEIGHTS_FILE)
    if cfg.source == "student":
        return FeatureSource.from_pretrained(directory)
    return FeatureSource.baseline(directory, seed=seed)


def _collate_detection(batch: list[tuple[torch.Tensor, Any]]) -> tuple[torch.Tensor, list[Any]]:
    return torch.stack([f for f, _ in batch]), [t for _, t in batch]


class _ListDataset(Dataset):
    def __init__(self, features: torch.Tensor, targets: list[Any]) -> None:
        self.features, self.targets = features, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        return self.features[index], self.targets[index]


class ProbeDataModule(L.LightningDataModule):
    """Frozen features of the probe's splits, extracted once (cached) and served as batches.

    Training is one endless stream of shuffled epochs (like every stage's, resumable by step);
    the evaluation split is sharded so each sample is scored on exactly one rank.
    """

    def __init__(self, cfg: ProbeConfig, seed: int, source: FeatureSource | None = None) -> None:
        super().__init__()
        self.cfg, self.seed = cfg, seed
        self.splits = probe_splits(cfg, seed)
        self._source = source
        self.spec: FeatureSpec | None = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.source_description = ""
        self.model_hash = ""
        self.num_val = 0

    @property
    def pooling(self) -> str:
        return "pooled" if self.cfg.task == "classification" else "dense"

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def setup(self, stage: str) -> None:
        if self.spec is not None:
            return
        source = self._source if self._source is not None else build_source(self.cfg, self.seed)
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            source.encoder.to(trainer.strategy.root_device)
        if source.latent is not None:
            source.latent.to(source.device)
        rank, world = self._rank_world()
        resolution = (int(self.cfg.resolution[0]), int(self.cfg.resolution[1]))
        grid = token_grid(source, resolution, self.pooling == "dense", self.cfg.layer)

        def features(view: ProbeSet) -> torch.Tensor:
            return cached_features(
                source,
                view,
                dataset_name=view.name,
                split=view.split,
                layer=self.cfg.layer,
                pooling=self.pooling,
                batch_size=self.cfg.extract_batch_size,
                root=self.cfg.cache_dir,
                rank=rank,
                world_size=world,
            )

        train_features, train_targets = [], []
        for view in self.splits["train"]:
            train_features.append(features(view))
            train_targets += targets_of(view, torch.arange(len(view)), self.cfg.num_workers)
        val_view = self.splits["val"][0]
        mine = rank_share(len(val_view), rank, world)
        val_features = features(val_view)[mine]
        val_targets = targets_of(val_view, mine, self.cfg.num_workers)
        self.train_set = self._dataset(torch.cat(train_features), train_targets)
        self.val_set = self._dataset(val_features, val_targets)
        dim = train_features[0].shape[-1]
        self.spec = FeatureSpec(dim, grid, num_classes(self.cfg), resolution)
        self.source_description = source.description
        self.model_hash = source.model_hash()
        self.num_val = len(val_view)

    def _dataset(self, features: torch.Tensor, targets: list[Any]) -> Dataset:
        if self.cfg.task == "detection":
            return _ListDataset(features, targets)
        stacked = torch.tensor(targets) if self.cfg.task == "classification" else torch.stack(targets)
        return TensorDataset(features, stacked)

    def _collate(self) -> Callable | None:
        return _collate_detection if self.cfg.task == "detection" else None

    def train_dataloader(self) -> Any:
        from uniflow.training.data import StepStream

        assert self.train_set is not None, "setup() extracts the features first"
        rank, world = self._rank_world()
        sampler = DistributedSampler(
            self.train_set, world, rank, shuffle=True, seed=self.seed, drop_last=True
        )
        loader = DataLoader(
            self.train_set,
            batch_size=self.cfg.batch_size,
            sampler=sampler,
            collate_fn=self._collate(),
        )
        return StepStream(loader, start=self.trainer.global_step)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "setup() extracts the features first"
        return DataLoader(self.val_set, batch_size=self.cfg.batch_size, collate_fn=self._collate())
