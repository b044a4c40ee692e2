"""The ``data:`` config section: which images a run reads and how (embedded, folder, FFCV)."""

from __future__ import annotations

from dataclasses import dataclass, field

from uniflow.config import choice

BACKENDS = ("embedded", "folder", "ffcv")
# folder backend: "classes" (ImageFolder subfolders), "flat" (no labels), or "auto" (by layout).
FOLDER_MODES = ("auto", "classes", "flat")
# The folder/ffcv training crops (uniflow/data/folder.py and uniflow/data/ffcv.py implement them).
TRAIN_CROPS = ("resize_random_crop", "random_resized_crop")


@dataclass
class DataConfig:
    backend: str = choice("embedded", *BACKENDS)
    # folder: ImageFolder roots; ffcv: .beton files.
    train_path: str | None = None
    val_path: str | None = None
    image_size: int = 64
    batch_size: int = 64
    num_workers: int = 2
    # embedded backend: number of generated training / validation samples.
    num_train: int = 4096
    num_val: int = 512
    seed: int = 0
    # embedded backend: share of samples that are plain real-photo crops (label -1) rather than
    # labelled shape scenes; 0 for supervised classification, >0 so a tokenizer sees natural images.
    photo_fraction: float = 0.5
    # embedded backend: render each split once into memory (uint8; 50 MB per 4096 images at 64 px).
    cache: bool = True
    # folder/ffcv training crop (evaluation always takes the centre square). resize_random_crop, the
    # authors' recipe: shorter side resized to image_size (bicubic), a random image_size square, flip.
    # random_resized_crop: RandomResizedCrop (area in crop_scale, aspect 3/4..4/3), flip.
    train_crop: str = choice("random_resized_crop", *TRAIN_CROPS)
    # random_resized_crop's area range.
    crop_scale: list[float] = field(default_factory=lambda: [0.35, 1.0])
    # folder backend: "classes" (ImageFolder subfolders), "flat" (no labels), or "auto" (by layout).
    folder_mode: str = choice("auto", *FOLDER_MODES)
    # ffcv backend: keep the file in the OS page cache (else read per batch, QUASI_RANDOM order).
    ffcv_os_cache: bool = True
