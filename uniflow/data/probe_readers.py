"""Readers for the probe benchmarks' on-disk formats, as torch Datasets of images and targets.

- ADE20K SceneParsing (``ADEChallengeData2016/images|annotations/{training,validation}``): jpg images
  and 8-bit png label maps, 0 = unlabelled, 1..150 = classes; yielded shifted to 0..149 with 255
  for unlabelled (the benchmark's 150-class protocol).
- NYU-Depth v2, the split most depth work trains and tests on (Eigen et al. 2014; packaged by BTS,
  Lee et al. 2019): a file list whose lines read ``<rgb path> <depth path> [focal]`` relative to a
  root, with 16-bit png depth in millimetres (0 = no measurement), yielded in metres (value / 1000).
- COCO 2017 (``annotations/instances_{train,val}2017.json`` and ``{train,val}2017/``): boxes turned
  from xywh to xyxy, categories mapped to contiguous labels 1..K (torchvision's detectors keep 0 for
  background), crowd regions kept and flagged ``iscrowd`` (evaluation must see them; the detection
  probe leaves them out of training).
- ImageNet-style class folders: :mod:`uniflow.data.folder` already yields ``{"image", "label"}``
  with labels from sorted class directories; :func:`imagenet_folder` only points it at a split.

Every sample is a dict with ``image`` (float ``3 x H x W`` in [0, 1]) and its targets. Targets are
torchvision ``tv_tensors`` (``Mask`` for label and depth maps, ``BoundingBoxes`` for boxes), so one
``torchvision.transforms.v2`` pipeline passed as ``transforms`` resizes, crops or flips an image and
its targets together (masks and depth with nearest-neighbour sampling: blending two depths at an
occlusion edge invents a surface). Transforms that pad should fill ADE20K label maps with 255
(``fill={tv_tensors.Mask: 255}``): their default 0 is a class after the label shift. A missing or
malformed file raises an error that names the path and what was expected.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from uniflow.data.folder import DECODE_ERRORS, ImageFolderDataset
from uniflow.metrics.dense import ADE20K_NUM_CLASSES, ade20k_reduce_labels

Sample = dict[str, Any]
Transforms = Callable[[Sample], Sample]

NYU_DEPTH_SCALE = 1000.0  # the png stores millimetres
ADE20K_SPLITS = {"training": "training", "train": "training", "validation": "validation", "val": "validation"}
COCO_SPLITS = {"train": "train2017", "train2017": "train2017", "val": "val2017", "val2017": "val2017"}


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: expected a directory at {path}")
    return path


def _open(path: Path, what: str) -> Image.Image:
    """Open (and fully decode) an image file, or fail naming the path and what it should have been."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: expected a file at {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return img
    except DECODE_ERRORS as err:
        raise ValueError(f"{path} is not a readable {what} ({type(err).__name__}: {err})") from err


def _rgb(path: Path) -> tv_tensors.Image:
    img = _open(path, "RGB image").convert("RGB")
    return tv_tensors.Image(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))


def _finish(sample: Sample, transforms: Transforms | None) -> Sample:
    """Apply the joint transforms on uint8 pixels (cheaper, and antialiased resizing expects them),
    then give the image as float in [0, 1] like every other uniflow dataset."""
    if transforms is not None:
        sample = transforms(sample)
    image = sample["image"]
    if not image.is_floating_point():
        sample["image"] = tv_tensors.wrap(image.float().div_(255.0), like=image)
    return sample


