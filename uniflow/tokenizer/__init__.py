"""The UniFlow tokenizer: self-distilled unified encoder + patch-wise pixel flow decoder."""

from uniflow.tokenizer.distill import SelfDistillationLoss, adaptive_layer_weights, layer_alignment
from uniflow.tokenizer.model import UniFlowTokenizer, check_images

__all__ = [
    "SelfDistillationLoss",
    "UniFlowTokenizer",
    "adaptive_layer_weights",
    "check_images",
    "layer_alignment",
]
