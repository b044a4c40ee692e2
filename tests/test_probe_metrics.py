"""Probe metrics against hand-computed cases: mIoU, depth, COCO box mAP, drift (cosine, linear CKA)."""

import math

import pytest
import torch

from uniflow.metrics.dense import (
    IGNORE_INDEX,
    DepthMetrics,
    SegmentationMetrics,
    ade20k_reduce_labels,
    eigen_crop_mask,
    iou_from_confusion,
)
from uniflow.metrics.detection import coco_box_map
from uniflow.metrics.drift import LayerDrift, SemanticDrift, linear_cka

# Tiny tensors: on a busy 2-core machine intra-op thread hand-offs cost more than the arithmetic.
pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ segmentation

# Six pixels, classes 0..3. The last pixel's ground truth is ignored, so the class 2 predicted there
# must count nowhere. Class 3 is in neither ground truth nor prediction.
SEG_TARGET = torch.tensor([[0, 0, 1, 1, 2, IGNORE_INDEX]])
SEG_PRED = torch.tensor([[0, 1, 1, 1, 0, 2]])
# class 0: TP 1, FP 1 (the class-2 pixel), FN 1 -> 1/3; class 1: TP 2, FP 1 -> 2/3; class 2: TP 0, FN 1 -> 0
SEG_IOU = [1 / 3, 2 / 3, 0.0]


def test_miou_hand_computed_with_ignored_pixel_and_absent_class():
    metric = SegmentationMetrics(num_classes=4)
    metric.update(SEG_PRED, SEG_TARGET)
    out = metric.compute()
    assert out["iou"][:3].tolist() == pytest.approx(SEG_IOU)
    assert math.isnan(out["iou"][3])  # absent from both: left out of the mean, not counted as 0
    assert float(out["miou"]) == pytest.approx(sum(SEG_IOU) / 3)
    assert int(out["classes_present"]) == 3
    assert float(out["pixel_accuracy"]) == pytest.approx(3 / 5)


def test_miou_counts_a_class_that_is_only_predicted():
    metric = SegmentationMetrics(num_classes=3)
    metric.update(torch.tensor([[0, 2]]), torch.tensor([[0, 0]]))
    out = metric.compute()
    # class 0: TP 1, FN 1 -> 1/2; class 2 predicted but never true -> 0 and it counts; class 1 absent
    assert out["iou"][0] == pytest.approx(0.5) and out["iou"][2] == 0 and math.isnan(out["iou"][1])
    assert float(out["miou"]) == pytest.approx(0.25)


def test_miou_streams_over_batches_from_logits_and_merges_like_ranks():
    logits = torch.nn.functional.one_hot(SEG_PRED, 4).permute(0, 2, 1).float().unsqueeze(-1)  # B x C x H x W
    target = SEG_TARGET.unsqueeze(-1)
    a, b = SegmentationMetrics(4), SegmentationMetrics(4)
    a.update(logits[..., :3, :], target[:, :3])
    b.update(logits[..., 3:, :], target[:, 3:])
    a.merge_state(b)  # the all-reduce a DDP compute() does: state sums
    assert float(a.compute()["miou"]) == pytest.approx(sum(SEG_IOU) / 3)


def test_iou_from_confusion_rows_are_ground_truth():
    confmat = torch.tensor([[3, 1], [0, 0]])  # 3 correct class-0 pixels, 1 class-0 pixel called 1
    iou = iou_from_confusion(confmat)
    assert iou[0] == pytest.approx(3 / 4) and iou[1] == 0.0


def test_segmentation_rejects_ignore_index_inside_the_classes():
    with pytest.raises(ValueError, match="collides"):
        SegmentationMetrics(num_classes=300, ignore_index=255)


def test_ade20k_label_shift():
    raw = torch.tensor([0, 1, 2, 150, 255], dtype=torch.uint8)
    assert ade20k_reduce_labels(raw).tolist() == [IGNORE_INDEX, 0, 1, 149, IGNORE_INDEX]


# ------------------------------------------------------------------ depth