class ADE20KSegmentation(Dataset):
    """ADE20K SceneParsing: ``{"image", "semantic": Mask H x W int64 (0..149, 255 ignored), "path"}``.

    ``root`` is ``ADEChallengeData2016`` or the directory holding it; ``split`` is ``training`` /
    ``validation`` (or ``train`` / ``val``).
    """

    def __init__(self, root: str | Path, split: str = "validation", transforms: Transforms | None = None):
        if split not in ADE20K_SPLITS:
            raise ValueError(f"ADE20K split must be one of {sorted(ADE20K_SPLITS)}, got {split!r}")
        root = Path(root).expanduser()
        if (root / "ADEChallengeData2016").is_dir():
            root = root / "ADEChallengeData2016"
        split = ADE20K_SPLITS[split]
        self.image_dir = _require_dir(root / "images" / split, "ADE20K image directory")
        self.label_dir = _require_dir(root / "annotations" / split, "ADE20K annotation directory")
        self.images = sorted(p for p in self.image_dir.iterdir() if p.suffix.lower() == ".jpg")
        if not self.images:
            raise FileNotFoundError(f"no .jpg images in {self.image_dir}")
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        image_path = self.images[index]
        label_path = self.label_dir / f"{image_path.stem}.png"
        image = _rgb(image_path)
        label = _open(label_path, "ADE20K annotation (8-bit png label map)")
        if label.mode not in ("L", "P"):
            raise ValueError(
                f"{label_path}: expected a single-channel 8-bit label map, got PIL mode {label.mode}"
            )
        raw = torch.from_numpy(np.asarray(label).astype(np.int64))
        if tuple(raw.shape) != tuple(image.shape[-2:]):
            raise ValueError(
                f"{label_path}: label map is {tuple(raw.shape)} but its image {image_path.name} is "
                f"{tuple(image.shape[-2:])} (H, W)"
            )
        if raw.max() > ADE20K_NUM_CLASSES:
            raise ValueError(
                f"{label_path}: expected labels 0..{ADE20K_NUM_CLASSES} (0 = unlabelled), found {int(raw.max())}"
            )
        sample = {
            "image": image,
            "semantic": tv_tensors.Mask(ade20k_reduce_labels(raw)),
            "path": str(image_path),
        }
        return _finish(sample, self.transforms)


class NYUDepthV2(Dataset):
    """NYU-Depth v2 from a file list: ``{"image", "depth": Mask 1 x H x W float32 metres (0 = invalid),
    "path"}``.

    ``files`` lists ``<rgb path> <depth path> [focal]`` per line, paths relative to ``root`` (a leading
    "/" is allowed, as in the BTS lists ``nyudepthv2_{train,test}_files_with_gt.txt`` over ``sync/``
    and ``official_splits/test/``); ``depth_root`` defaults to ``root``.
    """

    def __init__(
        self,
        root: str | Path,
        files: str | Path,
        depth_root: str | Path | None = None,
        transforms: Transforms | None = None,
    ):
        self.root = _require_dir(Path(root).expanduser(), "NYU-Depth v2 image root")
        self.depth_root = _require_dir(
            Path(depth_root).expanduser() if depth_root is not None else self.root, "NYU-Depth v2 depth root"
        )
        files = Path(files).expanduser()
        if not files.is_file():
            raise FileNotFoundError(
                f"NYU-Depth v2 file list not found: expected a text file of '<rgb> <depth> [focal]' lines at {files}"
            )
        self.samples: list[tuple[Path, Path]] = []
        for number, line in enumerate(files.read_text().splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) not in (2, 3) or fields[1] == "None":
                raise ValueError(
                    f"{files}:{number}: expected '<rgb path> <depth path> [focal]' with a depth map, got {line!r}"
                )
            self.samples.append((self.root / fields[0].lstrip("/"), self.depth_root / fields[1].lstrip("/")))
        if not self.samples:
            raise ValueError(f"{files}: the file list names no samples")
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        image_path, depth_path = self.samples[index]
        image = _rgb(image_path)
        depth_png = _open(depth_path, "NYU-Depth v2 depth map (16-bit png, millimetres)")
        # PIL reads 16-bit greyscale png as "I;16" (or "I" with some encoders); 8-bit would mean a
        # visualisation, not the measurement.
        if depth_png.mode not in ("I;16", "I;16B", "I"):
            raise ValueError(
                f"{depth_path}: expected a 16-bit single-channel depth png, got PIL mode {depth_png.mode}"
            )
        millimetres = np.asarray(depth_png).astype(np.float32)
        if millimetres.shape != tuple(image.shape[-2:]):
            raise ValueError(
                f"{depth_path}: depth map is {millimetres.shape} but its image {image_path.name} is "
                f"{tuple(image.shape[-2:])} (H, W)"
            )
        depth = torch.from_numpy(millimetres / NYU_DEPTH_SCALE)[None]
        sample = {"image": image, "depth": tv_tensors.Mask(depth), "path": str(image_path)}
        return _finish(sample, self.transforms)


