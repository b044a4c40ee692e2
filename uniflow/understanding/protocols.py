"""The probe protocols the benchmark suite runs, as probe-stage configs (the same stage a user runs).

``EMBEDDED[task]``: the CPU stand-ins on embedded scenes (64 px, the embedded tokenizer's size);
experiments/probe/embedded_<task>.yaml are these as files (a test keeps them equal).
``PAPER[task]``: the four paper rows on their datasets, at the suite's ``eval.image_size``.

Why these embedded settings: the heads are linear (or, for detection, the thinnest Faster R-CNN),
the features are cached, and the eight probes (four tasks, student and teacher) have to fit in a few
CPU minutes inside ``make eval-all``, so the epoch counts are budgets, not convergence: measured on
the embedded teacher, 20 segmentation epochs instead of 10 or 8 detection epochs instead of 5 cost
twice the time for a few points. Detection has 2 epochs: a Faster R-CNN step costs about a CPU
second (RoIAlign's backward), and at 5 epochs its two runs alone took a third of the suite's time. They run on one intra-op thread (the suite sets it): on a busy
two-core machine the small head's steps took a third of the CPU time of two threads.
"""

from __future__ import annotations

from typing import Any

# Detection on 64 px scenes: objects of 8-54 px, so anchors of 8-128 px on the pyramid's strides
# 4-64 (torchvision's default 32-512 suits 800 px COCO images), and a narrow head that trains in
# seconds on a CPU.
_EMBEDDED_DETECTION = {
    "anchor_sizes": [8, 16, 32, 64, 128],
    "pyramid_channels": 64,
    "representation_size": 256,
    "rpn_batch_size_per_image": 64,
    "box_batch_size_per_image": 16,
    "proposals": 64,
}

EMBEDDED: dict[str, dict[str, Any]] = {
    "classification": {
        "probe": {"task": "classification", "epochs": 30, "batch_size": 128, "augmentation": "none"},
        "optim": {"lr": 3.0e-3, "warmup_steps": 10, "weight_decay": 0.0},
    },
    "segmentation": {
        "probe": {"task": "segmentation", "epochs": 10, "batch_size": 64, "augmentation": "none"},
        "optim": {"lr": 3.0e-3, "warmup_steps": 10, "weight_decay": 0.0},
    },
    "depth": {
        # The scenes' ground plane reaches 10 at the top row: the cap keeps all of it.
        "probe": {"task": "depth", "epochs": 10, "batch_size": 64, "augmentation": "none", "max_depth": 10.5},
        "optim": {"lr": 3.0e-3, "warmup_steps": 10, "weight_decay": 0.0},
    },
    "detection": {
        "probe": {"task": "detection", "epochs": 2, "batch_size": 32, "augmentation": "none",
                  **_EMBEDDED_DETECTION},
        "optim": {"lr": 1.0e-3, "warmup_steps": 20, "weight_decay": 1.0e-4},
    },
}  # fmt: skip

PAPER: dict[str, dict[str, Any]] = {
    # Linear probe on mean-pooled last-block tokens, mirrored training images.
    "classification": {
        "probe": {"task": "classification", "dataset": "imagenet", "epochs": 10, "batch_size": 1024,
                  "augmentation": "hflip"},
        "optim": {"lr": 1.0e-3, "warmup_steps": 100, "weight_decay": 0.0},
    },
    # Linear segmentation (DINOv2's "lin." setting: one linear layer on last-block patch tokens).
    "segmentation": {
        "probe": {"task": "segmentation", "dataset": "ade20k", "epochs": 20, "batch_size": 16,
                  "augmentation": "hflip"},
        "optim": {"lr": 1.0e-3, "warmup_steps": 100, "weight_decay": 1.0e-4},
    },
    # Linear log-depth, NYU protocol: depth cap 10 m, Eigen crop.
    "depth": {
        "probe": {"task": "depth", "dataset": "nyu", "epochs": 25, "batch_size": 16, "augmentation": "hflip",
                  "max_depth": 10.0, "eigen_crop": True},
        "optim": {"lr": 1.0e-3, "warmup_steps": 100, "weight_decay": 1.0e-4},
    },
    # Simple feature pyramid + Faster R-CNN with torchvision's anchors (ViTDet's recipe, 1x-like).
    "detection": {
        "probe": {"task": "detection", "dataset": "coco", "epochs": 12, "batch_size": 16,
                  "augmentation": "hflip"},
        "optim": {"lr": 1.0e-4, "warmup_steps": 250, "weight_decay": 0.1},
    },
}  # fmt: skip
