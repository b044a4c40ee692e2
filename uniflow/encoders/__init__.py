"""Encoder adapters: any pretrained ViT behind one interface (per-block patch tokens + normalisation)."""

from __future__ import annotations

from uniflow.encoders.base import EncoderAdapter, EncoderFeatures, load_state_dict_file, require_file
from uniflow.tokenizer.config import ENCODER_BACKENDS, EncoderConfig


def build_encoder(cfg: EncoderConfig) -> EncoderAdapter:
    """Build the adapter named by ``cfg.backend`` (``timm``, ``open_clip`` or ``hf``)."""
    if cfg.backend == "timm":
        from uniflow.encoders.timm_encoder import TimmEncoder

        return TimmEncoder(cfg)
    if cfg.backend == "open_clip":
        from uniflow.encoders.open_clip_encoder import OpenClipEncoder

        return OpenClipEncoder(cfg)
    if cfg.backend == "hf":
        from uniflow.encoders.hf_encoder import HFEncoder

        return HFEncoder(cfg)
    raise ValueError(f"unknown encoder backend {cfg.backend!r}; choose one of {list(ENCODER_BACKENDS)}")


__all__ = ["EncoderAdapter", "EncoderFeatures", "build_encoder", "load_state_dict_file", "require_file"]
