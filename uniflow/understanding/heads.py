"""Probe heads on frozen ViT tokens (``B x N x D`` patch tokens, row-major over an ``h x w`` grid).

A probe measures what the features already hold, so every head is as small as the task allows:
linear maps for classification, segmentation and depth, and for detection the thinnest adapter that
torchvision's Faster R-CNN accepts (a simple feature pyramid). Callers pass detached tokens: the
heads never reach into the encoder.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import Conv2dNormActivation

from uniflow.metrics.dense import IGNORE_INDEX

# Depth loss: scale-invariant log error (Eigen et al. 2014) with the variance focus of BTS (Lee et al.
# 2019). lambda = 1 would make it blind to a global scale error, which RMSE and AbsRel do punish.
SILOG_LAMBDA = 0.85


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """``B x N x D`` patch tokens -> ``B x D x h x w`` map; a square grid is assumed when ``grid`` is None."""
    if tokens.dim() != 3:
        raise ValueError(f"expected patch tokens B x N x D, got shape {tuple(tokens.shape)}")
    b, n, d = tokens.shape
    if grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{n} tokens do not form a square grid; pass grid=(h, w)")
        grid = (side, side)
    if grid[0] * grid[1] != n:
        raise ValueError(f"grid {grid} does not hold {n} tokens")
    return tokens.transpose(1, 2).reshape(b, d, *grid)


def _probe_linear(in_features: int, out_features: int) -> nn.Linear:
    # Small weights and zero bias, as in the linear-probe protocols of MAE (He et al. 2022) and DINO
    # (Caron et al. 2021): the probe starts from near-uniform outputs whatever the feature scale.
    linear = nn.Linear(in_features, out_features)
    nn.init.trunc_normal_(linear.weight, std=0.01)
    nn.init.zeros_(linear.bias)
    return linear


def _token_norm(dim: int, norm: bool) -> nn.Module:
    # Parameter-free LayerNorm instead of BatchNorm: per-token standardisation gives encoders with very
    # different feature scales one learning rate, without batch statistics that depend on batch size,
    # DDP synchronisation or train/eval mode. With no affine part the probe stays linear in the
    # standardised features.
    return nn.LayerNorm(dim, elementwise_affine=False) if norm else nn.Identity()


class LinearClassifierHead(nn.Module):
    """Mean-pooled patch tokens (or already pooled ``B x D`` features) -> class logits ``B x C``."""

    def __init__(self, dim: int, num_classes: int, norm: bool = False) -> None:
        super().__init__()
        self.norm = _token_norm(dim, norm)
        self.linear = _probe_linear(dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() == 3:
            features = features.mean(1)
        if features.dim() != 2:
            raise ValueError(
                f"expected B x N x D tokens or B x D features, got shape {tuple(features.shape)}"
            )
        return self.linear(self.norm(features))

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels)


class LinearSegmentationHead(nn.Module):
    """Patch tokens -> per-class logits on the token grid -> bilinear upsampling to the label map."""

    def __init__(self, dim: int, num_classes: int, norm: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.norm = _token_norm(dim, norm)
        self.linear = _probe_linear(dim, num_classes)

    def forward(
        self, tokens: torch.Tensor, size: tuple[int, int], grid: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """``B x N x D`` tokens -> logits ``B x C x size[0] x size[1]``."""
        logits = tokens_to_map(self.linear(self.norm(tokens)), grid)
        # Upsampling logits (not labels) keeps the head linear and lets boundaries fall between tokens.
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
        return F.cross_entropy(logits, labels.long(), ignore_index=ignore_index)


class LinearDepthHead(nn.Module):
    """Patch tokens -> log-depth on the token grid -> bilinear upsampling; depth = exp(output).

    Why log-depth regression rather than depth bins: one linear output per token keeps the probe a
    linear read-out with no bin count or depth range to tune; depth is positive by construction; and
    an error in log-depth is a relative error, which is what AbsRel and the delta thresholds score,
    so near and far pixels weigh alike. (Binned classification, as DINOv2's depth probe uses, scores
    somewhat higher but measures the head's design as much as the features.)
    """

    def __init__(self, dim: int, norm: bool = False, init_depth: float = 1.0) -> None:
        super().__init__()
        if init_depth <= 0:
            raise ValueError(f"init_depth must be positive (metres), got {init_depth}")
        self.norm = _token_norm(dim, norm)
        self.linear = _probe_linear(dim, 1)
        # Start at a plausible depth everywhere, so early gradients fit structure rather than scale.
        nn.init.constant_(self.linear.bias, math.log(init_depth))

    def forward(
        self, tokens: torch.Tensor, size: tuple[int, int], grid: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """``B x N x D`` tokens -> log-depth ``B x 1 x size[0] x size[1]`` (natural log of metres)."""
        log_depth = tokens_to_map(self.linear(self.norm(tokens)), grid)
        return F.interpolate(log_depth, size=size, mode="bilinear", align_corners=False)

    @staticmethod
    def to_depth(log_depth: torch.Tensor) -> torch.Tensor:
        return log_depth.exp()

    @staticmethod
    def loss(
        log_depth: torch.Tensor,
        depth: torch.Tensor,
        min_depth: float = 1e-3,
        max_depth: float | None = None,
        variance_focus: float = SILOG_LAMBDA,
    ) -> torch.Tensor:
        """Scale-invariant log loss sqrt(mean g^2 - lambda (mean g)^2), g = log d - log d*, pooled over
        the batch's valid pixels (finite ground truth above ``min_depth``, below ``max_depth`` if set)."""
        if log_depth.shape != depth.shape:
            raise ValueError(f"log-depth {tuple(log_depth.shape)} and depth {tuple(depth.shape)} differ")
        valid = torch.isfinite(depth) & (depth > min_depth)
        if max_depth is not None:
            valid &= depth < max_depth
        if not valid.any():
            # Keeps the graph (and DDP's gradient hooks) intact on a batch without ground truth.
            return log_depth.sum() * 0.0
        g = log_depth[valid] - depth[valid].log()
        # The floor keeps the square root differentiable when a prediction is exact.
        return (g.square().mean() - variance_focus * g.mean().square()).clamp_min(1e-12).sqrt()


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a ``B x C x H x W`` map (ViTDet's norm in its pyramid)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid (Li, Mao, Girshick and He, "Exploring Plain Vision Transformer
    Backbones for Object Detection", ECCV 2022) from a single stride-16 map.

    Scales 4, 2, 1 and 1/2 (two stride-2 deconvolutions, one, identity, 2 x 2 max pooling), each
    projected to ``out_channels`` by a 1 x 1 and a 3 x 3 convolution with LayerNorm, give strides
    4, 8, 16 and 32 (keys "0".."3"); a stride-64 "pool" level subsampled from the last (as FPN's
    extra level does) completes the five levels torchvision's default RPN anchors expect.
    """

    def __init__(self, dim: int, out_channels: int = 256) -> None:
        super().__init__()
        half, quarter = max(dim // 2, 1), max(dim // 4, 1)
        self.scales = nn.ModuleList(
            [
                nn.Sequential(
                    nn.ConvTranspose2d(dim, half, 2, stride=2),
                    LayerNorm2d(half),
                    nn.GELU(),
                    nn.ConvTranspose2d(half, quarter, 2, stride=2),
                ),
                nn.ConvTranspose2d(dim, half, 2, stride=2),
                nn.Identity(),
                nn.MaxPool2d(2),
            ]
        )
        self.projections = nn.ModuleList(
            nn.Sequential(
                Conv2dNormActivation(
                    channels, out_channels, 1, norm_layer=LayerNorm2d, activation_layer=None
                ),
                Conv2dNormActivation(
                    out_channels, out_channels, 3, norm_layer=LayerNorm2d, activation_layer=None
                ),
            )
            for channels in (quarter, half, dim, dim)
        )
        self.out_channels = out_channels  # what torchvision's detectors read off a backbone

    def forward(self, feature_map: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        levels = OrderedDict(
            (str(i), project(scale(feature_map)))
            for i, (scale, project) in enumerate(zip(self.scales, self.projections, strict=True))
        )
        levels["pool"] = F.max_pool2d(levels["3"], kernel_size=1, stride=2)
        return levels


class DetectionProbe(nn.Module):
    """Frozen patch tokens -> :class:`SimpleFeaturePyramid` -> torchvision Faster R-CNN (RPN + RoI heads).

    The Faster R-CNN is torchvision's own, built with its defaults (anchors 32-512 over five levels,
    RoIAlign 7 x 7 on levels "0".."3", two-layer box head) and randomly initialised; only its image
    transform is bypassed, since the images were already resized for the encoder and only their
    tokens arrive here. Boxes are xyxy pixels in that encoder input frame; labels are 1..num_classes
    (0 is torchvision's background class).

    torchvision's RoIAlign infers each level's stride as a power of two, so a token map of another
    stride (patch 14) is resampled to stride 16 first.
    """

    BASE_STRIDE = 16

    def __init__(
        self,
        dim: int,
        num_classes: int,
        out_channels: int = 256,
        representation_size: int = 1024,
        **detector_kwargs,
    ) -> None:
        """``detector_kwargs`` go to torchvision's ``FasterRCNN`` (RPN / RoI sampling and NMS settings)."""
        super().__init__()
        pyramid = SimpleFeaturePyramid(dim, out_channels)
        roi_size = 7  # torchvision's default MultiScaleRoIAlign output
        self.detector = FasterRCNN(
            pyramid,
            box_head=TwoMLPHead(out_channels * roi_size**2, representation_size),
            box_predictor=FastRCNNPredictor(representation_size, num_classes + 1),
            **detector_kwargs,
        )

    @staticmethod
    def _training_targets(targets: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        """Boxes the detector may learn from: not crowd regions (COCO marks them for evaluation to
        ignore, not as objects) and with positive width and height (torchvision's box coder divides by
        them)."""
        cleaned = []
        for target in targets:
            boxes = target["boxes"].as_subclass(torch.Tensor).float().reshape(-1, 4)
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            if "iscrowd" in target:
                keep &= target["iscrowd"].reshape(-1) == 0
            cleaned.append({"boxes": boxes[keep], "labels": target["labels"].reshape(-1).long()[keep]})
        return cleaned

    def forward(
        self,
        tokens: torch.Tensor,
        image_size: tuple[int, int],
        targets: list[dict[str, torch.Tensor]] | None = None,
        grid: tuple[int, int] | None = None,
        original_sizes: list[tuple[int, int]] | None = None,
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """Training: the four Faster R-CNN losses (needs ``targets``). Evaluation: per image
        ``{boxes, scores, labels}``, in ``image_size`` pixels or rescaled to ``original_sizes``."""
        feature_map = tokens_to_map(tokens, grid)
        height, width = image_size
        stride16 = (max(1, round(height / self.BASE_STRIDE)), max(1, round(width / self.BASE_STRIDE)))
        if feature_map.shape[-2:] != stride16:
            feature_map = F.interpolate(feature_map, size=stride16, mode="bilinear", align_corners=False)
        features = self.detector.backbone(feature_map)
        batch = feature_map.shape[0]
        # The RPN reads only the padded image shape off ImageList.tensors: a zero-channel stand-in
        # carries it without holding any pixels.
        images = ImageList(feature_map.new_empty(batch, 0, height, width), [(height, width)] * batch)
        if self.training:
            if targets is None or len(targets) != batch:
                raise ValueError(f"training needs one target dict per image ({batch}), got {targets!r:.80}")
            targets = self._training_targets(targets)
        proposals, rpn_losses = self.detector.rpn(images, features, targets)
        detections, roi_losses = self.detector.roi_heads(features, proposals, images.image_sizes, targets)
        if self.training:
            return {**rpn_losses, **roi_losses}
        if original_sizes is not None:
            for detection, original in zip(detections, original_sizes, strict=True):
                detection["boxes"] = resize_boxes(detection["boxes"], (height, width), original)
        return detections
