"""Data-loading throughput: FFCV vs folder backend, same JPEGs, training pipeline, images/s.

    .venv/bin/python benchmarks/speed/bench_data_loading.py [--images 2000] [--workers 2] [--batch-size 64] [--epochs 5]

Writes ``--images`` JPEGs (crops of the real photos shipped with scikit-image/scikit-learn, 300-500 px
sides, quality 90, one class per photo) to a temporary ImageFolder tree, converts it to FFCV files, and
times ``--epochs`` epochs of each backend's training loader (random-resized crop + flip, float output),
alternating between the two so that a burst of load on the machine hits both, after one warm-up epoch
each (worker start-up and FFCV's JIT compilation are not counted). One run; prints a Markdown table of
the median epoch rates and their FFCV/folder ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from uniflow.data.datamodule import UniFlowDataModule
from uniflow.data.ffcv import write_ffcv
from uniflow.data.photos import all_photos

RESOLUTIONS = (64, 256)


def make_jpegs(root: Path, count: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    photos = all_photos()
    for k in range(len(photos)):
        (root / f"photo_{k:02d}").mkdir(parents=True)
    for i in range(count):
        k = int(rng.integers(len(photos)))
        photo = photos[k]
        h, w = photo.shape[:2]
        ch, cw = (int(rng.integers(min(300, s), min(500, s) + 1)) for s in (h, w))
        y0, x0 = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
        Image.fromarray(photo[y0 : y0 + ch, x0 : x0 + cw]).save(
            root / f"photo_{k:02d}" / f"{i:05d}.jpg", quality=90
        )


def epoch_rate(loader) -> float:
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch["label"])
    return n / (time.perf_counter() - start)


def median_rates(loaders: list, epochs: int) -> list[float]:
    """Median images/s of each loader over ``epochs`` epochs, taken in turns after one warm-up each."""
    for loader in loaders:
        epoch_rate(loader)  # warm-up: worker start-up, JIT compilation, page cache
    rates = [[epoch_rate(loader) for loader in loaders] for _ in range(epochs)]
    return [float(np.median(column)) for column in zip(*rates)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per backend")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "jpegs"
        start = time.perf_counter()
        make_jpegs(tree, args.images)
        print(f"wrote {args.images} JPEGs in {time.perf_counter() - start:.1f}s")
        rows = []
        for res in RESOLUTIONS:
            # Twice the output side leaves the smallest random crop enough pixels.
            max_side = 2 * res
            beton = Path(tmp) / f"train_{max_side}.beton"
            start = time.perf_counter()
            write_ffcv(tree, beton, max_side=max_side, jpeg_quality=90, num_workers=args.workers)
            write_s = time.perf_counter() - start
            common = dict(image_size=res, batch_size=args.batch_size, num_workers=args.workers)
            folder = UniFlowDataModule("folder", str(tree), str(tree), **common).make_train_loader()
            ffcv = UniFlowDataModule("ffcv", str(beton), str(beton), **common).make_train_loader()
            folder_rate, ffcv_rate = median_rates([folder, ffcv], args.epochs)
            rows.append((res, max_side, write_s, folder_rate, ffcv_rate))

    print(
        f"\n{args.images} images, {args.workers} workers, batch {args.batch_size}, median of {args.epochs} "
        f"epochs, {os.cpu_count()} CPUs, "
        f"load average at end {os.getloadavg()[0]:.1f}\n"
    )
    print("| resolution | FFCV max side | FFCV write (s) | folder (img/s) | FFCV (img/s) | FFCV / folder |")
    print("|---:|---:|---:|---:|---:|---:|")
    for res, max_side, write_s, folder_rate, ffcv_rate in rows:
        print(
            f"| {res} | {max_side} | {write_s:.1f} | {folder_rate:.0f} | {ffcv_rate:.0f} | {ffcv_rate / folder_rate:.2f}x |"
        )


if __name__ == "__main__":
    main()
