import os

# Never wait on hub retries in tests: this project must work offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "experiments" / "tokenizer" / "tiny.yaml"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_config_path() -> Path:
    return TINY


@pytest.fixture
def tiny_tokenizer():
    from uniflow import UniFlowTokenizer

    # Smaller than tiny.yaml so that every test stays well under a second.
    return UniFlowTokenizer.from_config(
        TINY,
        [
            "tokenizer.encoder.kwargs.depth=3",
            "tokenizer.encoder.kwargs.embed_dim=48",
            "tokenizer.decoder.width=64",
            "tokenizer.decoder.head_width=64",
            "tokenizer.decoder.head_depth=2",
            "tokenizer.decoder.latent_dim=8",
        ],
    )
