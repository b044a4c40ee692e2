"""Parameter counts of a tokenizer config, built on the meta device (no memory, no weights)."""

from __future__ import annotations

import dataclasses

import torch

from uniflow.tokenizer.config import TokenizerConfig
from uniflow.tokenizer.decoder import PixelFlowDecoder
from uniflow.tokenizer.latent import LatentProjection


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(
    cfg: TokenizerConfig, encoder_width: int | None = None, patch_size: int | None = None
) -> dict:
    """Counts of the encoder (student), latent projection, up projection, GTB and flow head.

    The encoder is built without weights; where that needs a network (a hub config), pass its
    ``encoder_width`` and ``patch_size`` and the encoder count is reported as None.
    """
    encoder_params = None
    with torch.device("meta"):
        if encoder_width is None or patch_size is None:
            from uniflow.encoders import build_encoder

            enc_cfg = dataclasses.replace(cfg.encoder, pretrained=False, checkpoint=None)
            encoder = build_encoder(enc_cfg)
            encoder_width, patch_size, encoder_params = encoder.width, encoder.patch_size, _count(encoder)
        merge = 2 if cfg.decoder.token_merge else 1
        side = -(-cfg.image_size // (patch_size * merge)) * merge
        latent = LatentProjection(encoder_width, cfg.decoder.latent_dim, cfg.decoder.token_merge)
        decoder = PixelFlowDecoder(cfg.decoder, cfg.flow, patch_size, (side, side))
    parts = {
        "encoder": encoder_params,
        "latent_projection": _count(latent),
        "up_projection": _count(decoder.up),
        "gtb": _count(decoder.gtb),
        "flow_head": _count(decoder.head),
    }
    parts["decoder_total"] = sum(parts[k] for k in ("latent_projection", "up_projection", "gtb", "flow_head"))
    return parts
