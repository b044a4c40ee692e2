"""Where the tokenizer to evaluate is, and where its results go (the training run directory layout).

Training writes ``<output_dir>/<name>/`` with ``config.yaml``, ``checkpoints/``, ``tokenizer/`` (a
``save_pretrained`` directory) and ``metrics.json``; evaluation reads ``tokenizer/`` and writes
``eval/`` beside it.
"""

from __future__ import annotations

from pathlib import Path

from uniflow.config import RunConfig
from uniflow.tokenizer.model import WEIGHTS_FILE

TOKENIZER_DIR = "tokenizer"
EVAL_DIR = "eval"


def latest_tokenizer(output_dir: str | Path) -> Path:
    """The most recently written ``<output_dir>/*/tokenizer/`` (by its weights file's modification time)."""
    pattern = Path(output_dir) / "*" / TOKENIZER_DIR / WEIGHTS_FILE
    found = sorted(
        Path(output_dir).glob(f"*/{TOKENIZER_DIR}/{WEIGHTS_FILE}"), key=lambda p: p.stat().st_mtime
    )
    if not found:
        raise FileNotFoundError(
            f"no trained tokenizer to evaluate: nothing matches {pattern.absolute()}; "
            "run `make train-tokenizer` first"
        )
    return found[-1].parent


def configured_tokenizer(cfg: RunConfig) -> Path:
    """``eval.tokenizer``, else the run's own ``<output_dir>/<name>/tokenizer``; it must exist."""
    directory = (
        Path(cfg.eval.tokenizer) if cfg.eval.tokenizer else Path(cfg.output_dir) / cfg.name / TOKENIZER_DIR
    )
    if not (directory / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(
            f"no trained tokenizer at {(directory / WEIGHTS_FILE).absolute()}; run `make train-tokenizer` "
            "with this config first, or point eval.tokenizer at a tokenizer directory"
        )
    return directory


def run_dir_of(tokenizer_dir: Path) -> Path:
    """The run directory a tokenizer belongs to (its parent in the training layout, else itself)."""
    return tokenizer_dir.parent if tokenizer_dir.name == TOKENIZER_DIR else tokenizer_dir


def default_output_dir(tokenizer_dir: Path) -> Path:
    return run_dir_of(tokenizer_dir) / EVAL_DIR
