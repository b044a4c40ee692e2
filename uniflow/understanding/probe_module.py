"""The probe LightningModule: one head on frozen features, its loss, and its task's metrics.

- classification: :class:`LinearClassifierHead` on pooled tokens; top-1 (and top-5 with at least
  five classes), torchmetrics' multiclass accuracy;
- segmentation: :class:`LinearSegmentationHead` on patch tokens, upsampled to the label map,
  cross-entropy ignoring 255; mIoU from one confusion matrix over the evaluation set;
- depth: :class:`LinearDepthHead` (log-depth), scale-invariant log loss; RMSE, AbsRel, delta1 over
  valid pixels (``probe.min_depth``/``max_depth``, optionally the Eigen crop);
- detection: :class:`DetectionProbe` (simple feature pyramid + torchvision Faster R-CNN); COCO box
  mAP by pycocotools over every evaluation image, gathered from all ranks.

The head is built in :meth:`setup`, once the data module knows the feature width and grid (it
extracts the features), and before Lightning restores a checkpoint into it.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torchmetrics.classification import MulticlassAccuracy
from torchvision.models.detection.anchor_utils import AnchorGenerator

from uniflow.metrics.dense import DepthMetrics, SegmentationMetrics
from uniflow.metrics.detection import coco_box_map
from uniflow.training.config import OptimConfig
from uniflow.training.finite import check_finite
from uniflow.training.schedule import adamw_warmup_cosine, weight_decay_groups
from uniflow.understanding.heads import (
    DetectionProbe,
    LinearClassifierHead,
    LinearDepthHead,
    LinearSegmentationHead,
)
from uniflow.understanding.probe_config import ProbeConfig
from uniflow.understanding.probe_data import FeatureSpec

# The pyramid's five levels (strides 4..64) each get one anchor size, at three aspect ratios.
ASPECT_RATIOS = (0.5, 1.0, 2.0)
PYRAMID_LEVELS = 5


class ProbeModule(L.LightningModule):
    """Trains ``probe.task``'s head on frozen features; ``self.results`` holds the last evaluation."""

    def __init__(self, probe: ProbeConfig, optim: OptimConfig, max_steps: int, seed: int = 0) -> None:
        super().__init__()
        self.probe, self.optim_cfg, self.max_steps, self.seed = probe, optim, max_steps, seed
        self.head: torch.nn.Module | None = None
        self.spec: FeatureSpec | None = None
        self.results: dict[str, float] = {}
        # The protocol recorded with the results (set by the stage, which knows the whole run config).
        self.protocol: dict[str, Any] = {}
        self._detections: list[tuple[dict[str, torch.Tensor], dict[str, Any]]] = []

    # ------------------------------------------------------------------ construction
    def setup(self, stage: str) -> None:
        if self.head is not None:
            return
        data = self.trainer.datamodule
        # Loading a tokenizer draws from the global generator and building a raw encoder does not:
        # reseeding here makes the head's start and every training draw the same for either source.
        torch.manual_seed(self.seed)
        self.build(data.spec, data.train_set)

    def build(self, spec: FeatureSpec, train_set: Any = None) -> None:
        """The head (and metrics) for features described by ``spec``."""
        p = self.probe
        self.spec = spec
        if p.task == "classification":
            assert spec.num_classes is not None
            self.head = LinearClassifierHead(spec.dim, spec.num_classes, p.norm)
            self.top1 = MulticlassAccuracy(spec.num_classes, top_k=1, average="micro")
            if spec.num_classes >= 5:
                self.top5 = MulticlassAccuracy(spec.num_classes, top_k=5, average="micro")
        elif p.task == "segmentation":
            assert spec.num_classes is not None
            self.head = LinearSegmentationHead(spec.dim, spec.num_classes, p.norm)
            self.segmentation = SegmentationMetrics(spec.num_classes)
        elif p.task == "depth":
            self.head = LinearDepthHead(spec.dim, p.norm, init_depth=self._typical_depth(train_set))
            self.depth = DepthMetrics(p.min_depth, p.max_depth, eigen_crop=p.eigen_crop)
        else:
            if len(p.anchor_sizes) != PYRAMID_LEVELS:
                raise ValueError(
                    f"probe.anchor_sizes needs one size per pyramid level ({PYRAMID_LEVELS}), got {p.anchor_sizes}"
                )
            assert spec.num_classes is not None
            anchors = AnchorGenerator(
                tuple((int(s),) for s in p.anchor_sizes), (ASPECT_RATIOS,) * PYRAMID_LEVELS
            )
            self.head = DetectionProbe(
                spec.dim,
                spec.num_classes,
                out_channels=p.pyramid_channels,
                representation_size=p.representation_size,
                rpn_anchor_generator=anchors,
                rpn_batch_size_per_image=p.rpn_batch_size_per_image,
                box_batch_size_per_image=p.box_batch_size_per_image,
                rpn_pre_nms_top_n_train=p.proposals,
                rpn_pre_nms_top_n_test=p.proposals,
                rpn_post_nms_top_n_train=p.proposals,
                rpn_post_nms_top_n_test=p.proposals,
            )

    def _typical_depth(self, train_set: Any) -> float:
        """Geometric mean of the valid training depths: where the log-depth head starts, so early
        steps fit structure rather than a global scale (the loss is nearly scale-invariant)."""
        if train_set is None:
            return 1.0
        depth = train_set.tensors[1]
        valid = torch.isfinite(depth) & (depth > self.probe.min_depth) & (depth < self.probe.max_depth)
        return float(depth[valid].log().mean().exp()) if valid.any() else 1.0

    # ------------------------------------------------------------------ steps
    def _dense(self, tokens: torch.Tensor) -> torch.Tensor:
        assert self.spec is not None and self.head is not None
        return self.head(tokens, size=self.spec.image_size, grid=self.spec.grid)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        assert self.head is not None and self.spec is not None
        features, targets = batch
        task = self.probe.task
        if task == "classification":
            loss = LinearClassifierHead.loss(self.head(features).float(), targets)
        elif task == "segmentation":
            loss = LinearSegmentationHead.loss(self._dense(features).float(), targets)
        elif task == "depth":
            loss = LinearDepthHead.loss(
                self._dense(features).float(), targets, self.probe.min_depth, self.probe.max_depth
            )
        else:
            losses = self.head(features, self.spec.image_size, targets=targets, grid=self.spec.grid)
            loss = sum(losses.values())
            for name, value in losses.items():
                self.log(f"train/{name}", value)
        check_finite(self, {"loss": loss.detach()}, "loss")
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        assert self.head is not None and self.spec is not None
        features, targets = batch
        task = self.probe.task
        if task == "classification":
            logits = self.head(features)
            self.top1.update(logits, targets)
            if hasattr(self, "top5"):
                self.top5.update(logits, targets)
        elif task == "segmentation":
            self.segmentation.update(self._dense(features).float(), targets.long())
        elif task == "depth":
            self.depth.update(LinearDepthHead.to_depth(self._dense(features).float()), targets)
        else:
            detections = self.head(features, self.spec.image_size, grid=self.spec.grid)
            for detection, target in zip(detections, targets, strict=True):
                self._detections.append(({k: v.detach().float().cpu() for k, v in detection.items()}, target))

    def on_validation_epoch_end(self) -> None:
        task = self.probe.task
        if task == "classification":
            results = {"top1": float(self.top1.compute())}
            self.top1.reset()
            if hasattr(self, "top5"):
                results["top5"] = float(self.top5.compute())
                self.top5.reset()
        elif task == "segmentation":
            seg = self.segmentation.compute()
            results = {
                "miou": float(seg["miou"]),
                "pixel_accuracy": float(seg["pixel_accuracy"]),
                "classes_present": float(seg["classes_present"]),
            }
            self.segmentation.reset()
        elif task == "depth":
            results = {name: float(value) for name, value in self.depth.compute().items()}
            self.depth.reset()
        else:
            results = self._box_map()
        self.results = results
        for name, value in results.items():
            if not math.isnan(value):
                self.log(f"val/{name}", value, sync_dist=False)

    def _box_map(self) -> dict[str, float]:
        pairs = self._detections
        self._detections = []
        if self.trainer.world_size > 1:
            import torch.distributed as dist

            gathered: list[Any] = [None] * self.trainer.world_size
            dist.all_gather_object(gathered, pairs)
            pairs = [pair for part in gathered for pair in part]
        predictions = [p for p, _ in pairs]
        targets = [t for _, t in pairs]
        return coco_box_map(predictions, targets)

    # ------------------------------------------------------------------ optimiser
    def configure_optimizers(self) -> dict[str, Any]:
        assert self.head is not None
        o = self.optim_cfg
        groups = weight_decay_groups(list(self.head.parameters()), o.weight_decay, o.lr, "head")
        return adamw_warmup_cosine(groups, o, self.max_steps)
