"""Building blocks shared by the tokenizer decoder and the generators."""

from uniflow.nn.adaln import AdaLNMLPBlock, FinalAdaLNLayer, modulate
from uniflow.nn.dit_blocks import AdaLNZeroBlock, Attention, LayerKVCache, PreNormBlock, SwiGLU
from uniflow.nn.embeddings import TimestepEmbedder, sincos_2d_position_embedding
from uniflow.nn.rope import apply_rope, rope_2d_table
from uniflow.nn.transformer import TransformerStack

__all__ = [
    "AdaLNMLPBlock",
    "AdaLNZeroBlock",
    "Attention",
    "FinalAdaLNLayer",
    "LayerKVCache",
    "PreNormBlock",
    "SwiGLU",
    "TimestepEmbedder",
    "TransformerStack",
    "apply_rope",
    "modulate",
    "rope_2d_table",
    "sincos_2d_position_embedding",
]
