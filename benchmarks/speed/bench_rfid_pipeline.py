"""Throughput of the rFID feature pipeline: 256 px batches straight into Inception and float64 statistics.

    .venv/bin/python benchmarks/speed/bench_rfid_pipeline.py [--images 64] [--batch-size 32] [--device cpu] [--no-fidelity]

Prints a Markdown table of images/s. Unless ``--no-fidelity``, the same images also go through the
folder-based route that most tokenizer repositories take (write PNGs, then torch-fidelity's own
dataset and feature loop over the folder, as ``calculate_metrics`` runs it), with the same network
and weights, and the ratio is printed. Both routes stop at the statistics (mu, sigma). Images are real
photos from scikit-image, tiled with small perturbations to reach the requested count.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch_fidelity.datasets import ImagesPathDataset
from torch_fidelity.metric_fid import fid_features_to_statistics
from torch_fidelity.utils import get_featuresdict_from_dataset

from uniflow.metrics import FIDMetric, InceptionFeatureExtractor
from uniflow.metrics.inception import real_photo_batch


def make_images(count: int, size: int = 256) -> torch.Tensor:
    photos = real_photo_batch(size)
    generator = torch.Generator().manual_seed(0)
    reps = -(-count // len(photos))
    tiled = photos.repeat(reps, 1, 1, 1)[:count].float()
    return (tiled + torch.randint(-8, 9, tiled.shape, generator=generator)).clamp(0, 255).byte()


def time_streaming(
    images: torch.Tensor, extractor: InceptionFeatureExtractor, batch_size: int, device: str
) -> float:
    metric = FIDMetric(extractor, device=device)
    metric.update(images[:2].to(device))  # warm-up: first-call allocations, not throughput
    metric = FIDMetric(extractor, device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(images), batch_size):
        metric.update(images[i : i + batch_size].to(device))
    metric.stats.cov()  # the statistics are part of the pipeline
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_folder_route(
    images: torch.Tensor, extractor: InceptionFeatureExtractor, batch_size: int, device: str
) -> float:
    """The folder route up to the same point: write PNGs, read them back through torch-fidelity's
    dataset and feature loop (what ``calculate_metrics`` runs per input), then its statistics.
    The Frechet distance itself is left out of both routes: it costs the same either way."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        files = []
        for i, image in enumerate(images.permute(0, 2, 3, 1).numpy()):
            files.append(str(Path(tmp) / f"{i:06d}.png"))
            Image.fromarray(image).save(files[-1])
        features = get_featuresdict_from_dataset(
            ImagesPathDataset(files),
            extractor.net,
            batch_size,
            cuda=device.startswith("cuda"),
            save_cpu_ram=True,  # no DataLoader workers, as for the streaming route
            verbose=False,
        )
        fid_features_to_statistics(features["2048"])
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-fidelity", action="store_true", help="skip the PNG + torch-fidelity route")
    args = parser.parse_args()

    images = make_images(args.images)
    extractor = InceptionFeatureExtractor().to(args.device)
    streaming = time_streaming(images, extractor, args.batch_size, args.device)
    rows = [("uniflow streaming: uint8 batches -> Inception -> float64 stats", streaming)]
    if not args.no_fidelity:
        route = time_folder_route(images, extractor, args.batch_size, args.device)
        rows.append(("PNG folder -> torch-fidelity dataset + features -> stats", route))

    threads = torch.get_num_threads()
    print(
        f"\n{args.images} images of 256 px, batch {args.batch_size}, device {args.device}, {threads} CPU threads, "
        f"weights {extractor.weights.source} ({extractor.weights.sha256[:12]})\n"
    )
    print("| pipeline | seconds | images/s |")
    print("|---|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} | {args.images / seconds:.2f} |")
    if len(rows) == 2:
        print(f"\nstreaming / folder route speed ratio: {rows[1][1] / rows[0][1]:.2f}x")


if __name__ == "__main__":
    main()
