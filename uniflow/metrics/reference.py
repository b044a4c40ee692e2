"""Reference statistics for FID, image sources for them, and ADM-format sample files.

Comparable numbers need the same reference images prepared the same way: validation images
centre-cropped to 256 as ADM (guided-diffusion) prepares them, 2048-d pool features of the FID
Inception, statistics saved with their provenance. ADM's published reference ``.npz`` files
(``mu``/``sigma``, possibly beside an ``arr_0`` image batch) load directly for gFID, and samples
can be written in ADM's format so that its TensorFlow evaluator can check our numbers.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image

from uniflow.data.folder import scan_image_folder, try_load_rgb
from uniflow.io import atomic_write
from uniflow.metrics.fid import FeatureStats
from uniflow.metrics.inception import FEATURE_DIM, InceptionFeatureExtractor, to_uint8

ADM_CROP = "adm_center_crop_arr"


def adm_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """ADM's ``center_crop_arr``: uint8 H x W x 3 array of side ``size``.

    Halve with a BOX filter while the short side is at least twice the target (cheap, alias-free
    downscaling of large photos), then one BICUBIC resize so the short side equals ``size``, then
    the central square. Reimplemented from its description; the step order is what makes our
    reference statistics match ADM's.
    """
    image = image.convert("RGB")
    while min(image.size) >= 2 * size:
        image = image.resize((image.width // 2, image.height // 2), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), resample=Image.BICUBIC)
    pixels = np.asarray(image)
    top = (pixels.shape[0] - size) // 2
    left = (pixels.shape[1] - size) // 2
    return pixels[top : top + size, left : left + size]


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted for a reproducible order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    samples, _ = scan_image_folder(folder, "flat")
    return sorted(path for path, _ in samples)


class FolderBatches:
    """uint8 B x 3 x H x W batches from an image folder; ADM centre crop when ``crop_size`` is set.

    Without a crop, images keep their size (Inception resizes each one to 299 itself) and a batch
    is cut short wherever the size changes, since only equal sizes stack. Files that cannot be
    decoded (truncated, corrupt, not an image) are skipped and listed in :attr:`skipped`, as the
    training folder backend skips them; a folder with no readable image fails. The files are listed
    at construction, so a missing folder fails before any work.
    """

    def __init__(self, folder: str | Path, batch_size: int = 50, crop_size: int | None = None) -> None:
        self.folder, self.batch_size, self.crop_size = Path(folder), batch_size, crop_size
        self.files = list_images(folder)
        self.skipped: list[Path] = []

    def __iter__(self) -> Iterator[torch.Tensor]:
        self.skipped = []
        pending: list[np.ndarray] = []
        for path in self.files:
            image = try_load_rgb(path)
            if image is None:
                self.skipped.append(path)
                continue
            pixels = adm_center_crop(image, self.crop_size) if self.crop_size else np.asarray(image)
            if pending and (len(pending) == self.batch_size or pending[0].shape != pixels.shape):
                yield _stack_hwc(pending)
                pending = []
            pending.append(pixels)
        if pending:
            yield _stack_hwc(pending)
        elif len(self.skipped) == len(self.files):
            raise ValueError(
                f"no readable image under {self.folder}: all {len(self.files)} files failed to decode"
            )

    def provenance(self) -> dict[str, Any]:
        """The skipped files for a statistics file's ``meta`` (after iterating)."""
        return {
            "unreadable_skipped": len(self.skipped),
            "unreadable_files": [str(p) for p in self.skipped[:20]],
        }


