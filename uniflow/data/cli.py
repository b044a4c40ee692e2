"""``python -m uniflow data VERB [args]``: data preparation.

    python -m uniflow data write-ffcv SRC OUT --max-side 256 --jpeg-quality 90 [--num-workers W]
    python -m uniflow data ref-stats SRC OUT.npz [--size 256]
    python -m uniflow data encode-latents TOKENIZER SRC OUT [--flip] [--dtype bfloat16]

A new data verb is one row of :data:`COMMANDS`. ``main`` receives the arguments after ``data``.
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
from uniflow.data.photos import SPLITS

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
    "encode-latents": (
        "uniflow.data.cli:encode_latents_main",
        "encode a dataset once into sharded latents and their statistics (generators train on them)",
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


def encode_latents_main(argv: list[str]) -> int:
    """``data encode-latents TOKENIZER SRC OUT``: the latent cache (``uniflow.generation.latent_cache``)."""
    parser = argparse.ArgumentParser(
        prog=f"{PROG} encode-latents",
        description="Encode SRC once with TOKENIZER into sharded safetensors under OUT (latents, labels,\n"
        "sample indices), then write the per-channel mean/std of the latents (latent_stats.safetensors)\n"
        "and manifest.json, which marks the cache complete. Every rank of torchrun or srun writes its\n"
        "own shards; shard k always holds samples [k*S, (k+1)*S), so the cache does not depend on the\n"
        "number of ranks. Rerunning the same command resumes: complete shards are kept, partial files\n"
        "removed. Unreadable images are skipped and counted. Details: docs/training.md.",
        epilog="examples:\n"
        f"  {PROG} encode-latents runs/embedded embedded:4096 data/latents/embedded --flip\n"
        f"  torchrun --nproc-per-node 8 -m uniflow data encode-latents runs/in1k_tok /data/imagenet/train "
        "data/latents/in1k --flip --dtype bfloat16",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "tokenizer", metavar="TOKENIZER", help="tokenizer export or the run directory holding it"
    )
    parser.add_argument(
        "src",
        metavar="SRC",
        help="image folder (class subfolders give labels) or embedded:N (N embedded scenes)",
    )
    parser.add_argument("out", metavar="OUT", type=Path, help="output directory of the cache")
    parser.add_argument(
        "--flip", action="store_true", help="also store the latent of each image's horizontal flip"
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="latent storage (default: float32)",
    )
    parser.add_argument(
        "--size", type=_bounded_int(1), default=None, help="image side in pixels (default: the tokenizer's)"
    )
    parser.add_argument(
        "--shard-size", type=_bounded_int(1), default=1024, help="samples per shard (default: 1024)"
    )
    parser.add_argument(
        "--batch-size", type=_bounded_int(1), default=64, help="images per forward pass (default: 64)"
    )
    parser.add_argument(
        "--num-workers", type=_bounded_int(0), default=4, help="image loading processes (default: 4)"
    )
    parser.add_argument("--device", default=None, help="default: this rank's GPU, else the CPU")
    parser.add_argument("--mode", choices=FOLDER_MODES, default="auto", help="folder layout (default: auto)")
    parser.add_argument("--split", choices=SPLITS, default="train", help="embedded split (default: train)")
    parser.add_argument("--seed", type=int, default=0, help="embedded scenes' seed (default: 0)")
    parser.add_argument(
        "--rank",
        type=_bounded_int(0),
        default=None,
        help="this process's rank (default: torchrun's or srun's)",
    )
    parser.add_argument(
        "--world-size",
        type=_bounded_int(1),
        default=None,
        help="number of ranks (default: torchrun's or srun's)",
    )
    parser.add_argument(
        "--wait-timeout",
        type=_bounded_int(0),
        default=24 * 3600,
        help="seconds rank 0 waits for the other ranks' shards (default: 86400)",
    )
    args = parser.parse_args(argv)
    if (args.rank is None) != (args.world_size is None):
        parser.error("--rank and --world-size go together")
    if args.rank is not None and args.rank >= args.world_size:
        parser.error(f"--rank {args.rank} is not below --world-size {args.world_size}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from uniflow.generation.latent_cache import EMBEDDED_PREFIX, CacheMismatch, encode_latents, parse_embedded

    if args.src.startswith(EMBEDDED_PREFIX):
        try:
            parse_embedded(args.src)
        except ValueError as err:
            parser.error(str(err))
    start = time.perf_counter()
    try:
        report = encode_latents(
            args.tokenizer,
            args.src,
            args.out,
            size=args.size,
            shard_size=args.shard_size,
            batch_size=args.batch_size,
            dtype=args.dtype,
            flip=args.flip,
            split=args.split,
            seed=args.seed,
            mode=args.mode,
            num_workers=args.num_workers,
            device=args.device,
            rank=args.rank,
            world_size=args.world_size,
            wait_timeout_s=args.wait_timeout,
        )
    except (
        FileNotFoundError,
        NotADirectoryError,
        CacheMismatch,
    ) as err:  # missing inputs, another cache in OUT
        print(f"error: {err}", file=sys.stderr)
        return 2
    r = report.rank
    print(
        f"rank {r.rank}/{r.world_size}: wrote {len(r.written)} shards, kept {len(r.skipped)} complete ones, "
        f"skipped {r.unreadable} unreadable images in {time.perf_counter() - start:.1f}s"
    )
    if report.manifest is not None:
        m = report.manifest
        print(
            f"{args.out}: {m['count']} samples of {m['num_source']} ({m['unreadable']} unreadable), latents "
            f"{'x'.join(map(str, m['latent_shape']))} {m['dtype']}{' + flips' if m['flip'] else ''} in "
            f"{len(m['shards'])} shards; statistics in {m['stats']}"
        )
    return 0


def _parser() -> argparse.ArgumentParser:
    from uniflow.__main__ import verb_lines

    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} [-h] VERB [args]",
        description="Data preparation: FFCV files for training, FID reference statistics for evaluation, "
        "latent caches for generators.",
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
