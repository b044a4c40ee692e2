"""Tiny datasets in the probe benchmarks' real on-disk formats (ImageNet class folders, ADE20K,
NYU-Depth v2 as BTS packages it, COCO 2017), for the paper probe rows' end-to-end tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from uniflow.evaluation.benchmarks.probes import EMBEDDED_ROWS

# Non-square frames, so the resize-and-crop to the probe resolution has work to do.
HEIGHT, WIDTH = 36, 48


def _jpg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


def imagenet(root: Path) -> Path:
    """``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``: two classes, two images each per split."""
    for s, split in enumerate(("train", "val")):
        for c, wnid in enumerate(("n01440764", "n01443537")):
            for i in range(2):
                _jpg(root / split / wnid / f"{wnid}_{i}.JPEG", seed=100 * s + 10 * c + i)
    return root


def ade20k(root: Path) -> Path:
    """``ADEChallengeData2016/{images,annotations}/{training,validation}``: 0 = unlabelled, 1..150."""
    ade = root / "ADEChallengeData2016"
    for s, split in enumerate(("training", "validation")):
        for i in range(2):
            name = f"ADE_{'train' if split == 'training' else 'val'}_{i + 1:08d}"
            _jpg(ade / "images" / split / f"{name}.jpg", seed=10 * s + i)
            labels = np.zeros((HEIGHT, WIDTH), np.uint8)
            labels[:, WIDTH // 3 :], labels[HEIGHT // 2 :, : WIDTH // 2] = 3, 150
            (ade / "annotations" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(labels).save(ade / "annotations" / split / f"{name}.png")
    return root


def nyu(root: Path) -> Path:
    """BTS's layout: ``sync/`` and ``official_splits/test/`` with 16-bit depth png in millimetres and
    the lists ``nyudepthv2_{train,test}_files_with_gt.txt``."""
    for s, (split, folder, listing) in enumerate(
        (("train", "sync", "nyudepthv2_train_files_with_gt.txt"),
         ("test", "official_splits/test", "nyudepthv2_test_files_with_gt.txt"))
    ):  # fmt: skip
        lines = []
        for i in range(2):
            rgb, depth = f"kitchen/rgb_{i:05d}.jpg", f"kitchen/sync_depth_{i:05d}.png"
            _jpg(root / folder / rgb, seed=10 * s + i)
            millimetres = np.linspace(800, 6000, HEIGHT * WIDTH).reshape(HEIGHT, WIDTH).astype(np.uint16)
            millimetres[:2] = 0  # a hole in the measurement: not scored
            Image.fromarray(millimetres).save(root / folder / depth)
            lines.append(
                f"{'/' if split == 'train' else ''}{rgb} {'/' if split == 'train' else ''}{depth} 518.8579"
            )
        (root / listing).write_text("\n".join(lines) + "\n")
    return root


def coco(root: Path) -> Path:
    """``{train,val}2017/*.jpg`` and ``annotations/instances_{train,val}2017.json`` (two categories)."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for s, split in enumerate(("train2017", "val2017")):
        images, annotations = [], []
        for i in range(2):
            name = f"{s * 10 + i + 1:012d}.jpg"
            _jpg(root / split / name, seed=10 * s + i)
            images.append({"id": s * 10 + i + 1, "file_name": name, "height": HEIGHT, "width": WIDTH})
            for k, (box, category) in enumerate((([4, 4, 20, 16], 1), ([24, 10, 18, 20], 3))):
                annotations.append({"id": 100 * s + 10 * i + k + 1, "image_id": s * 10 + i + 1, "bbox": box,
                                    "category_id": category, "area": box[2] * box[3], "iscrowd": 0})  # fmt: skip
        instances = {"images": images, "annotations": annotations,
                     "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}]}  # fmt: skip
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(instances))
    return root


def _paper_row(name: str, write: Callable[[Path], Path]) -> Callable[[Path], dict[str, Any]]:
    """A paper probe row on its tiny real-format dataset, probed at 32 px (the tiny tokenizer's size)."""
    return lambda root: {"data": {name: str(write(root / name))}, "image_size": 32}


def _embedded_row(name: str) -> Callable[[Path], dict[str, Any]]:
    return lambda root: {"num_samples": {name: 4}}


# The EvalConfig settings of each probe row's contract test (tests/evaluation_fakes.py collects them).
PROBE_FIXTURES: dict[str, Callable[[Path], dict[str, Any]]] = {
    **{name: _embedded_row(name) for name in EMBEDDED_ROWS.values()},
    "imagenet_linear": _paper_row("imagenet_linear", imagenet),
    "ade20k_seg": _paper_row("ade20k_seg", ade20k),
    "nyu_depth": _paper_row("nyu_depth", nyu),
    "coco_det": _paper_row("coco_det", coco),
}
