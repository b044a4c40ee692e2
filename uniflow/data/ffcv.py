"""FFCV backend: write an image folder tree to a ``.beton`` file, and load it per rank.

FFCV is optional and built from source (it links OpenCV and libjpeg-turbo); see :data:`INSTALL_HINT`.

Sample order. Training uses a random order with FFCV's own ``distributed=True`` sharding when the
world size is above one (FFCV pads the last shard there, harmless for training). Evaluation must
visit every sample exactly once across ranks, which FFCV's distributed sequential order does not
(it pads with duplicates), so each rank gets an explicit disjoint index set, ``rank::world_size``,
through ``indices=``; shards then differ in length by at most one sample and none is duplicated.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from uniflow.data.config import TRAIN_CROPS
from uniflow.data.folder import load_rgb, scan_image_folder, try_load_rgb
from uniflow.io import atomic_path

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "the ffcv backend needs the 'ffcv' package, built from source: "
    "apt-get install -y libopencv-dev libturbojpeg0-dev pkg-config && pip install ffcv "
    "(or use data.backend=folder)"
)


def _require_ffcv() -> None:
    try:
        import ffcv  # noqa: F401
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT}; import failed with: {err}") from err


def ffcv_available() -> bool:
    try:
        _require_ffcv()
    except ImportError:
        return False
    return True


@dataclass
class FFCVWriteReport:
    path: Path
    written: int
    skipped: list[Path]
    classes: list[str]


def _readable(args: tuple[str, int]) -> bool:
    return try_load_rgb(*args) is not None


class _WriterSource:
    """The indexable view FFCV's writer reads: (uint8 H x W x 3, label)."""

    def __init__(self, samples: list[tuple[Path, int]], max_side: int):
        self.samples, self.max_side = samples, max_side

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        path, label = self.samples[index]
        # Draft decoding never goes below max_side, so FFCV's own resize still sets the final size.
        return np.asarray(load_rgb(path, self.max_side)), label


def write_ffcv(
    src_folder: str | Path,
    out_path: str | Path,
    max_side: int = 256,
    jpeg_quality: int = 90,
    num_workers: int | None = None,
    mode: str = "auto",
    chunk_size: int = 100,
) -> FFCVWriteReport:
    """Write the image tree ``src_folder`` to the FFCV file ``out_path``.

    Images are resized so their longer side is at most ``max_side`` and stored as JPEG at
    ``jpeg_quality``; labels follow the class subfolders (``mode`` as in
    :func:`uniflow.data.folder.scan_image_folder`). Unreadable files are found first (one decoding pass
    in ``num_workers`` processes), logged, left out and reported; the file is written under a
    temporary name and renamed, so an interrupted write never leaves a truncated ``out_path``.
    """
    _require_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    if max_side < 1:
        raise ValueError(f"max_side must be positive, got {max_side}")
    src_folder, out_path = Path(src_folder), Path(out_path)
    samples, classes = scan_image_folder(src_folder, mode)
    num_workers = num_workers or os.cpu_count() or 1

    jobs = [(str(p), max_side) for p, _ in samples]
    if num_workers > 1:
        with multiprocessing.get_context("fork").Pool(num_workers) as pool:
            ok = pool.map(_readable, jobs, chunksize=64)
    else:
        ok = [_readable(j) for j in jobs]
    good = [s for s, keep in zip(samples, ok) if keep]
    skipped = [p for (p, _), keep in zip(samples, ok) if not keep]
    if not good:
        raise RuntimeError(f"no readable image under {src_folder}: all {len(samples)} files failed to decode")
    if skipped:
        log.warning(
            "write_ffcv: skipped %d unreadable of %d images under %s", len(skipped), len(samples), src_folder
        )

    with atomic_path(out_path) as tmp_path:
        writer = DatasetWriter(
            str(tmp_path),
            {
                "image": RGBImageField(write_mode="jpg", max_resolution=max_side, jpeg_quality=jpeg_quality),
                "label": IntField(),
            },
            num_workers=num_workers,
        )
        writer.from_indexed_dataset(_WriterSource(good, max_side), chunksize=chunk_size)
    return FFCVWriteReport(out_path, len(good), skipped, classes)


def ffcv_num_samples(path: str | Path) -> int:
    _require_ffcv()
    from ffcv.reader import Reader

    return int(Reader(str(_existing(path))).num_samples)


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FFCV file not found: {path}")
    return path


