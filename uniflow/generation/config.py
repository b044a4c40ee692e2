"""The ``generator:`` config section: which model learns which tokenizer's latents, and how it samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from uniflow.config import choice
from uniflow.flow import SAMPLERS

MODELS = ("flowdit", "arflow")
CFG_SCHEDULES = ("linear", "constant")


@dataclass
class SamplingConfig:
    """How samples are drawn: the TensorBoard grids, the end-of-run summary, ``sample`` and ``eval`` use it."""

    # FlowDiT: ODE steps of the latent flow; ARFlow: steps of each token's flow head.
    steps: int = 50
    sampler: str = choice("euler", *SAMPLERS)
    # Classifier-free guidance scale; 1 is the conditional model alone.
    cfg_scale: float = 1.5
    # FlowDiT: guide only for flow times in [lo, hi] (null: everywhere).
    guidance_interval: list[float] | None = None
    # ARFlow: unmasking iterations of the random order (raster order generates one token per step),
    # guidance that grows with the generated fraction (linear, MAR) or stays constant, and the
    # temperature of each token's starting noise.
    iterations: int = 64
    cfg_schedule: str = choice("linear", *CFG_SCHEDULES)
    temperature: float = 1.0
    # Euler steps of the tokenizer's pixel decoder; null keeps the tokenizer's own.
    decode_steps: int | None = None
    # Samples per forward pass.
    batch_size: int = 64


@dataclass
class GeneratorSummaryConfig:
    """The end-of-run evaluation on held-out embedded scenes (``summary.enabled`` with embedded latents).

    Frechet distances (FID Inception) to ``num_samples`` held-out scenes of samples without and with
    guidance and of two baselines (latents from a per-channel Gaussian fitted to the real latents;
    the tokenizer's reconstructions), and the accuracy of the encoder-pretraining classifier on the
    guided samples per requested class.
    """

    enabled: bool = True
    num_samples: int = 512
    # The pretrained classifier (encoder.safetensors with its head); null: the tokenizer run's
    # tokenizer.encoder.checkpoint.
    classifier: str | None = None
    batch_size: int = 128


@dataclass
class GeneratorConfig:
    """A class-conditional generator on the latents of the tokenizer run ``tokenizer``."""

    model: str = choice("flowdit", *MODELS)
    # A named size (FlowDiT: S, B, L, XL and their -DH wide-head variants; ARFlow: B, L, H) or null
    # for the constructor's defaults; ``kwargs`` overrides single arguments of either
    # (depth, width, heads, patch_size, order, class_dropout, ...; see uniflow/generation/dit.py, ar.py).
    size: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    # The upstream tokenizer: a run directory or its export (runs/embedded or runs/embedded/tokenizer).
    tokenizer: str = "runs/embedded"
    # The config that trains that tokenizer when it is missing (null: a missing tokenizer is an error).
    tokenizer_config: str | None = None
    # The latent cache (python -m uniflow data encode-latents); encoded from ``source`` when it has no
    # manifest yet. Null: <tokenizer run>/latents/<source as a name>.
    latents: str | None = None
    # What the cache encodes: an image folder (ImageFolder classes) or embedded:N (labelled scenes).
    source: str = "embedded:8192"
    # Side of the images the cache encodes (null: the tokenizer's own): a 448 px tokenizer encodes
    # ImageNet at 256 px for the 256 px benchmark; samples are decoded and cropped to this side.
    image_size: int | None = None
    # Encode the horizontal flips too, and train on a random one of the two views.
    flip: bool = False
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
