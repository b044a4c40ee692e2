"""open_clip backend: the visual tower of a CLIP model (DFN-CLIP, OpenAI CLIP, SigLIP via timm trunks)."""

from __future__ import annotations

import torch

from uniflow.encoders.base import EncoderAdapter, EncoderFeatures, disable_stochastic_layers, require_file
from uniflow.encoders.timm_encoder import TimmEncoder
from uniflow.tokenizer.config import EncoderConfig


class OpenClipEncoder(EncoderAdapter):
    """Wraps ``model.visual``; the text tower is dropped after loading to free its memory."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        import open_clip

        if cfg.checkpoint:
            pretrained = str(require_file(cfg.checkpoint))
        elif cfg.pretrained:
            pretrained = cfg.pretrained_tag
        else:
            pretrained = None
        clip = open_clip.create_model(
            cfg.name, pretrained=pretrained, force_image_size=cfg.image_size, **dict(cfg.kwargs)
        )
        visual = clip.visual
        preprocess = getattr(visual, "preprocess_cfg", {}) or {}
        self.set_normalization(
            cfg.mean or preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN),
            cfg.std or preprocess.get("std", open_clip.OPENAI_DATASET_STD),
        )
        trunk = getattr(visual, "trunk", None)
        if trunk is not None:  # timm-backed tower (e.g. SigLIP): reuse the timm adapter on its trunk
            self.visual = TimmEncoder(cfg, model=trunk)
            self.image_size = None
        elif hasattr(visual, "forward_intermediates") and hasattr(visual, "transformer"):
            # Block outputs only: drop ln_post/projection so no parameter goes unused under DDP.
            visual.prune_intermediate_layers(
                len(visual.transformer.resblocks), prune_norm=True, prune_head=True
            )
            # The model config's patch dropout (a timm trunk's drop path is handled by TimmEncoder).
            disable_stochastic_layers(visual, f"open_clip {cfg.name}")
            self.visual = visual
            self.image_size = tuple(visual.image_size) if hasattr(visual, "image_size") else None
        else:
            raise ValueError(f"open_clip model {cfg.name!r} has no ViT visual tower with per-block outputs")
        inner = self.visual
        if isinstance(inner, TimmEncoder):
            self.patch_size, self.width, self.depth = inner.patch_size, inner.width, inner.depth
            self.num_prefix_tokens = inner.num_prefix_tokens
        else:
            self.patch_size = int(inner.patch_size[0])
            self.width = int(inner.transformer.width)
            self.depth = len(inner.transformer.resblocks)
            self.num_prefix_tokens = 1

    def forward(self, pixels: torch.Tensor) -> EncoderFeatures:
        if isinstance(self.visual, TimmEncoder):
            return self.visual(pixels)
        grid = self.grid_for(*pixels.shape[-2:])
        if self.image_size is not None and tuple(pixels.shape[-2:]) != self.image_size:
            raise ValueError(
                f"open_clip visual towers have a fixed grid: built for {self.image_size}, got "
                f"{tuple(pixels.shape[-2:])}; set encoder.image_size to the input resolution"
            )
        out = self.visual.forward_intermediates(
            pixels, indices=self.depth, intermediates_only=True, output_fmt="NLC", output_extra_tokens=True
        )
        return EncoderFeatures(
            layers=list(out["image_intermediates"]), prefix=list(out["image_intermediates_prefix"]), grid=grid
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
