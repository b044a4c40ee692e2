"""Generators on the tokenizer's latents: a flow transformer, an autoregressive model, latent statistics,
the latent cache they train on, and a trained generator with its statistics and tokenizer (LatentGenerator)."""

from uniflow.generation.ar import ARFLOW_SIZES, ARFlow, generation_masks, unmasking_schedule
from uniflow.generation.dit import FLOWDIT_SIZES, FlowDiT
from uniflow.generation.latent_cache import LatentShards, encode_latents
from uniflow.generation.latent_stats import LatentNormalizer
from uniflow.generation.pretrained import LatentGenerator

__all__ = [
    "ARFLOW_SIZES",
    "FLOWDIT_SIZES",
    "ARFlow",
    "FlowDiT",
    "LatentGenerator",
    "LatentNormalizer",
    "LatentShards",
    "encode_latents",
    "generation_masks",
    "unmasking_schedule",
]