# Image 1: valid (pred, gt) = (2, 2), (5, 4); a hole (0) and a NaN are invalid.
# Image 2: valid = (2, 1), (1, 1), (1, 1); ground truth 12 m is beyond the 10 m cap.
DEPTH_PRED = torch.tensor([[[2.0, 5.0], [3.0, 3.0]], [[2.0, 12.0], [1.0, 1.0]]])
DEPTH_GT = torch.tensor([[[2.0, 4.0], [0.0, math.nan]], [[1.0, 12.0], [1.0, 1.0]]])
LN125, LN2 = math.log(1.25), math.log(2.0)
DEPTH_PER_IMAGE = [
    {"abs_rel": 0.125, "rmse": math.sqrt(0.5), "log_rmse": LN125 / math.sqrt(2), "delta1": 0.5, "delta2": 1.0, "delta3": 1.0},
    {"abs_rel": 1 / 3, "rmse": math.sqrt(1 / 3), "log_rmse": LN2 / math.sqrt(3), "delta1": 2 / 3, "delta2": 2 / 3, "delta3": 2 / 3},
]  # fmt: skip


def test_depth_metrics_per_image_average_hand_computed():
    metric = DepthMetrics()  # NYU defaults: min 1e-3 m, cap 10 m
    metric.update(DEPTH_PRED, DEPTH_GT.unsqueeze(1))  # B x 1 x H x W ground truth works too
    out = metric.compute()
    for name, value in out.items():
        expected = (DEPTH_PER_IMAGE[0][name] + DEPTH_PER_IMAGE[1][name]) / 2
        assert float(value) == pytest.approx(expected), name


def test_depth_metrics_pixel_average_hand_computed():
    metric = DepthMetrics(average="pixel")
    metric.update(DEPTH_PRED, DEPTH_GT)
    out = metric.compute()
    assert float(out["abs_rel"]) == pytest.approx((0 + 0.25 + 1 + 0 + 0) / 5)
    assert float(out["rmse"]) == pytest.approx(math.sqrt(2 / 5))
    assert float(out["log_rmse"]) == pytest.approx(math.sqrt((LN125**2 + LN2**2) / 5))
    assert float(out["delta1"]) == pytest.approx(3 / 5)
    assert float(out["delta2"]) == pytest.approx(4 / 5)


def test_depth_streams_merges_and_skips_images_without_valid_pixels():
    whole, a, b = DepthMetrics(), DepthMetrics(), DepthMetrics()
    whole.update(DEPTH_PRED, DEPTH_GT)
    a.update(DEPTH_PRED[:1], DEPTH_GT[:1])
    b.update(DEPTH_PRED[1:], DEPTH_GT[1:])
    b.update(torch.ones(1, 2, 2), torch.zeros(1, 2, 2))  # all holes: not an image to average over
    a.merge_state(b)
    for name, value in whole.compute().items():
        assert float(a.compute()[name]) == pytest.approx(float(value)), name


def test_depth_clips_predictions_to_the_cap_and_nan_to_the_floor():
    metric = DepthMetrics(max_depth=10.0)
    metric.update(torch.tensor([[[15.0, math.nan]]]), torch.tensor([[[5.0, 2.0]]]))
    # 15 -> 10: |10 - 5| / 5 = 1; NaN -> 1e-3: |1e-3 - 2| / 2
    assert float(metric.compute()["abs_rel"]) == pytest.approx((1 + (2 - 1e-3) / 2) / 2)


def test_eigen_crop():
    mask = eigen_crop_mask(480, 640)
    assert int(mask.sum()) == (471 - 45) * (601 - 41)
    assert mask[45, 41] and not mask[44, 41] and not mask[45, 601]
    # At a tenth of the resolution the crop scales with the frame (small, so the test is fast).
    small = eigen_crop_mask(48, 64)
    assert small[5:47, 4:60].all() and int(small.sum()) < 48 * 64
    gt = torch.full((1, 48, 64), 2.0)
    pred = torch.where(small, 2.0, 4.0).unsqueeze(0)  # wrong only outside the crop
    cropped, full = DepthMetrics(eigen_crop=True), DepthMetrics()
    cropped.update(pred, gt)
    full.update(pred, gt)
    assert float(cropped.compute()["abs_rel"]) == 0.0
    assert float(full.compute()["abs_rel"]) > 0.0


# ------------------------------------------------------------------ detection


