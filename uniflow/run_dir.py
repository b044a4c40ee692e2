"""The layout of a run directory, in one place: training, evaluation and every stage read it from here.

``<output_dir>/<name>/``::

    config.yaml              the resolved configuration of the run (every key, precision resolved)
    checkpoints/last.ckpt    Lightning checkpoint, written atomically (``resume=auto`` continues from it)
    checkpoints/stepNNNNNNN.ckpt   periodic checkpoints, with trainer.keep_step_checkpoints
    hpc_ckpt_N.ckpt          what Lightning writes on SLURM's requeue signal
    tensorboard/             TensorBoard event files
    <export>                 the stage's product: ``tokenizer/`` (a from_pretrained directory),
                             ``encoder.safetensors`` (encoder pretraining), ...
    metrics.json             the end-of-run summary, timings, precision and per-rank fingerprints
    reconstructions.png      the tokenizer stage's held-out reconstruction grid
    eval/                    results.json and results.md of ``python -m uniflow eval``

A downstream stage names its upstream by a run directory or by the export itself
(``tokenizer: runs/embedded`` or ``tokenizer: runs/embedded/tokenizer``); :meth:`RunDirectory.find_export`
accepts both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
TENSORBOARD_DIR = "tensorboard"
METRICS_FILE = "metrics.json"
EVAL_DIR = "eval"


@dataclass(frozen=True)
class RunDirectory:
    """One run's directory and the paths of everything in it."""

    root: Path

    @classmethod
    def of(cls, output_dir: str | Path, name: str) -> RunDirectory:
        return cls(Path(output_dir) / name)

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINT_DIR

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / LAST_CHECKPOINT

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD_DIR

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def eval(self) -> Path:
        return self.root / EVAL_DIR

    def export(self, name: str) -> Path:
        """Where the stage whose export is called ``name`` writes its product."""
        return self.root / name

    def latest_checkpoint(self) -> Path | None:
        """``last.ckpt`` or a newer checkpoint Lightning wrote on SLURM's requeue signal; None if neither."""
        found = [p for p in (self.last_checkpoint, *self.root.glob("hpc_ckpt_*.ckpt")) if p.is_file()]
        return max(found, key=lambda p: p.stat().st_mtime) if found else None

    @staticmethod
    def find_export(reference: str | Path, name: str, marker: str | None = None) -> Path:
        """The export ``name`` of the run ``reference`` names: a run directory or the export itself.

        ``marker`` is a file that a complete export contains (for a directory export); a missing
        export raises FileNotFoundError naming every path tried.
        """
        ref = Path(reference)
        candidates = [ref / name, ref] if ref.name != name else [ref]
        for path in candidates:
            if path.exists() and (marker is None or (path / marker).is_file()):
                return path
        tried = ", ".join(str((p / marker) if marker else p) for p in candidates)
        raise FileNotFoundError(f"no {name!r} export for {reference}: tried {tried}")

    @staticmethod
    def latest_with(output_dir: str | Path, name: str, marker: str | None = None) -> Path:
        """The most recently written export ``name`` under ``output_dir/*/`` (by modification time)."""
        pattern = f"*/{name}/{marker}" if marker else f"*/{name}"
        found = sorted(Path(output_dir).glob(pattern), key=lambda p: p.stat().st_mtime)
        if not found:
            raise FileNotFoundError(
                f"no {name!r} export: nothing matches {(Path(output_dir) / pattern).absolute()}"
            )
        return found[-1].parent if marker else found[-1]
