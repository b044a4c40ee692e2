"""Atomic checkpoint writes: a kill during a save never leaves a corrupt ``last.ckpt``.

Lightning's own ``TorchCheckpointIO`` serialises into memory and then writes through an fsspec
transaction whose temporary file lives in the system temp directory; when that is another file
system (a node-local /tmp, the run on shared storage) the final move is a copy, and a kill during
it truncates the checkpoint. Here the temporary file sits next to the target, is flushed to disk,
and replaces the target with one ``os.replace`` (atomic on POSIX): a reader sees the old file or the
new one, never a partial one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from uniflow.io import atomic_write


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)``, atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic (remote URLs keep Lightning's path)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)
        return None
