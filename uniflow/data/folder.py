"""Image folders: ImageFolder-style class trees (``root/<class>/**/<image>``) or a flat tree of images.

For users without FFCV. Decoding is PIL with JPEG draft mode (the decoder's DCT scaling), so a 64 px
run does not pay for decoding full-resolution pixels it throws away.

Unreadable or corrupt files are skipped, never fatal: each is logged once and counted in
:attr:`ImageFolderDataset.skipped` (shared by all loader workers); its slot is filled by the next
readable image. A tree with no readable image at all fails at construction, naming the root.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import v2

from uniflow.data.config import FOLDER_MODES, TRAIN_CROPS
from uniflow.data.embedded import NO_LABEL

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# What PIL raises on truncated, corrupt or non-image files.
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _images_under(directory: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if _is_image(f))
    return found


def scan_image_folder(root: str | Path, mode: str = "auto") -> tuple[list[tuple[Path, int]], list[str]]:
    """List ``(path, label)`` samples and class names of an image tree, in a fixed (sorted) order.

    ``classes``: every subdirectory of ``root`` is a class (labels by sorted name). ``flat``: every
    image under ``root``, label ``NO_LABEL``. ``auto``: ``classes`` when ``root`` holds subdirectories
    and no image files of its own, else ``flat``.
    """
    root = Path(root)
    if mode not in FOLDER_MODES:
        raise ValueError(f"folder mode must be one of {FOLDER_MODES}, got {mode!r}")
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"image folder is not a directory: {root}")
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    subdirs = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    if mode == "auto":
        has_own_images = any(e.is_file() and _is_image(e.name) for e in entries)
        mode = "classes" if subdirs and not has_own_images else "flat"
    if mode == "flat":
        samples, classes = [(p, NO_LABEL) for p in _images_under(root)], []
    else:
        samples = [(p, label) for label, c in enumerate(subdirs) for p in _images_under(root / c)]
        classes = subdirs
    if not samples:
        raise FileNotFoundError(
            f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root} (folder mode {mode!r})"
        )
    return samples, classes


def load_rgb(path: str | Path, draft_side: int | None = None) -> Image.Image:
    """Decode ``path`` to RGB; with ``draft_side`` a JPEG may decode smaller, but not below it."""
    with Image.open(path) as img:
        if draft_side is not None and img.format == "JPEG":
            img.draft("RGB", (draft_side, draft_side))
        return img.convert("RGB")


def try_load_rgb(path: str | Path, draft_side: int | None = None) -> Image.Image | None:
    """:func:`load_rgb`, or None for a file that cannot be decoded (truncated, corrupt, not an image),
    logged with the reason. Every reader of image files (training, FFCV writing, FID inputs) skips
    such files this way, and counts them."""
    try:
        return load_rgb(path, draft_side)
    except DECODE_ERRORS as err:
        log.warning("skipping unreadable image %s (%s: %s)", path, type(err).__name__, err)
        return None


def centre_square(img: Image.Image, size: int) -> Image.Image:
    """Evaluation view: the centre square of the shorter side, resized to ``size``."""
    w, h = img.size
    side = min(w, h)
    x0, y0 = (w - side) // 2, (h - side) // 2
    return img.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side))


def train_transform(
    size: int, crop_scale: tuple[float, float], crop: str = "random_resized_crop"
) -> Callable[[Image.Image], torch.Tensor]:
    """The training view: a ``crop`` (see ``data.train_crop``) and a horizontal flip, to float C x H x W in [0, 1].

    ``resize_random_crop`` resizes the shorter side to ``size`` (bicubic) and takes a random
    ``size`` square: no zoom, no aspect change. ``random_resized_crop`` takes a random area in
    ``crop_scale`` with aspect jitter, resized to ``size``.
    """
    if crop not in TRAIN_CROPS:
        raise ValueError(f"train crop must be one of {list(TRAIN_CROPS)}, got {crop!r}")
    if crop == "resize_random_crop":
        geometry = [
            v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.RandomCrop(size),
        ]
    else:
        geometry = [v2.RandomResizedCrop(size, scale=crop_scale, antialias=True)]
    return v2.Compose(
        [*geometry, v2.RandomHorizontalFlip(), v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)]
    )


def eval_transform(size: int) -> Callable[[Image.Image], torch.Tensor]:
    """Centre square crop resized to ``size``, to float C x H x W in [0, 1]."""
    return v2.Compose(
        [
            v2.Lambda(lambda img: centre_square(img, size)),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


class ImageFolderDataset(Dataset):
    """An image tree as ``{"image": float 3 x H x W, "label": int}`` samples.

    ``draft_side`` is the smallest side a JPEG may be decoded at (None: full resolution).
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[Image.Image], torch.Tensor],
        mode: str = "auto",
        draft_side: int | None = None,
    ):
        self.root = Path(root)
        self.samples, self.classes = scan_image_folder(self.root, mode)
        self.transform = transform
        self.draft_side = draft_side
        # Shared memory, so a file found bad in any loader worker is counted once, here.
        self._bad = torch.zeros(len(self.samples), dtype=torch.bool).share_memory_()
        self._first_readable()

    @property
    def skipped(self) -> int:
        """Distinct files found unreadable so far."""
        return int(self._bad.sum())

    def __len__(self) -> int:
        return len(self.samples)

    def _decode(self, index: int) -> Image.Image | None:
        if self._bad[index]:
            return None
        image = try_load_rgb(self.samples[index][0], self.draft_side)
        if image is None:
            self._bad[index] = True
        return image

    def _first_readable(self) -> None:
        for i in range(len(self.samples)):
            if self._decode(i) is not None:
                return
        raise RuntimeError(
            f"no readable image under {self.root}: all {len(self.samples)} files failed to decode"
        )

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        n = len(self.samples)
        for k in range(n):
            i = (index + k) % n
            img = self._decode(i)
            if img is not None:
                return {"image": self.transform(img), "label": self.samples[i][1]}
        raise RuntimeError(f"no readable image left under {self.root}")


def draft_side_for(size: int, crop_scale: tuple[float, float] | None) -> int:
    """Smallest decode side that still gives ``size`` pixels to the smallest crop of the image.

    A random-resized crop's shorter side can be as small as sqrt(min_scale * 3/4) of the image's shorter
    side (area fraction min_scale at aspect ratio 3/4). ``crop_scale`` None: the crop spans the
    shorter side (the evaluation centre crop, the resize-then-random-crop training view).
    """
    if crop_scale is None:
        return size
    return math.ceil(size / math.sqrt(crop_scale[0] * 0.75))
