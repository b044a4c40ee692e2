"""The ``probe:`` config section: one probe's protocol on frozen features (the ``probe`` stage).

Everything that decides a probe's number is here (or in the run's ``optim`` and ``seed``), and the
stage copies it into the result's provenance: task, feature source, block, pooling, resolution,
epochs, batch size, augmentation, head normalisation, and the depth and detection settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from uniflow.config import choice

TASKS = ("classification", "segmentation", "depth", "detection")
# student: the tokenizer's adapted encoder; teacher: the untouched encoder it started from. Both are
# read through uniflow.understanding.features.FeatureSource, so they share every line of the path.
SOURCES = ("student", "teacher")
DATASETS = ("embedded", "imagenet", "ade20k", "nyu", "coco")
# Which datasets carry the targets of which task.
TASK_DATASETS = {
    "classification": ("embedded", "imagenet"),
    "segmentation": ("embedded", "ade20k"),
    "depth": ("embedded", "nyu"),
    "detection": ("embedded", "coco"),
}
# hflip: every training image is also seen mirrored (its features are cached once per view, so the
# encoder still runs once per image and view); the evaluation images are never augmented.
AUGMENTATIONS = ("none", "hflip")


@dataclass
class ProbeConfig:
    task: str = choice("classification", *TASKS)
    # The tokenizer run the features come from: a run directory or its tokenizer/ export.
    tokenizer: str = "runs/embedded"
    source: str = choice("student", *SOURCES)
    # Block the features are read from (1-based; negative counts from the end) or "latent".
    layer: Any = -1
    dataset: str = choice("embedded", *DATASETS)
    # Dataset root for the on-disk datasets (see docs/evaluation.md for each layout); unused for embedded.
    data_path: str | None = None
    # Probe input size (H, W): embedded scenes are rendered at it (square); on-disk images are resized
    # (shorter side) and centre-cropped to it. Dense tasks need multiples of the encoder's stride.
    resolution: list[int] = field(default_factory=lambda: [64, 64])
    # Samples of the training and evaluation splits: required for embedded (the scenes are generated);
    # a cap (the first N) for on-disk datasets, None for all of them.
    num_train: int | None = 1024
    num_val: int | None = 256
    epochs: int = 10
    batch_size: int = 64
    augmentation: str = choice("none", *AUGMENTATIONS)
    # Parameter-free LayerNorm on the tokens before the linear map (see understanding/heads.py).
    norm: bool = True
    # Images per batch of the frozen encoder when features are extracted (and cached).
    extract_batch_size: int = 64
    # Feature cache root; None: $UNIFLOW_CACHE/features (uniflow/understanding/features.py).
    cache_dir: str | None = None
    # Depth: ground truth outside (min_depth, max_depth) is not scored and predictions are clipped to
    # it; eigen_crop scores only Eigen et al.'s crop of the NYU frame (scaled to the resolution).
    min_depth: float = 1e-3
    max_depth: float = 10.0
    eigen_crop: bool = False
    # Detection: RPN anchor sizes in input pixels, one per pyramid level (strides 4, 8, 16, 32, 64).
    anchor_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    pyramid_channels: int = 256
    representation_size: int = 1024
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    # Region proposals kept per image and pyramid level before NMS, and per image after it (training
    # and evaluation alike; torchvision's defaults are 2000 / 1000). RoIAlign's cost grows with it.
    proposals: int = 1000
    # Worker processes reading images for the extraction.
    num_workers: int = 0
