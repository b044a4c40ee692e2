"""Which tokenizer export the suite evaluates, and where its results go (through the run directory).

Training writes ``<output_dir>/<name>/tokenizer/`` (a ``save_pretrained`` directory); evaluation
reads it and writes ``eval/`` beside it (:class:`uniflow.run_dir.RunDirectory`).
"""

from __future__ import annotations

from pathlib import Path

from uniflow.run_dir import RunDirectory
from uniflow.stages import RunConfig
from uniflow.tokenizer.model import WEIGHTS_FILE

TOKENIZER_EXPORT = "tokenizer"


def latest_tokenizer(output_dir: str | Path) -> Path:
    """The most recently written ``<output_dir>/*/tokenizer/`` (by its weights file's modification time)."""
    try:
        return RunDirectory.latest_with(output_dir, TOKENIZER_EXPORT, WEIGHTS_FILE)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"no trained tokenizer to evaluate: {err}; run `make train-tokenizer` first"
        ) from None


def configured_tokenizer(cfg: RunConfig) -> Path:
    """``eval.tokenizer`` (a run directory or a tokenizer directory), else the run's own export; it must exist."""
    reference = cfg.eval.tokenizer or RunDirectory.of(cfg.output_dir, cfg.name).root
    try:
        return RunDirectory.find_export(reference, TOKENIZER_EXPORT, WEIGHTS_FILE)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"no trained tokenizer: {err}; run `make train-tokenizer` with this config first, or point "
            "eval.tokenizer at a run or tokenizer directory"
        ) from None


def run_of(tokenizer_dir: Path) -> RunDirectory:
    """The run a tokenizer export belongs to (its parent in the run layout, else the directory itself)."""
    return RunDirectory(tokenizer_dir.parent if tokenizer_dir.name == TOKENIZER_EXPORT else tokenizer_dir)
