import json
import os
import subprocess
import sys

# Never wait on hub retries in tests: this project must work offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "experiments" / "tokenizer" / "tiny.yaml"
# CI sets it (`.ci/run`): a test whose optional dependency is missing (FFCV, the FID Inception
# weights) then fails instead of skipping, so a broken build cannot pass by testing less.
REQUIRE_ALL = "UNIFLOW_REQUIRE_ALL"

# The one tiny tokenizer of the test suite, as overrides of tiny.yaml: 32 px, patch 8 (a 4 x 4
# grid), a 2-block ViT of width 32, an 8-channel latent and a decoder of width 32 (one GTB block,
# one head block). Every test that builds, trains or saves a tokenizer starts from it and overrides
# only what it is about.
TINY_TOKENIZER = [
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
]

# A training run of that tokenizer, small enough for a few seconds on one CPU thread: 8-image
# batches, 5 steps per epoch (so checkpoints at step 3 are mid-epoch), deterministic kernels.
MICRO_RUN = [
    "name=micro",
    *TINY_TOKENIZER,
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
    "pretrain.name=micro_encoder",
    "pretrain.max_steps=3",
    "pretrain.num_train=32",
    "pretrain.batch_size=8",
    "summary.photo_crops=8",
    "summary.probe_train=16",
    "summary.probe_test=16",
    "summary.batch_size=16",
]


def require_or_skip(available: bool, reason: str) -> None:
    """Skip the calling test when ``available`` is false, or fail it when ``UNIFLOW_REQUIRE_ALL=1``."""
    if available:
        return
    if os.environ.get(REQUIRE_ALL) == "1":
        pytest.fail(f"{reason}; {REQUIRE_ALL}=1 makes this a failure, not a skip", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def requires_ffcv() -> None:
    """Use in tests of the FFCV backend (``pytest.mark.usefixtures("requires_ffcv")``)."""
    from uniflow.data.ffcv import ffcv_available

    require_or_skip(ffcv_available(), "ffcv is not installed (built from source; see uniflow/data/ffcv.py)")


@pytest.fixture(scope="session")
def inception_weights():
    """The FID Inception weights found offline (:class:`uniflow.metrics.InceptionWeights`)."""
    from uniflow.metrics.inception import InceptionWeightsNotFound, resolve_inception_weights

    try:
        return resolve_inception_weights(allow_download=False)
    except InceptionWeightsNotFound as err:
        require_or_skip(False, f"no FID Inception weights here: {err}")


@pytest.fixture
def tiny_config_path() -> Path:
    return TINY


@pytest.fixture
def micro_decoder() -> dict:
    """The smallest decoder section of a tokenizer config, for tests about the encoder side."""
    return {"latent_dim": 4, "width": 32, "gtb_depth": 1, "gtb_heads": 2, "head_depth": 1, "head_width": 16}


@pytest.fixture
def tiny_tokenizer():
    """The tiny tokenizer (:data:`TINY_TOKENIZER`), untrained, with its teacher."""
    from uniflow import UniFlowTokenizer

    return UniFlowTokenizer.from_config(TINY, TINY_TOKENIZER)


@pytest.fixture
def micro_run(tmp_path):
    """``(config path, overrides)`` of a tiny training run writing under ``tmp_path``."""
    return TINY, [*MICRO_RUN, f"output_dir={tmp_path / 'runs'}"]


@pytest.fixture(scope="session")
def micro_run_base():
    """``(config path, overrides)`` of the micro run without an output directory (for wider scopes)."""
    return TINY, list(MICRO_RUN)


@pytest.fixture
def one_thread():
    """Run the test on one intra-op thread (restored after): for files of many tiny tensor ops, where
    thread hand-offs on a busy 2-core machine cost more than the arithmetic (0.15 s vs 0.3 ms for a
    100 x 8 product; the detection probe's small convolutions 2.4 s vs 0.15 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_two_processes(
    config: Path, overrides: list[str], output: Path, strategy: str, weights: str
) -> dict:
    """Run ``uniflow train`` on two CPU processes (gloo) with ``strategy``; the run's metrics, exported
    ``weights`` (a file in the run directory) and last checkpoint. Lightning starts the second process
    itself by re-running the command, exactly as on a workstation."""
    args = [*overrides, f"output_dir={output}", f"name={strategy}", "trainer.accelerator=cpu",
            "trainer.devices=2", f"trainer.strategy={strategy}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    # A file, not a pipe: Lightning's second process inherits the output and may outlive rank 0's.
    log = output / f"{strategy}.log"
    with log.open("w") as out:
        code = subprocess.run(
            [sys.executable, "-m", "uniflow", "train", str(config), *args],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=240,
        ).returncode  # fmt: skip
    assert code == 0, log.read_text()[-4000:]
    run_dir = output / strategy
    return {
        "metrics": json.loads((run_dir / "metrics.json").read_text()),
        "weights": load_file(str(run_dir / weights)),
        "last": torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu"),
    }
