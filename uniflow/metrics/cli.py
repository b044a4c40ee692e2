"""Command-line entry points: ``python -m uniflow fid A B`` and ``python -m uniflow ref-stats SRC OUT``.

Both use the same machinery as the evaluation suite (torch-fidelity's Inception with resolved
weights, streaming float64 statistics, the careful Frechet distance), so a number from the
command line and one from ``eval`` are the same number.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from uniflow.metrics.fid import frechet_distance
from uniflow.metrics.inception import InceptionFeatureExtractor, InceptionWeightsNotFound
from uniflow.metrics.reference import (
    ReferenceStats,
    build_reference_stats,
    compute_reference_stats,
    iter_folder_batches,
)


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=50, help="images per Inception batch (default 50)")
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="torch-fidelity format Inception weights (default: resolved)",
    )
    parser.add_argument(
        "--device", default=_default_device(), help="torch device (default: cuda if available)"
    )


def _statistics(source: Path, extractor: InceptionFeatureExtractor, batch_size: int) -> ReferenceStats:
    """An image folder's statistics, or a ``.npz`` (our statistics, ADM's reference or sample files)."""
    if source.is_file() and source.suffix == ".npz":
        return ReferenceStats.load(source, extractor, batch_size)
    meta = {"source": str(source), "source_name": source.name, "preprocessing": "image files as stored"}
    return compute_reference_stats(iter_folder_batches(source, batch_size), extractor, meta)


def fid_main(argv: list[str]) -> int:
    """``fid DIR_A DIR_B``: print the FID between two image folders (or ``.npz`` statistics); last line ends with it."""
    parser = argparse.ArgumentParser(
        prog="python -m uniflow fid",
        description="FID between two image folders (images as stored, no crop); "
        "either side may also be a .npz with mu/sigma or ADM arr_0 samples.",
    )
    parser.add_argument("a", type=Path, help="image folder or .npz")
    parser.add_argument("b", type=Path, help="image folder or .npz")
    _add_common(parser)
    args = parser.parse_args(argv)
    try:
        extractor = InceptionFeatureExtractor(args.weights).to(args.device)
        print(
            f"inception weights: {extractor.weights.path} ({extractor.weights.source}, sha256 {extractor.weights.sha256[:12]})"
        )
        stats = []
        for source in (args.a, args.b):
            stats.append(_statistics(source, extractor, args.batch_size))
            print(f"{source}: {stats[-1].meta.get('count', 'n/a')} images")
        value = frechet_distance(stats[0].mu, stats[0].sigma, stats[1].mu, stats[1].sigma)
    except (InceptionWeightsNotFound, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"FID: {value:.6f}")
    return 0


def ref_stats_main(argv: list[str]) -> int:
    """``ref-stats SRC OUT.npz``: reference statistics of a folder (ADM centre crop) or ADM ``.npz``, with provenance."""
    parser = argparse.ArgumentParser(
        prog="python -m uniflow ref-stats",
        description="FID reference statistics (mu, sigma, provenance) of an image folder, ADM-centre-cropped, "
        "or of an ADM .npz sample file.",
    )
    parser.add_argument("source", type=Path, help="image folder (recursive) or ADM .npz with arr_0")
    parser.add_argument("out", type=Path, help="output .npz")
    parser.add_argument(
        "--size", type=int, default=256, help="ADM centre-crop side; 0 keeps images as stored"
    )
    _add_common(parser)
    args = parser.parse_args(argv)
    try:
        extractor = InceptionFeatureExtractor(args.weights).to(args.device)
        stats = build_reference_stats(
            args.source, args.out, extractor, size=args.size or None, batch_size=args.batch_size
        )
    except (InceptionWeightsNotFound, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.out}: {stats.meta['count']} images, {stats.meta['preprocessing']}, id {stats.id}")
    return 0
