"""Atomic checkpoint writes: a kill during a save never leaves a corrupt ``last.ckpt``.

Lightning's own ``TorchCheckpointIO`` serialises into memory and then writes through an fsspec
transaction whose temporary file lives in the system temp directory; when that is another file
system (a node-local /tmp, the run on shared storage) the final move is a copy, and a kill during
it truncates the checkpoint. Here the temporary file sits next to the target, is flushed to disk,
and replaces the target with one ``os.replace`` (atomic on POSIX): a reader sees the old file or the
new one, never a partial one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

# Temporary files are hidden and do not end in .ckpt, so nothing that globs checkpoints picks them up.
PARTIAL_SUFFIX = ".partial"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a same-directory temporary file, flush it to disk and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX)
    try:
        # mkstemp creates the file private (0600); give it the permissions a plain open() would.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    # Persist the rename itself, so a power loss right after the save keeps the new file.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)``, atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))


def remove_stale_partials(directory: str | Path) -> list[Path]:
    """Delete temporary files left by a process killed mid-save; returns what was removed."""
    directory = Path(directory)
    stale = sorted(directory.glob(f".*{PARTIAL_SUFFIX}")) if directory.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic (remote URLs keep Lightning's path)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)
        return None