def _stack_hwc(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def read_npy_header(stream: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order, dtype) of a ``.npy`` stream; the stream is left at the first data byte."""
    version = np.lib.format.read_magic(stream)
    fmt = np.lib.format
    read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    return read_header(stream)


def iter_npz_batches(path: str | Path, key: str = "arr_0", batch_size: int = 50) -> Iterator[torch.Tensor]:
    """uint8 B x 3 x H x W batches of an N x H x W x 3 array inside an ``.npz``, read incrementally.

    ``np.load`` would inflate all of it (10 GB for 50k samples at 256 px); reading the zip member
    as a stream keeps one batch in memory.
    """
    with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as stream:
        shape, fortran_order, dtype = read_npy_header(stream)
        if fortran_order or dtype != np.uint8 or len(shape) != 4 or shape[3] != 3:
            raise ValueError(
                f"{path}:{key} must be a C-ordered uint8 N x H x W x 3 array, got {dtype} {shape}"
                f"{' (Fortran order)' if fortran_order else ''}"
            )
        row_bytes = int(np.prod(shape[1:]))
        for start in range(0, shape[0], batch_size):
            rows = min(batch_size, shape[0] - start)
            chunk = np.frombuffer(stream.read(rows * row_bytes), dtype=np.uint8).reshape(rows, *shape[1:])
            yield _stack_hwc(list(chunk))


@dataclass
class ReferenceStats:
    """FID reference statistics with their provenance (``meta``: extractor hash, preprocessing, count, ...)."""

    mu: np.ndarray
    sigma: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """A short name for result tables: the source and the first hex digits of the statistics' hash."""
        digest = hashlib.sha256(self.mu.tobytes() + self.sigma.tobytes()).hexdigest()[:12]
        return f"{self.meta.get('source_name', 'stats')}@{digest}"

    @classmethod
    def from_feature_stats(
        cls, stats: FeatureStats, extractor: InceptionFeatureExtractor, meta: dict[str, Any]
    ) -> ReferenceStats:
        """Statistics of streamed features, with the count and the extractor's provenance added to ``meta``."""
        meta = {
            **meta,
            "count": stats.count,
            "extractor": "torch-fidelity inception-v3-compat, 2048-d pool features",
            "extractor_weights_sha256": extractor.weights.sha256,
            "extractor_weights_source": extractor.weights.source,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        return cls(stats.mean(), stats.cov(), meta)

    def save(self, path: str | Path) -> Path:
        meta = np.array(json.dumps(self.meta, sort_keys=True))
        return atomic_write(path, lambda f: np.savez(f, mu=self.mu, sigma=self.sigma, meta=meta))

    @classmethod
    def load(
        cls,
        path: str | Path,
        extractor: InceptionFeatureExtractor | None = None,
        batch_size: int = 50,
    ) -> ReferenceStats:
        """Our files, ADM's reference batches (``mu``/``sigma``), or a bare ADM sample file (``arr_0``).

        A file with only ``arr_0`` is turned into statistics with ``extractor`` (built when None).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"reference statistics not found: {path}")
        with np.load(path) as data:
            keys = set(data.files)
            if {"mu", "sigma"} <= keys:
                meta = json.loads(str(data["meta"])) if "meta" in keys else {"origin": "ADM reference batch"}
                meta.setdefault("file", str(path))
                return cls(data["mu"].astype(np.float64), data["sigma"].astype(np.float64), meta)
        if "arr_0" not in keys:
            raise ValueError(f"{path} has neither mu/sigma nor arr_0 (keys: {sorted(keys)})")
        extractor = extractor if extractor is not None else InceptionFeatureExtractor()
        return compute_reference_stats(
            iter_npz_batches(path, "arr_0", batch_size),
            extractor,
            {"source": str(path), "source_name": path.stem, "preprocessing": "ADM npz arr_0 as stored"},
        )


@torch.no_grad()
def compute_reference_stats(
    batches: Iterable[torch.Tensor], extractor: InceptionFeatureExtractor, meta: dict[str, Any] | None = None
) -> ReferenceStats:
    """Statistics of uint8 (or [0, 1] float) image batches, with the extractor's provenance added."""
    stats = FeatureStats(FEATURE_DIM, device=next(extractor.parameters()).device)
    device = stats.sum.device
    for batch in batches:
        stats.update(extractor(batch.to(device)))
    return ReferenceStats.from_feature_stats(stats, extractor, meta or {})


def build_reference_stats(
    source: str | Path,
    out: str | Path,
    extractor: InceptionFeatureExtractor | None = None,
    size: int | None = 256,
    batch_size: int = 50,
) -> ReferenceStats:
    """Statistics of an image folder (ADM centre crop to ``size``; None keeps sizes) or an ADM ``.npz``, saved to ``out``."""
    source = Path(source)
    if source.is_file() and source.suffix == ".npz":
        extractor = extractor if extractor is not None else InceptionFeatureExtractor()
        stats = ReferenceStats.load(source, extractor, batch_size)
    else:
        preprocessing = f"{ADM_CROP}({size}) from image files" if size else "image files as stored"
        batches = FolderBatches(source, batch_size, crop_size=size)  # lists the files: fails early
        extractor = extractor if extractor is not None else InceptionFeatureExtractor()
        stats = compute_reference_stats(
            batches,
            extractor,
            {"source": str(source), "source_name": source.stem, "preprocessing": preprocessing},
        )
        stats.meta.update(batches.provenance())
    stats.save(out)
    return stats


class AdmNpzWriter:
    """Writes ``total`` uint8 images as ADM's sample format, ``arr_0`` N x H x W x 3, in shuffled order.

    Each incoming image goes to a slot drawn from a seeded permutation of a memory-mapped array on
    disk, so 50k samples at 256 px (10 GB) are shuffled without holding them in memory; ``close``
    stores the array in the ``.npz`` zip (zip64, uncompressed, like ``np.savez``).
    """

    def __init__(self, path: str | Path, total: int, size: int, seed: int = 0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.total = total
        fd, self._tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".npy")
        os.close(fd)
        self._array = np.lib.format.open_memmap(
            self._tmp, mode="w+", dtype=np.uint8, shape=(total, size, size, 3)
        )
        self._slots = np.random.default_rng(seed).permutation(total)
        self.written = 0

    def add(self, images: torch.Tensor) -> None:
        """uint8 or [0, 1] float B x 3 x H x W."""
        batch = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
        if batch.shape[1:] != self._array.shape[1:]:
            raise ValueError(f"expected images {self._array.shape[1:3]}, got {batch.shape[1:3]}")
        if self.written + len(batch) > self.total:
            raise ValueError(f"{self.path}: more than the announced {self.total} images")
        slots = np.sort(self._slots[self.written : self.written + len(batch)])
        order = np.argsort(self._slots[self.written : self.written + len(batch)])
        self._array[slots] = batch[order]
        self.written += len(batch)

    def close(self) -> Path:
        if self.written != self.total:
            raise ValueError(f"{self.path}: {self.written} images written, {self.total} announced")
        self._array.flush()
        del self._array

        def write_zip(f) -> None:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
                archive.write(self._tmp, "arr_0.npy")

        try:
            return atomic_write(self.path, write_zip)
        finally:
            os.unlink(self._tmp)


def write_adm_npz(path: str | Path, images: torch.Tensor | np.ndarray, seed: int = 0) -> Path:
    """One-shot ADM sample file from B x 3 x H x W (uint8 or [0, 1] float) or uint8 N x H x W x 3."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise ValueError(f"expected uint8 N x H x W x 3, got {images.dtype} {images.shape}")
        images = torch.from_numpy(images).permute(0, 3, 1, 2)
    if images.shape[2] != images.shape[3]:
        raise ValueError(f"ADM sample files hold square images, got {tuple(images.shape[2:])}")
    writer = AdmNpzWriter(path, images.shape[0], images.shape[2], seed)
    writer.add(images)
    return writer.close()
