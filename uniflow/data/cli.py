"""``python -m uniflow data <command>``: data preparation commands.

    python -m uniflow data write-ffcv SRC OUT --max-side 256 --jpeg-quality 90 [--num-workers W]

``main`` receives the arguments after ``data``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from uniflow.data.folder import FOLDER_MODES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m uniflow data", description="Data preparation.")
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser(
        "write-ffcv",
        help="write an image folder tree to an FFCV .beton file",
        description="Write SRC (class subfolders, or a flat tree of images) to the FFCV file OUT. "
        "Unreadable images are skipped and reported.",
    )
    write.add_argument("src", metavar="SRC", help="image folder tree")
    write.add_argument("out", metavar="OUT", help="output .beton file")
    write.add_argument("--max-side", type=int, required=True, help="longer side limit in pixels")
    write.add_argument("--jpeg-quality", type=int, required=True, help="JPEG quality, 1..100")
    write.add_argument("--num-workers", type=int, default=None, help="worker processes (default: all cores)")
    write.add_argument("--mode", choices=FOLDER_MODES, default="auto", help="folder layout (default: auto)")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from uniflow.data.ffcv import write_ffcv

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
    except (OSError, ValueError, RuntimeError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    classes = f"{len(report.classes)} classes" if report.classes else "no classes (flat)"
    print(
        f"wrote {report.written} images ({classes}) to {report.path} in {time.perf_counter() - start:.1f}s; "
        f"skipped {len(report.skipped)} unreadable"
    )
    for path in report.skipped:
        print(f"  skipped: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
