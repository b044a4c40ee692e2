"""``python -m uniflow data VERB [args]``: data preparation.

    python -m uniflow data write-ffcv SRC OUT --max-side 256 --jpeg-quality 90 [--num-workers W]
    python -m uniflow data ref-stats SRC OUT.npz [--size 256]

A new data verb (for example ``encode-latents``, the latent cache the generators train on) is one
row of :data:`COMMANDS`. ``main`` receives the arguments after ``data``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from uniflow.data.config import FOLDER_MODES

PROG = "python -m uniflow data"

# sub-verb -> ("module:function", one-line help), like the top-level table in uniflow/__main__.py.
COMMANDS: dict[str, tuple[str, str]] = {
    "write-ffcv": (
        "uniflow.data.cli:write_ffcv_main",
        "write an image folder tree to an FFCV .beton file (training data)",
    ),
    "ref-stats": (
        "uniflow.metrics.cli:ref_stats_main",
        "FID reference statistics of an image folder or ADM .npz (eval.fid_reference)",
    ),
}


def _bounded_int(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an int in ``low..high``, so a bad value is a usage error before any work."""

    wanted = f"an integer in {low}..{high}" if high is not None else f"an integer >= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    return parse


def write_ffcv_main(argv: list[str]) -> int:
    """``data write-ffcv SRC OUT``: write an image tree to an FFCV file; unreadable images are skipped and listed."""
    parser = argparse.ArgumentParser(
        prog=f"{PROG} write-ffcv",
        description="Write SRC (class subfolders, or a flat tree of images) to the FFCV file OUT, each "
        "image resized to --max-side and stored as JPEG. Unreadable images are skipped and listed. "
        "OUT is written under a temporary name and renamed, so an interrupted write leaves no OUT.",
    )
    parser.add_argument("src", metavar="SRC", type=Path, help="image folder tree")
    parser.add_argument("out", metavar="OUT", type=Path, help="output .beton file")
    parser.add_argument("--max-side", type=_bounded_int(1), required=True, help="longer side limit in pixels")
    parser.add_argument(
        "--jpeg-quality", type=_bounded_int(1, 100), required=True, help="JPEG quality, 1..100"
    )
    parser.add_argument(
        "--num-workers", type=_bounded_int(1), default=None, help="decoding processes (default: all cores)"
    )
    parser.add_argument("--mode", choices=FOLDER_MODES, default="auto", help="folder layout (default: auto)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from uniflow.data.ffcv import INSTALL_HINT, ffcv_available, write_ffcv

    # Checked before the decoding pass, which takes minutes on ImageNet.
    if not ffcv_available():
        print(f"error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    if not args.src.is_dir():
        print(f"error: image folder not found: {args.src}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        report = write_ffcv(
            args.src,
            args.out,
            max_side=args.max_side,
            jpeg_quality=args.jpeg_quality,
            num_workers=args.num_workers,
            mode=args.mode,
        )
    except FileNotFoundError as err:  # a folder with no image files in it
        print(f"error: {err}", file=sys.stderr)
        return 2
    classes = f"{len(report.classes)} classes" if report.classes else "no classes (flat)"
    print(
        f"wrote {report.written} images ({classes}) to {report.path} in {time.perf_counter() - start:.1f}s; "
        f"skipped {len(report.skipped)} unreadable"
    )
    for path in report.skipped:
        print(f"  skipped: {path}")
    return 0


def _parser() -> argparse.ArgumentParser:
    from uniflow.__main__ import verb_lines

    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} [-h] VERB [args]",
        description="Data preparation: FFCV files for training, FID reference statistics for evaluation.",
        epilog="verbs:\n"
        + "\n".join(verb_lines([(name, help_) for name, (_, help_) in COMMANDS.items()]))
        + f"\n\n`{PROG} VERB --help` describes a verb.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("verb", metavar="VERB", choices=list(COMMANDS), help="one of the verbs below")
    return parser


def main(argv: list[str]) -> int:
    """``data VERB [args]``: run the sub-verb; what escapes it is reported by ``python -m uniflow``."""
    verb = _parser().parse_args(argv[:1]).verb
    module, function = COMMANDS[verb][0].split(":")
    return int(getattr(importlib.import_module(module), function)(argv[1:]) or 0)
