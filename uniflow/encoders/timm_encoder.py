"""timm backend: ViT-family models (SigLIP2, DINOv2, DFN-CLIP, EVA, plain ViTs)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from uniflow.encoders.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderAdapter,
    EncoderFeatures,
    disable_stochastic_layers,
    require_file,
)
from uniflow.tokenizer.config import EncoderConfig


def create_timm_vit(cfg: EncoderConfig, num_classes: int = 0) -> torch.nn.Module:
    """Build a timm ViT from ``cfg`` through timm's own loading path.

    A local ``checkpoint`` goes through ``pretrained_cfg_overlay`` so timm's checkpoint filters run
    (position-embedding resampling, original-repo key remapping) exactly as for hub weights.
    """
    import timm

    kwargs = dict(cfg.kwargs)
    kwargs.setdefault("img_size", cfg.image_size)
    # Any multiple of the patch size is accepted; position embeddings are resampled on the fly.
    kwargs.setdefault("dynamic_img_size", True)
    kwargs["num_classes"] = num_classes
    if cfg.checkpoint:
        path = require_file(cfg.checkpoint)
        return timm.create_model(
            cfg.name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs
        )
    return timm.create_model(cfg.name, pretrained=cfg.pretrained, **kwargs)


def timm_normalization(cfg: EncoderConfig, model: torch.nn.Module) -> tuple[Sequence[float], Sequence[float]]:
    """(mean, std) of a timm model's input: the config's if set, else its pretrained config's, else ImageNet's."""
    pretrained = getattr(model, "pretrained_cfg", {}) or {}
    return cfg.mean or pretrained.get("mean", IMAGENET_MEAN), cfg.std or pretrained.get("std", IMAGENET_STD)


class TimmEncoder(EncoderAdapter):
    def __init__(self, cfg: EncoderConfig, model: torch.nn.Module | None = None):
        super().__init__()
        self.model = model if model is not None else create_timm_vit(cfg)
        if not hasattr(self.model, "forward_intermediates") or not hasattr(self.model, "blocks"):
            raise ValueError(f"timm model {cfg.name!r} is not a ViT with per-block outputs")
        # Only block outputs are read: drop the final norm, pooling and head so that no parameter
        # goes unused in the backward pass (DDP/FSDP would otherwise need find_unused_parameters).
        self.model.prune_intermediate_layers(len(self.model.blocks), prune_norm=True, prune_head=True)
        # Whatever kwargs asked for (drop_path_rate, proj_drop_rate, attn_drop_rate, patch_drop_rate):
        # timm's attention reads its dropout rate from the module, so zeroing the modules is enough.
        disable_stochastic_layers(self.model, f"timm {cfg.name}")
        patch = self.model.patch_embed.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        self.width = int(self.model.embed_dim)
        self.depth = len(self.model.blocks)
        self.num_prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 0))
        self.set_normalization(*timm_normalization(cfg, self.model))

    def forward(self, pixels: torch.Tensor) -> EncoderFeatures:
        grid = self.grid_for(*pixels.shape[-2:])
        has_prefix = self.num_prefix_tokens > 0
        outputs = self.model.forward_intermediates(
            pixels, indices=self.depth, return_prefix_tokens=has_prefix, norm=False,
            output_fmt="NLC", intermediates_only=True,
        )  # fmt: skip
        if not has_prefix:  # timm returns bare tensors when there is nothing to split off
            return EncoderFeatures(layers=list(outputs), prefix=[t[:, :0] for t in outputs], grid=grid)
        layers = [tokens for tokens, _ in outputs]
        prefix = [p for _, p in outputs]
        return EncoderFeatures(layers=layers, prefix=prefix, grid=grid)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)
