"""Building blocks shared by the tokenizer decoder and the generators."""

from uniflow.nn.adaln import AdaLNMLPBlock, FinalAdaLNLayer, modulate
from uniflow.nn.embeddings import TimestepEmbedder, sincos_2d_position_embedding
from uniflow.nn.transformer import TransformerStack

__all__ = [
    "AdaLNMLPBlock",
    "FinalAdaLNLayer",
    "TimestepEmbedder",
    "TransformerStack",
    "modulate",
    "sincos_2d_position_embedding",
]