def _target(boxes, labels, iscrowd=None, image_id=None):
    t = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels)}
    if iscrowd is not None:
        t["iscrowd"] = torch.tensor(iscrowd)
    if image_id is not None:
        t["image_id"] = image_id
    return t


def _pred(boxes, scores, labels):
    p = _target(boxes, labels)
    p["scores"] = torch.tensor(scores)
    return p


def test_box_map_hand_computed_with_a_crowd_region():
    # Two objects; a perfect detection of the first, and one of the second at IoU 100/150 = 2/3, which
    # is a true positive at IoU thresholds 0.50-0.65 (4 of 10) and a false positive at 0.70-0.95.
    # A crowd region with a detection on it: neither a false positive nor a missed object.
    target = _target([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 90, 90]], [1, 1, 1], iscrowd=[0, 0, 1])
    pred = _pred([[0, 0, 10, 10], [20, 20, 30, 35], [50, 50, 90, 90]], [0.9, 0.8, 0.95], [1, 1, 1])
    out = coco_box_map([pred], [target])
    # At a threshold where only the 0.9 detection matches: precision 1 up to recall 0.5, then the 0.8
    # one is a false positive, so COCO's 101-point interpolation gives 51 / 101.
    half = 51 / 101
    assert out["map_50"] == pytest.approx(1.0)
    assert out["map_75"] == pytest.approx(half)
    assert out["map"] == pytest.approx((4 * 1.0 + 6 * half) / 10)
    # Every non-crowd object is small (area < 32^2): no medium or large ground truth to score.
    assert out["map_small"] == pytest.approx(out["map"])
    assert math.isnan(out["map_large"])


def test_box_map_averages_categories_and_counts_misses():
    targets = [_target([[0, 0, 10, 10]], [1], image_id=7), _target([[0, 0, 10, 10]], [2], image_id=3)]
    preds = [_pred([[0, 0, 10, 10]], [0.5], [1]), _pred([[40, 40, 50, 50]], [0.5], [2])]
    out = coco_box_map(preds, targets)
    assert out["map"] == pytest.approx(0.5)  # category 1 found (AP 1), category 2 missed (AP 0)


def test_box_map_without_any_prediction_is_zero():
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    out = coco_box_map([empty], [_target([[0, 0, 10, 10]], [1])])
    assert out["map"] == 0.0


def test_box_map_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="predictions for"):
        coco_box_map([], [_target([[0, 0, 1, 1]], [1])])


# ------------------------------------------------------------------ drift


def test_cka_of_identical_rotated_and_independent_features():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 500, 8, generator=g, dtype=torch.float64) + 1000.0  # a large mean costs no accuracy
    assert float(linear_cka(x, x)) == pytest.approx(1.0, abs=1e-9)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    assert float(linear_cka(x, 3.0 * x @ rotation)) == pytest.approx(1.0, abs=1e-9)  # rotation, scale
    noise = torch.randn(4, 500, 8, generator=g, dtype=torch.float64)
    assert float(linear_cka(x, noise)) < 0.02


def test_layer_drift_streams_and_merges_to_the_one_shot_value():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 16, 8, generator=g)
    y = x @ torch.randn(8, 12, generator=g) + 0.5 * torch.randn(6, 16, 12, generator=g)  # other width
    a, b = LayerDrift(8, 12), LayerDrift(8, 12)
    a.update(x[:2], y[:2])
    a.update(x[2:4], y[2:4])
    b.update(x[4:], y[4:])
    a.merge_state(b)
    out = a.compute()
    assert float(out["cka"]) == pytest.approx(float(linear_cka(x, y)), rel=1e-9)
    assert math.isnan(out["cosine"])  # widths differ: no token-wise cosine


def test_semantic_drift_rows_per_layer():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 9, 4, generator=g)
    drift = SemanticDrift(num_layers=2, student_dim=4)
    drift.update([x, x], [x, -x])
    rows = drift.compute()
    assert [r["layer"] for r in rows] == [1, 2]
    assert rows[0]["cosine"] == pytest.approx(1.0) and rows[1]["cosine"] == pytest.approx(-1.0)
    assert rows[1]["cka"] == pytest.approx(1.0)  # a sign flip is orthogonal
    with pytest.raises(ValueError, match="expected 2 layers"):
        drift.update([x], [x])