def random_square_crop(height: int, width: int, scale: object, ratio: object) -> tuple[int, int, int, int]:
    """``(top, left, side, side)``: a random square whose side is the image's shorter side.

    Resized to the output size, it is the short-side resize + random crop of ``resize_random_crop``
    done in one resampling step. FFCV compiles it with numba (``scale``/``ratio`` are unused, part of
    FFCV's crop-generator signature).
    """
    side = min(height, width)
    top = int(np.random.uniform(0, height - side + 1))
    left = int(np.random.uniform(0, width - side + 1))
    return top, left, side, side


@functools.cache
def _resize_random_crop_decoder() -> type:
    """FFCV decoder class for ``resize_random_crop`` (built on first use: FFCV is optional)."""
    from ffcv.fields.rgb_image import ResizedCropRGBImageDecoder

    class ResizeRandomCropRGBImageDecoder(ResizedCropRGBImageDecoder):
        def __init__(self, output_size: tuple[int, int]):
            super().__init__(output_size)
            self.scale, self.ratio = None, 1.0

        @property
        def get_crop_generator(self):
            return random_square_crop

    return ResizeRandomCropRGBImageDecoder


def eval_indices(num_samples: int, rank: int, world_size: int) -> np.ndarray:
    """This rank's evaluation samples: disjoint across ranks, together every sample once."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    return np.arange(rank, num_samples, world_size)


class FFCVLoader:
    """An FFCV loader yielding ``{"image": float B x 3 x H x W in [0, 1], "label": int64 B}``.

    ``train``: the ``train_crop`` (``resize_random_crop``: a random square of the shorter side;
    ``random_resized_crop``: area in ``crop_scale``, aspect 3/4..4/3) resized by FFCV (OpenCV's
    INTER_AREA, not the folder backend's bicubic), and a horizontal flip; random order, last partial
    batch dropped. Otherwise: centre square crop resized to ``image_size``, every sample of this rank's
    :func:`eval_indices` once, in order (or of ``indices``, when the caller chose them).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        image_size: int,
        batch_size: int,
        train: bool,
        num_workers: int = 2,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        crop_scale: tuple[float, float] = (0.35, 1.0),
        train_crop: str = "random_resized_crop",
        os_cache: bool = True,
        indices: np.ndarray | None = None,
    ):
        _require_ffcv()
        if train_crop not in TRAIN_CROPS:
            raise ValueError(f"train crop must be one of {list(TRAIN_CROPS)}, got {train_crop!r}")
        from ffcv.fields.basics import IntDecoder
        from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage

        path = _existing(path)
        size = (image_size, image_size)
        if train:
            decoder = (
                _resize_random_crop_decoder()(size)
                if train_crop == "resize_random_crop"
                else RandomResizedCropRGBImageDecoder(size, scale=crop_scale)
            )
            image_pipeline = [decoder, RandomHorizontalFlip(), ToTensor(), ToTorchImage()]
        else:
            image_pipeline = [CenterCropRGBImageDecoder(size, ratio=1.0), ToTensor(), ToTorchImage()]
        pipelines = {"image": image_pipeline, "label": [IntDecoder(), ToTensor(), Squeeze(-1)]}

        distributed = train and world_size > 1
        if train:
            # QUASI_RANDOM reads less from disk when the file is not in the page cache, but FFCV
            # supports it only on a single process.
            quasi = not os_cache and not distributed
            order = OrderOption.QUASI_RANDOM if quasi else OrderOption.RANDOM
            indices = None
        else:
            order = OrderOption.SEQUENTIAL
            if indices is None:
                indices = eval_indices(ffcv_num_samples(path), rank, world_size)
        self.loader = Loader(
            str(path),
            batch_size=batch_size,
            num_workers=num_workers,
            os_cache=os_cache,
            order=order,
            distributed=distributed,
            seed=seed,
            indices=indices,
            pipelines=pipelines,
            drop_last=train,
        )

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass use ``epoch``'s order (FFCV draws each epoch's order from seed and epoch),
        so that a run resumed mid-training continues the order of the uninterrupted one."""
        self.loader.next_epoch = epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for image, label in self.loader:
            # FFCV reuses its output buffers between batches, so the conversion must copy.
            yield {"image": image.float().div_(255.0), "label": label.long()}
