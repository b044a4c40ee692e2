"""Dense-prediction metrics for the understanding probes: semantic segmentation (IoU from a
confusion matrix) and monocular depth (AbsRel, RMSE, log-RMSE, delta thresholds).

Both are torchmetrics ``Metric`` objects whose states are sums, so ``compute()`` all-reduces them
across ranks (DDP) and the result is the same as one process seeing every sample.

Segmentation follows the MMSegmentation ``IoUMetric`` convention (the one ADE20K numbers in the
literature are computed with): one confusion matrix over the whole evaluation set, pixels whose
ground truth is the ignore index are dropped (whatever was predicted there), per-class
IoU = TP / (TP + FP + FN), and mIoU is the mean over the classes whose IoU is defined, i.e. classes
that occur in the ground truth *or* in the prediction of at least one evaluated pixel. A class absent
from both has 0 / 0 = NaN and is left out; a class that is only predicted (never in the ground truth)
has IoU 0 and counts, since predicting it was a mistake.

Depth follows Eigen et al., "Depth Map Prediction from a Single Image using a Multi-Scale Deep
Network" (NeurIPS 2014), as evaluated on NYU-Depth v2 by later work (e.g. BTS, Lee et al. 2019):
metrics over valid ground-truth pixels, optionally inside the Eigen crop, with ground truth beyond the
depth cap left out and predictions clipped to ``[min_depth, max_depth]``.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import multiclass_confusion_matrix

IGNORE_INDEX = 255
ADE20K_NUM_CLASSES = 150

# Eigen et al. (2014) evaluation crop of a 480 x 640 NYU-Depth v2 frame: rows [45, 471), columns
# [41, 601). It removes the border where the Kinect depth was not registered to the RGB image.
NYU_FRAME = (480, 640)
EIGEN_CROP = (45, 471, 41, 601)
NYU_MAX_DEPTH = 10.0  # metres; the Kinect's usable range and the protocol's cap
NYU_MIN_DEPTH = 1e-3  # metres; below this a ground-truth pixel is a hole in the depth map
DELTA_BASE = 1.25


def ade20k_reduce_labels(labels: torch.Tensor) -> torch.Tensor:
    """ADE20K SceneParsing label shift: 0 ("other objects") -> ``IGNORE_INDEX``, class k -> k - 1.

    The annotation PNGs store 0 for unlabelled pixels and 1..150 for the classes; the benchmark
    scores the 150 classes only, so after the shift they are 0..149. Pixels already at
    ``IGNORE_INDEX`` stay ignored.
    """
    labels = labels.long()
    return torch.where((labels == 0) | (labels == IGNORE_INDEX), IGNORE_INDEX, labels - 1)


def iou_from_confusion(confmat: torch.Tensor) -> torch.Tensor:
    """Per-class IoU from a ``C x C`` confusion matrix (rows: ground truth, columns: prediction).

    IoU_c = TP / (TP + FP + FN); NaN where the class is in neither ground truth nor prediction.
    """
    confmat = confmat.double()
    tp = confmat.diagonal()
    union = confmat.sum(0) + confmat.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.nan)


class SegmentationMetrics(Metric):
    """Streaming mIoU over a whole evaluation set.

    ``update(preds, target)``: ``preds`` are logits ``B x C x H x W`` or label maps ``B x H x W``,
    ``target`` label maps ``B x H x W`` with values in ``[0, C)`` or ``ignore_index``.
    ``compute()`` -> ``miou``, ``iou`` (per class, NaN where undefined), ``pixel_accuracy`` and
    ``classes_present`` (how many classes entered the mean).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} collides with a class id in [0, {num_classes})")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        # A summed count matrix is what makes the metric exact across ranks.
        self.add_state(
            "confmat", default=torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if preds.is_floating_point() and preds.dim() == 4 and preds.shape[1] != self.num_classes:
            raise ValueError(
                f"expected logits B x {self.num_classes} x H x W, got shape {tuple(preds.shape)}"
            )
        # torchmetrics drops pixels whose target is ignore_index and argmaxes logits over dim 1.
        self.confmat += multiclass_confusion_matrix(
            preds, target.long(), self.num_classes, ignore_index=self.ignore_index
        )

    def compute(self) -> dict[str, torch.Tensor]:
        confmat = self.confmat
        iou = iou_from_confusion(confmat)
        defined = ~iou.isnan()
        total = confmat.sum()
        nan = torch.tensor(torch.nan, dtype=torch.float64, device=confmat.device)
        return {
            "miou": iou[defined].mean() if defined.any() else nan,
            "iou": iou,
            "pixel_accuracy": confmat.trace().double() / total if total > 0 else nan,
            "classes_present": defined.sum(),
        }


def eigen_crop_mask(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean ``H x W`` mask of the Eigen crop, exact at 480 x 640 and scaled proportionally otherwise
    (for ground truth that was resized as a whole frame)."""
    top, bottom, left, right = EIGEN_CROP
    fh, fw = height / NYU_FRAME[0], width / NYU_FRAME[1]
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    mask[round(top * fh) : round(bottom * fh), round(left * fw) : round(right * fw)] = True
    return mask


class DepthMetrics(Metric):
    """Streaming monocular depth metrics over valid ground-truth pixels.

    With d the prediction and d* the ground truth (metres):
    AbsRel = mean |d - d*| / d*, RMSE = sqrt(mean (d - d*)^2), log-RMSE = sqrt(mean (ln d - ln d*)^2),
    delta_k = share of pixels with max(d / d*, d* / d) < 1.25^k, k = 1, 2, 3.

    A pixel is valid when its ground truth is finite and above ``min_depth`` (0 marks a hole in Kinect
    depth), below ``max_depth`` when a cap is set, and inside the Eigen crop when ``eigen_crop``.
    Predictions are clipped to ``[min_depth, max_depth]`` (the cap bounds what the protocol can reward
    or punish; the floor keeps ratios and logs finite).

    ``average="image"`` (default) computes each metric per image and averages over images, as the
    NYU-Depth v2 literature does (Eigen et al. 2014, BTS); ``average="pixel"`` pools every valid
    pixel of the set. Images without a valid pixel are skipped. All states are float64 sums.
    """

    full_state_update = False
    _NAMES = ("abs_rel", "rmse", "log_rmse", "delta1", "delta2", "delta3")

    def __init__(
        self,
        min_depth: float = NYU_MIN_DEPTH,
        max_depth: float | None = NYU_MAX_DEPTH,
        eigen_crop: bool = False,
        average: str = "image",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if average not in ("image", "pixel"):
            raise ValueError(f"average must be 'image' or 'pixel', got {average!r}")
        if min_depth <= 0 or (max_depth is not None and max_depth <= min_depth):
            raise ValueError(f"need 0 < min_depth < max_depth, got {min_depth}, {max_depth}")
        self.min_depth, self.max_depth = min_depth, max_depth
        self.eigen_crop, self.average = eigen_crop, average
        zero = torch.zeros((), dtype=torch.float64)
        self.add_state("images", default=zero.clone(), dist_reduce_fx="sum")
        self.add_state("pixels", default=zero.clone(), dist_reduce_fx="sum")
        # Per-pixel sums: abs_rel, squared error, squared log error, delta1..3 hits.
        self.add_state("pixel_sums", default=torch.zeros(6, dtype=torch.float64), dist_reduce_fx="sum")
        # Sums over images of each image's metric (already square-rooted for the two RMSEs).
        self.add_state("image_sums", default=torch.zeros(6, dtype=torch.float64), dist_reduce_fx="sum")

    @staticmethod
    def _as_maps(x: torch.Tensor, name: str) -> torch.Tensor:
        if x.dim() == 4 and x.shape[1] == 1:
            x = x[:, 0]
        if x.dim() != 3:
            raise ValueError(f"{name}: expected B x H x W or B x 1 x H x W depth, got shape {tuple(x.shape)}")
        return x.double()

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """``preds`` and ``target``: depth in metres, ``B x H x W`` or ``B x 1 x H x W``, same size."""
        pred, gt = self._as_maps(preds, "preds"), self._as_maps(target, "target")
        if pred.shape != gt.shape:
            raise ValueError(
                f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in shape; "
                "upsample the prediction to the ground-truth resolution first"
            )
        valid = torch.isfinite(gt) & (gt > self.min_depth)
        if self.max_depth is not None:
            valid &= gt < self.max_depth
        if self.eigen_crop:
            valid &= eigen_crop_mask(*gt.shape[-2:], device=gt.device)
        upper = self.max_depth if self.max_depth is not None else torch.inf
        # A NaN prediction scores as the floor value instead of turning every sum into NaN (as BTS does).
        pred = pred.nan_to_num(nan=self.min_depth).clamp(self.min_depth, upper)
        gt = torch.where(valid, gt, 1.0)  # any positive value: these pixels are masked out below

        def per_image_sum(x: torch.Tensor) -> torch.Tensor:
            return torch.where(valid, x, 0.0).flatten(1).sum(-1)

        err, log_err = pred - gt, pred.log() - gt.log()
        ratio = torch.maximum(pred / gt, gt / pred)
        sums = torch.stack(
            [
                per_image_sum(err.abs() / gt),
                per_image_sum(err**2),
                per_image_sum(log_err**2),
                *(per_image_sum((ratio < DELTA_BASE**k).double()) for k in (1, 2, 3)),
            ]
        )  # 6 x B
        counts = valid.flatten(1).sum(-1).double()  # B
        has = counts > 0
        self.pixels += counts.sum()
        self.pixel_sums += sums.sum(-1)
        means = sums[:, has] / counts[has]
        means[1:3] = means[1:3].sqrt()  # per-image RMSE and log-RMSE
        self.images += has.sum()
        self.image_sums += means.sum(-1)

    def compute(self) -> dict[str, torch.Tensor]:
        if self.average == "image":
            if self.images == 0:
                return {name: torch.tensor(torch.nan, dtype=torch.float64) for name in self._NAMES}
            values = self.image_sums / self.images
        else:
            if self.pixels == 0:
                return {name: torch.tensor(torch.nan, dtype=torch.float64) for name in self._NAMES}
            values = self.pixel_sums / self.pixels
            values = torch.cat([values[:1], values[1:3].sqrt(), values[3:]])
        return dict(zip(self._NAMES, values, strict=True))
