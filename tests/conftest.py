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
def micro_decoder() -> dict:
    """The smallest decoder section of a tokenizer config, for tests about the encoder side."""
    return {"latent_dim": 4, "width": 32, "gtb_depth": 1, "gtb_heads": 2, "head_depth": 1, "head_width": 16}


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


# A training run small enough for a few seconds on one CPU thread: 32 px, a 2-block ViT, 8-image
# batches, 5 steps per epoch (so checkpoints at step 3 are mid-epoch), deterministic kernels.
MICRO_RUN = [
    "name=micro",
    "tokenizer.image_size=32",
    "tokenizer.encoder.image_size=32",
    "tokenizer.encoder.kwargs.embed_dim=32",
    "tokenizer.encoder.kwargs.depth=2",
    "tokenizer.encoder.kwargs.num_heads=2",
    "tokenizer.decoder.latent_dim=8",
    "tokenizer.decoder.width=32",
    "tokenizer.decoder.gtb_depth=1",
    "tokenizer.decoder.gtb_heads=2",
    "tokenizer.decoder.head_depth=1",
    "tokenizer.decoder.head_width=32",
    "data.image_size=32",
    "data.num_train=40",
    "data.num_val=16",
    "data.batch_size=8",
    "optim.warmup_steps=2",
    "trainer.max_steps=6",
    "trainer.val_every_n_steps=3",
    "trainer.checkpoint_every_n_steps=3",
    "trainer.image_every_n_steps=3",
    "trainer.log_every_n_steps=1",
    "trainer.val_batches=1",
    "trainer.num_threads=1",
    "trainer.deterministic=true",
    "teacher.name=micro_teacher",
    "teacher.max_steps=3",
    "teacher.num_train=32",
    "teacher.batch_size=8",
    "summary.photo_crops=8",
    "summary.probe_train=16",
    "summary.probe_test=16",
    "summary.batch_size=16",
]


@pytest.fixture
def micro_run(tmp_path):
    """``(config path, overrides)`` of a tiny training run writing under ``tmp_path``."""
    return TINY, [*MICRO_RUN, f"output_dir={tmp_path / 'runs'}"]


@pytest.fixture(scope="session")
def micro_run_base():
    """``(config path, overrides)`` of the micro run without an output directory (for wider scopes)."""
    return TINY, list(MICRO_RUN)
