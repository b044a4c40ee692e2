"""COCO box mAP through pycocotools' ``COCOeval``, from predictions and ground truth held in memory.

The official COCO numbers are pycocotools', so this builds its ``COCO`` objects directly from
tensors (no JSON files) and runs the unmodified evaluator. mAP is AP averaged over IoU thresholds
0.50:0.05:0.95 and over categories with ground truth; AP50 and AP75 are single thresholds.

Ground truth may mark crowd regions (``iscrowd``): COCOeval never counts a detection matched to one
as a false positive, and a missed crowd region is not a false negative. ``area`` (the instance
mask's area in COCO) only decides the small / medium / large split; without it the box area is used.
mAP, AP50 and AP75 are invariant to rescaling the image frame, as long as predictions and ground truth
share it; the size split is not (COCO's area ranges are in original-image pixels).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence

import torch

# COCOeval.stats positions of the box metrics reported here.
_STATS = {"map": 0, "map_50": 1, "map_75": 2, "map_small": 3, "map_medium": 4, "map_large": 5}


def _xyxy_to_xywh(boxes: torch.Tensor) -> list[list[float]]:
    boxes = boxes.detach().double().cpu().reshape(-1, 4)
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()


def _image_id(target: Mapping[str, torch.Tensor | int], index: int) -> int:
    image_id = target.get("image_id", index)
    return int(image_id.item() if isinstance(image_id, torch.Tensor) else image_id)


def torchvision_to_coco(
    predictions: Sequence[Mapping[str, torch.Tensor]],
    targets: Sequence[Mapping[str, torch.Tensor | int]],
) -> tuple[dict, list[dict]]:
    """torchvision detection dicts -> a COCO ground-truth dataset dict and a COCO result list.

    ``predictions[i]``: ``boxes`` (n x 4 xyxy), ``scores`` (n), ``labels`` (n), for image ``i``.
    ``targets[i]``: ``boxes`` (m x 4 xyxy), ``labels`` (m), optionally ``iscrowd`` (m), ``area`` (m)
    and ``image_id`` (default: ``i``). Labels are used as COCO category ids.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} ground-truth images")
    images, annotations, results, categories = [], [], [], set()
    seen: set[int] = set()
    for index, (pred, target) in enumerate(zip(predictions, targets, strict=True)):
        image_id = _image_id(target, index)
        if image_id in seen:
            raise ValueError(f"image_id {image_id} appears twice in the ground truth")
        seen.add(image_id)
        images.append({"id": image_id})

        boxes = _xyxy_to_xywh(target["boxes"])
        labels = target["labels"].reshape(-1).tolist()
        crowd = target.get("iscrowd")
        crowd = [0] * len(boxes) if crowd is None else crowd.reshape(-1).tolist()
        area = target.get("area")
        area = [w * h for _, _, w, h in boxes] if area is None else area.reshape(-1).tolist()
        if not len(boxes) == len(labels) == len(crowd) == len(area):
            raise ValueError(
                f"ground truth of image {image_id}: boxes, labels, iscrowd, area differ in length"
            )
        for box, label, is_crowd, a in zip(boxes, labels, crowd, area, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,  # COCO ids start at 1; 0 means "unmatched" inside COCOeval
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": box,
                    "area": float(a),
                    "iscrowd": int(is_crowd),
                }
            )
            categories.add(int(label))

        pred_boxes = _xyxy_to_xywh(pred["boxes"])
        scores, pred_labels = pred["scores"].reshape(-1).tolist(), pred["labels"].reshape(-1).tolist()
        if not len(pred_boxes) == len(scores) == len(pred_labels):
            raise ValueError(f"prediction for image {image_id}: boxes, scores, labels differ in length")
        for box, score, label in zip(pred_boxes, scores, pred_labels, strict=True):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": box,
                    "score": float(score),
                    "area": box[2] * box[3],
                }
            )
            categories.add(int(label))

    dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c} for c in sorted(categories)],
    }
    return dataset, results


def coco_box_map(
    predictions: Sequence[Mapping[str, torch.Tensor]],
    targets: Sequence[Mapping[str, torch.Tensor | int]],
) -> dict[str, float]:
    """COCO box AP of torchvision-style predictions against ground truth, as pycocotools computes it.

    Returns ``map`` (AP@[.5:.95]), ``map_50``, ``map_75`` and ``map_small/medium/large``, in [0, 1];
    a value is NaN where COCOeval has no ground truth to score it (its -1).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dataset, results = torchvision_to_coco(predictions, targets)
    ground_truth, detections = COCO(), COCO()
    ground_truth.dataset = dataset
    # Detections as a COCO object built like the ground truth (what COCO.loadRes would produce), so an
    # empty result list works too: loadRes fails on one.
    detections.dataset = {**dataset, "annotations": [{**r, "id": i + 1} for i, r in enumerate(results)]}
    # pycocotools reports progress on stdout; keep evaluation output out of the run's logs.
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth.createIndex()
        detections.createIndex()
        evaluator = COCOeval(ground_truth, detections, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    return {name: (math.nan if stats[i] < 0 else float(stats[i])) for name, i in _STATS.items()}
