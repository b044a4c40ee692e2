"""Probe heads: output shapes, gradients stop at detached tokens, the detection probe in both modes."""

import math

import pytest
import torch
from torch import nn

from uniflow.understanding.heads import (
    DetectionProbe,
    LinearClassifierHead,
    LinearDepthHead,
    LinearSegmentationHead,
    SimpleFeaturePyramid,
    tokens_to_map,
)

DIM = 12


# Tiny tensors: on a busy 2-core machine intra-op thread hand-offs cost more than the arithmetic.
pytestmark = pytest.mark.usefixtures("one_thread")


def _tokens(batch=2, grid=(4, 4), dim=DIM):
    return torch.randn(batch, grid[0] * grid[1], dim)


def test_tokens_to_map_is_row_major_and_checks_the_grid():
    tokens = torch.arange(6.0).reshape(1, 6, 1)
    assert tokens_to_map(tokens, (2, 3))[0, 0].tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError, match="square"):
        tokens_to_map(tokens)
    with pytest.raises(ValueError, match="does not hold"):
        tokens_to_map(tokens, (2, 2))


@pytest.mark.parametrize("norm", [False, True])
def test_classifier_on_tokens_and_pooled_features(norm):
    head = LinearClassifierHead(DIM, 5, norm=norm)
    tokens = _tokens()
    logits = head(tokens)
    assert logits.shape == (2, 5)
    assert torch.allclose(head(tokens.mean(1)), logits)
    assert head.loss(logits, torch.tensor([0, 4])).ndim == 0


def test_segmentation_logits_upsampled_to_the_label_map():
    head = LinearSegmentationHead(DIM, 3)
    logits = head(_tokens(grid=(2, 4)), size=(16, 32), grid=(2, 4))
    assert logits.shape == (2, 3, 16, 32)
    labels = torch.randint(0, 3, (2, 16, 32))
    labels[:, :4] = 255
    loss = head.loss(logits, labels)
    assert torch.isfinite(loss)
    assert head.loss(logits, torch.full_like(labels, 255)).isnan()  # every pixel ignored


def test_depth_head_predicts_log_depth_and_its_loss_skips_invalid_pixels():
    head = LinearDepthHead(DIM, init_depth=2.5)
    head.linear.weight.data.zero_()
    log_depth = head(_tokens(), size=(8, 8))
    assert log_depth.shape == (2, 1, 8, 8)
    assert torch.allclose(head.to_depth(log_depth), torch.full_like(log_depth, 2.5))
    depth = torch.full((2, 1, 8, 8), 2.5)
    depth[0, 0, 0] = 0.0  # holes in the ground truth
    depth[1, 0, 0] = math.nan
    assert float(head.loss(log_depth, depth).detach()) == pytest.approx(0.0, abs=1e-5)
    # Twice too deep everywhere: g = ln 2, loss = sqrt(1 - 0.85) ln 2
    assert float(head.loss(log_depth, depth / 2).detach()) == pytest.approx(
        math.sqrt(0.15) * math.log(2), rel=1e-5
    )
    no_truth = head.loss(log_depth, torch.zeros_like(depth))
    assert no_truth == 0 and no_truth.requires_grad


@pytest.mark.parametrize(
    "make_head, call",
    [
        (lambda: LinearClassifierHead(DIM, 3), lambda h, t: h(t).sum()),
        (lambda: LinearSegmentationHead(DIM, 3), lambda h, t: h(t, (8, 8)).sum()),
        (lambda: LinearDepthHead(DIM), lambda h, t: h(t, (8, 8)).sum()),
    ],
)
def test_gradients_reach_the_head_only_when_tokens_are_detached(make_head, call):
    encoder, head = nn.Linear(3, DIM), make_head()
    pixels = torch.randn(2, 16, 3)
    call(head, encoder(pixels).detach()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert all(p.grad is None for p in encoder.parameters())
    call(head, encoder(pixels)).backward()  # the contrast: attached tokens would train the encoder
    assert all(p.grad is not None for p in encoder.parameters())


def test_simple_feature_pyramid_levels_and_strides():
    pyramid = SimpleFeaturePyramid(DIM, out_channels=8)
    levels = pyramid(torch.randn(1, DIM, 4, 4))  # a stride-16 map of a 64 x 64 image
    assert list(levels) == ["0", "1", "2", "3", "pool"]
    assert [tuple(v.shape[-2:]) for v in levels.values()] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert all(v.shape[1] == 8 for v in levels.values())


def _tiny_probe():
    # Small sampling budgets keep the RPN and RoI heads cheap on CPU.
    return DetectionProbe(
        DIM,
        num_classes=3,
        out_channels=8,
        representation_size=16,
        rpn_pre_nms_top_n_train=64,
        rpn_post_nms_top_n_train=32,
        rpn_pre_nms_top_n_test=64,
        rpn_post_nms_top_n_test=32,
        rpn_batch_size_per_image=32,
        box_batch_size_per_image=16,
        box_detections_per_img=10,
    )


def test_detection_probe_trains_and_detects_on_a_two_image_batch():
    probe = _tiny_probe()
    encoder = nn.Linear(3, DIM)
    # 64 x 64 images, patch 8: an 8 x 8 grid, resampled to the stride-16 map the pyramid expects.
    tokens = encoder(torch.randn(2, 64, 3)).detach()
    targets = [
        {
            "boxes": torch.tensor([[4.0, 4.0, 40.0, 36.0], [10.0, 10.0, 10.0, 20.0], [0.0, 0.0, 64.0, 64.0]]),
            "labels": torch.tensor([1, 2, 3]),
            "iscrowd": torch.tensor([0, 0, 1]),  # the zero-width box and the crowd region are not learned
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # no object
    ]
    probe.train()
    losses = probe(tokens, (64, 64), targets)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    sum(losses.values()).backward()
    assert probe.detector.backbone.projections[0][0][0].weight.grad is not None
    assert all(p.grad is None for p in encoder.parameters())
    with pytest.raises(ValueError, match="one target dict per image"):
        probe(tokens, (64, 64))

    probe.eval()
    with torch.no_grad():
        detections = probe(tokens, (64, 64), original_sizes=[(128, 128), (64, 32)])
    assert len(detections) == 2
    for detection, (height, width) in zip(detections, [(128, 128), (64, 32)]):
        assert set(detection) == {"boxes", "scores", "labels"}
        boxes = detection["boxes"]
        assert boxes.shape[1] == 4 and len(boxes) <= 10
        assert (boxes[:, 0::2] <= width).all() and (boxes[:, 1::2] <= height).all()
        assert ((detection["labels"] >= 1) & (detection["labels"] <= 3)).all()
