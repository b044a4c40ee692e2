"""Content-addressed cache of the originals' FID statistics for evaluation sets that never change.

An embedded set is identified by the hash of its pixels, so its Inception statistics can be reused
by every later evaluation (halving the Inception work) without any risk of pairing them with
different images or a different Inception: the key holds both hashes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from uniflow.metrics import ReferenceStats
from uniflow.metrics.inception import cache_dir


def cache_path(benchmark: str, fingerprint: str, extractor_sha256: str) -> Path:
    key = hashlib.sha256(f"{benchmark}\n{fingerprint}\n{extractor_sha256}".encode()).hexdigest()[:16]
    return cache_dir() / "eval-reference" / f"{benchmark}-{key}.npz"


def load(path: Path) -> ReferenceStats | None:
    return ReferenceStats.load(path) if path.is_file() else None


def save(stats: ReferenceStats, path: Path) -> None:
    stats.save(path)  # atomic: a concurrent reader never sees half a file
