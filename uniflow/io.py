"""Atomic file writes: a kill mid-write leaves the old file or the new one, never a partial one.

Every file the framework writes that a later step reads (checkpoints, exported tokenizers, reference
statistics, results) goes through here. The temporary file sits next to the target (so the final
rename never crosses file systems), is flushed to disk, and replaces the target with one
``os.replace``, which is atomic on POSIX.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

# Temporary files are hidden and end in this suffix, so nothing that globs outputs picks them up.
PARTIAL_SUFFIX = ".partial"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A same-directory temporary path to write ``path`` through, for writers that need a file name.

    When the block ends normally the temporary file is flushed to disk and renamed over ``path``;
    when it raises (a failed check, a kill signal turned exception) the temporary file is removed
    and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX)
    try:
        # mkstemp creates the file private (0600); give it the permissions a plain open() would.
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        yield Path(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    # Persist the rename itself, so a power loss right after the write keeps the new file.
    _fsync(path.parent)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write`` on a same-directory temporary file, flush it to disk and rename it over ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def remove_stale_partials(directory: str | Path) -> list[Path]:
    """Delete temporary files left by a process killed mid-write; returns what was removed."""
    directory = Path(directory)
    stale = sorted(directory.glob(f".*{PARTIAL_SUFFIX}")) if directory.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
