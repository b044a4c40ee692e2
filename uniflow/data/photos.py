"""The real photographs shipped inside scikit-image and scikit-learn, split into train/val regions.

They are the only natural images available without a download, so they serve both as backgrounds of
the embedded scenes and as the plain crops on which reconstruction (PSNR/SSIM) is measured.

Split rule (disjoint regions): in every photo the rightmost ``VAL_FRACTION`` of the columns is the
validation region and the rest is the training region. Every photo contributes to both splits (ten
photos are too few to hold whole photos out), but no validation pixel is ever seen in training.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

# Colour photographs bundled with the packages (no network). Synthetic images (colorwheel, logo)
# and greyscale ones are left out: the reconstruction target is natural colour content.
SKIMAGE_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "stereo_motorcycle",
)
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
VAL_FRACTION = 0.3
SPLITS = ("train", "val")


def _load_skimage(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    if isinstance(image, tuple):  # stereo_motorcycle returns (left, right, disparity)
        image = image[0]
    return image


def _load_sklearn() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    by_name = {path.rsplit("/", 1)[-1]: img for path, img in zip(bunch.filenames, bunch.images)}
    return [by_name[name] for name in SKLEARN_PHOTOS]


@functools.lru_cache(maxsize=1)
def all_photos() -> tuple[np.ndarray, ...]:
    """Every photo as uint8 H x W x 3, loaded once per process."""
    photos = [_load_skimage(name) for name in SKIMAGE_PHOTOS] + _load_sklearn()
    return tuple(np.ascontiguousarray(p[..., :3], dtype=np.uint8) for p in photos)


@functools.lru_cache(maxsize=2)
def photo_regions(split: str) -> tuple[Image.Image, ...]:
    """The ``split`` region of every photo, as PIL images (resizing from PIL is the fast path)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    regions = []
    for photo in all_photos():
        cut = round(photo.shape[1] * (1.0 - VAL_FRACTION))
        region = photo[:, :cut] if split == "train" else photo[:, cut:]
        regions.append(Image.fromarray(np.ascontiguousarray(region)))
    return tuple(regions)


def random_crop(
    rng: np.random.Generator, split: str, size: int, side_range: tuple[float, float] = (0.15, 0.3)
) -> Image.Image:
    """A square crop of a random photo's ``split`` region, resized to ``size`` x ``size``.

    The crop side is a fraction of the whole photo's shorter side, so train and val crops have the
    same scale distribution even though the val region is narrower.
    """
    regions = photo_regions(split)
    photos = all_photos()
    k = int(rng.integers(len(regions)))
    region = regions[k]
    full_short = min(photos[k].shape[:2])
    side = round(rng.uniform(*side_range) * full_short)
    side = max(1, min(side, region.width, region.height))
    x0 = int(rng.integers(region.width - side + 1))
    y0 = int(rng.integers(region.height - side + 1))
    return region.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