class COCODetection(Dataset):
    """COCO 2017 instances as torchvision detection samples.

    ``{"image", "boxes": BoundingBoxes n x 4 (XYXY, pixels), "labels": int64 n (1..K), "iscrowd": int64 n,
    "area": float32 n (annotation area in original pixels), "image_id": int, "orig_size": (H, W)}``.
    ``self.categories[k - 1]`` is the COCO category dict of label ``k``. ``skip_empty`` drops images
    without annotations (for training; evaluation must keep them, detections there are false positives).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "val2017",
        transforms: Transforms | None = None,
        skip_empty: bool = False,
    ):
        if split not in COCO_SPLITS:
            raise ValueError(f"COCO split must be one of {sorted(COCO_SPLITS)}, got {split!r}")
        root = Path(root).expanduser()
        split = COCO_SPLITS[split]
        self.image_dir = _require_dir(root / split, "COCO image directory")
        self.annotation_file = root / "annotations" / f"instances_{split}.json"
        data = self._load(self.annotation_file)
        self.categories = sorted(data["categories"], key=lambda c: c["id"])
        label_of = {c["id"]: k for k, c in enumerate(self.categories, 1)}
        self.images = {img["id"]: img for img in data["images"]}
        self.annotations: dict[int, list[dict]] = {image_id: [] for image_id in self.images}
        for ann in data["annotations"]:
            if ann.get("image_id") not in self.images or ann.get("category_id") not in label_of:
                raise ValueError(
                    f"{self.annotation_file}: annotation {ann.get('id')} refers to an unknown image "
                    f"{ann.get('image_id')} or category {ann.get('category_id')}"
                )
            bbox = ann.get("bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4):
                raise ValueError(
                    f"{self.annotation_file}: annotation {ann.get('id')}: expected bbox [x, y, w, h], got {bbox!r}"
                )
            self.annotations[ann["image_id"]].append(ann)
        self.label_of = label_of
        self.ids = sorted(i for i in self.images if self.annotations[i] or not skip_empty)
        self.transforms = transforms

    @staticmethod
    def _load(path: Path) -> dict:
        if not path.is_file():
            raise FileNotFoundError(f"COCO annotation file not found: expected instances json at {path}")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not valid JSON ({err})") from err
        missing = [
            k for k in ("images", "annotations", "categories") if not isinstance(data, dict) or k not in data
        ]
        if missing:
            raise ValueError(f"{path}: expected a COCO instances file with keys {missing} (missing)")
        return data

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:
        image_id = self.ids[index]
        info = self.images[image_id]
        path = self.image_dir / info["file_name"]
        image = _rgb(path)
        height, width = image.shape[-2:]
        anns = self.annotations[image_id]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        sample = {
            "image": image,
            "boxes": tv_tensors.BoundingBoxes(xyxy, format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64),
            "iscrowd": torch.tensor([a.get("iscrowd", 0) for a in anns], dtype=torch.int64),
            "area": torch.tensor(
                [a.get("area", w * h) for a, (_, _, w, h) in zip(anns, xywh.tolist())], dtype=torch.float32
            ),
            "image_id": image_id,
            "orig_size": (height, width),
        }
        return _finish(sample, self.transforms)


def detection_collate(batch: list[Sample]) -> tuple[torch.Tensor, list[Sample]]:
    """Stack the (equally sized) images; keep each image's targets as its own dict, since the number of
    boxes differs per image."""
    images = torch.stack([sample["image"].as_subclass(torch.Tensor) for sample in batch])
    return images, [{k: v for k, v in sample.items() if k != "image"} for sample in batch]


def imagenet_folder(
    root: str | Path, split: str, transform: Callable[[Image.Image], torch.Tensor]
) -> ImageFolderDataset:
    """ImageNet in class folders (``root/{train,val}/<wnid>/*.JPEG``; val sorted into class folders, as
    most loaders expect) through :class:`ImageFolderDataset`, which labels classes by sorted name."""
    directory = _require_dir(Path(root).expanduser() / split, f"ImageNet {split} directory (class folders)")
    return ImageFolderDataset(directory, transform, mode="classes")
