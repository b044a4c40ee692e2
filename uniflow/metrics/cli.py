"""Command-line entry points: ``python -m uniflow fid A B`` and ``python -m uniflow data ref-stats SRC OUT``.

Both check their inputs before any work (exit 2 with ``error: ...``), skip and count unreadable
images (the count is printed and kept in the statistics' provenance), and use the same machinery as
the evaluation suite (torch-fidelity's Inception with resolved weights, streaming float64
statistics, the careful Frechet distance), so a number from the command line and one from ``eval``
are the same number.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from uniflow.metrics.fid import frechet_distance
from uniflow.metrics.inception import InceptionFeatureExtractor, InceptionWeightsNotFound
from uniflow.metrics.reference import (
    FolderBatches,
    ReferenceStats,
    build_reference_stats,
    compute_reference_stats,
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


def _check_inputs(sources: list[Path], weights: Path | None) -> None:
    """Fail before any work (Inception loading, hours of features) on an input that is not there."""
    for source in sources:
        if not source.exists():
            raise FileNotFoundError(f"input not found: {source}")
        if not (source.is_dir() or source.suffix == ".npz"):
            raise ValueError(f"input must be an image folder or a .npz file: {source}")
    if weights is not None and not weights.is_file():
        raise FileNotFoundError(f"Inception weights not found: {weights}")


def _statistics(source: Path, extractor: InceptionFeatureExtractor, batch_size: int) -> ReferenceStats:
    """An image folder's statistics, or a ``.npz`` (our statistics, ADM's reference or sample files)."""
    if source.is_file() and source.suffix == ".npz":
        return ReferenceStats.load(source, extractor, batch_size)
    meta = {"source": str(source), "source_name": source.name, "preprocessing": "image files as stored"}
    batches = FolderBatches(source, batch_size)
    stats = compute_reference_stats(batches, extractor, meta)
    stats.meta.update(batches.provenance())
    return stats


def _count_line(source: Path, stats: ReferenceStats) -> str:
    skipped = stats.meta.get("unreadable_skipped")
    extra = f" ({skipped} unreadable files skipped)" if skipped else ""
    return f"{source}: {stats.meta.get('count', 'n/a')} images{extra}"


def fid_main(argv: list[str]) -> int:
    """``fid DIR_A DIR_B``: print the FID between two image folders (or ``.npz`` statistics); last line ends with it."""
    parser = argparse.ArgumentParser(
        prog="python -m uniflow fid",
        description="FID between two image folders (images as stored, no crop); "
        "either side may also be a .npz with mu/sigma or ADM arr_0 samples. Unreadable files "
        "(truncated, not an image) are skipped and counted. The last line printed is 'FID: VALUE'.",
    )
    parser.add_argument("a", metavar="A", type=Path, help="image folder or .npz")
    parser.add_argument("b", metavar="B", type=Path, help="image folder or .npz")
    _add_common(parser)
    args = parser.parse_args(argv)
    try:
        _check_inputs([args.a, args.b], args.weights)
        extractor = InceptionFeatureExtractor(args.weights).to(args.device)
        print(
            f"inception weights: {extractor.weights.path} ({extractor.weights.source}, sha256 {extractor.weights.sha256[:12]})"
        )
        stats = []
        for source in (args.a, args.b):
            stats.append(_statistics(source, extractor, args.batch_size))
            print(_count_line(source, stats[-1]))
        value = frechet_distance(stats[0].mu, stats[0].sigma, stats[1].mu, stats[1].sigma)
    except (InceptionWeightsNotFound, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"FID: {value:.6f}")
    return 0


def ref_stats_main(argv: list[str]) -> int:
    """``data ref-stats SRC OUT.npz``: reference statistics of a folder (ADM centre crop) or ADM ``.npz``, with provenance."""
    parser = argparse.ArgumentParser(
        prog="python -m uniflow data ref-stats",
        description="FID reference statistics (mu, sigma, provenance) of an image folder, ADM-centre-cropped, "
        "or of an ADM .npz sample file. Unreadable files are skipped and counted in the provenance. "
        "The output is what eval.fid_reference.<benchmark> and `python -m uniflow fid` read.",
    )
    parser.add_argument(
        "source", metavar="SRC", type=Path, help="image folder (recursive) or ADM .npz with arr_0"
    )
    parser.add_argument("out", metavar="OUT.npz", type=Path, help="output statistics file")
    parser.add_argument(
        "--size", type=int, default=256, help="ADM centre-crop side; 0 keeps images as stored"
    )
    _add_common(parser)
    args = parser.parse_args(argv)
    try:
        _check_inputs([args.source], args.weights)
        # Made now, so a statistics pass of hours never ends on a missing output directory.
        args.out.parent.mkdir(parents=True, exist_ok=True)
        extractor = InceptionFeatureExtractor(args.weights).to(args.device)
        stats = build_reference_stats(
            args.source, args.out, extractor, size=args.size or None, batch_size=args.batch_size
        )
    except (InceptionWeightsNotFound, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{_count_line(args.out, stats)}, {stats.meta['preprocessing']}, id {stats.id}")
    return 0
