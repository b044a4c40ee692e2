"""Config sections of the tokenizer: encoder, distillation, flow, decoder (the ``tokenizer:`` section).

Choice lists live here once; the code that implements them imports them from here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from uniflow.config import choice, load_config, read_yaml
from uniflow.flow import SAMPLERS

ENCODER_BACKENDS = ("timm", "open_clip", "hf")
# adaptive: w_l from beta and alpha_l; hierarchical: w_l = l/L normalised; uniform: 1/L;
# last: only the last layer; none: no distillation term.
DISTILL_MODES = ("adaptive", "hierarchical", "uniform", "last", "none")
# How the adaptive weights are normalised (paper text; framework figure; a later author repository).
DISTILL_NORMALIZATIONS = ("paper", "figure", "softmax_product")


@dataclass
class EncoderConfig:
    """Which pretrained vision encoder is adapted (student) and kept frozen (teacher)."""

    backend: str = choice("timm", *ENCODER_BACKENDS)
    # timm model name, open_clip model name, or Hugging Face model id / local directory.
    name: str = "vit_tiny_patch16_224"
    # Fetch weights from the backend's hub (timm/open_clip pretrained tag, HF id); needs a network.
    pretrained: bool = False
    # open_clip pretrained tag (e.g. "dfn2b"); ignored by the other backends.
    pretrained_tag: str | None = None
    # Local weights file (.pth/.pt/.bin/.safetensors) loaded after the model is built.
    checkpoint: str | None = None
    # Resolution the encoder is built for (position embeddings are resampled by the backend).
    image_size: int = 224
    # Extra constructor arguments, e.g. timm's embed_dim/depth/num_heads/patch_size for a custom ViT.
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Input normalisation override; None uses the encoder's own (from its pretrained config).
    mean: list[float] | None = None
    std: list[float] | None = None
    # Hugging Face remote code (InternViT).
    trust_remote_code: bool = False


@dataclass
class DistillConfig:
    """Layer-wise adaptive self-distillation (UniFlow paper, arXiv 2510.10575; uniflow/tokenizer/distill.py)."""

    mode: str = choice("adaptive", *DISTILL_MODES)
    beta: float = 2.0
    normalization: str = choice("paper", *DISTILL_NORMALIZATIONS)
    # 1-based subset of encoder blocks to distil; None = all blocks.
    layers: list[int] | None = None


@dataclass
class FlowConfig:
    """Rectified flow used by the patch-wise decoder (and shared with the generators)."""

    # t ~ sigmoid(N(mean, std)) with probability logit_normal_prob, else U(0, 1); per patch.
    logit_normal_prob: float = 0.9
    logit_normal_mean: float = 0.0
    logit_normal_std: float = 1.0
    sampler: str = choice("euler", *SAMPLERS)
    steps: int = 1


@dataclass
class DecoderConfig:
    """Latent projection, up projection, global transformer blocks and patch-wise flow head."""

    latent_dim: int = 64
    # 2x2 pixel-unshuffle of the student tokens before the latent projection (paper's ratio-28).
    token_merge: bool = False
    width: int = 1024
    gtb_depth: int = 6
    gtb_heads: int = 16
    mlp_ratio: float = 4.0
    head_depth: int = 12
    head_width: int = 1024
    # The released model's layout: a second learnable position embedding (sin-cos initialised) is
    # added to the GTB output, and there is no final LayerNorm after the GTB. The opposite of both
    # is the plain ViT-stack layout (final LayerNorm, one position embedding).
    post_gtb_pos_embed: bool = True
    gtb_final_norm: bool = False


@dataclass
class TokenizerConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    # Training resolution (images are resized to it by the data pipeline).
    image_size: int = 448
    lambda_distill: float = 1.0
    lambda_flow: float = 1.0
    # Optional LPIPS term on the one-step estimate x_hat = x_t - t * v (off in the paper).
    lambda_lpips: float = 0.0
    lpips_weights: str | None = None
    # Activation checkpointing of encoder blocks and GTB (trades compute for memory).
    grad_checkpointing: bool = False


def load_tokenizer_config(
    source: str | Path | Mapping[str, Any], overrides: Sequence[str] = ()
) -> TokenizerConfig:
    """A :class:`TokenizerConfig` from a run config (with a ``tokenizer`` section) or a bare tokenizer config.

    Overrides are relative to the file's top level (``tokenizer.decoder.width=...`` for a run config).
    """
    raw = read_yaml(Path(source)) if isinstance(source, (str, Path)) else OmegaConf.create(dict(source))
    if "tokenizer" in raw:
        return load_config(raw, overrides).tokenizer
    return load_config(raw, overrides, TokenizerConfig)
