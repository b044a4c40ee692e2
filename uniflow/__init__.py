"""UniFlow: a unified pixel flow tokenizer for visual understanding and generation."""

from __future__ import annotations

from pathlib import Path

from uniflow.tokenizer import UniFlowTokenizer

__version__ = "0.1.0"


def load_tokenizer(directory: str | Path, map_location: str = "cpu") -> UniFlowTokenizer:
    """Load a trained tokenizer directory (``config.yaml`` + ``model.safetensors``)."""
    return UniFlowTokenizer.from_pretrained(directory, map_location=map_location)


__all__ = ["UniFlowTokenizer", "__version__", "load_tokenizer"]
