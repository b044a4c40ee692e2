"""Command line: ``python -m uniflow <command> [args]``; the Makefile targets call these."""

from __future__ import annotations

import importlib
import json
import sys

# command -> ("module:function", one-line help). Imported lazily so `--help` stays fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("uniflow.training.cli:train_main", "train a tokenizer: train CONFIG [key=value ...]"),
    "eval": ("uniflow.evaluation.cli:eval_main", "run the benchmark suite: eval [CONFIG] [key=value ...]"),
    "fid": ("uniflow.metrics.cli:fid_main", "FID between two image folders: fid DIR_A DIR_B"),
    "ref-stats": (
        "uniflow.metrics.cli:ref_stats_main",
        "build FID reference statistics: ref-stats SRC OUT.npz",
    ),
    "data": ("uniflow.data.cli:main", "data tools: data write-ffcv SRC OUT --max-side N --jpeg-quality Q"),
    "params": ("uniflow.__main__:params_main", "parameter counts of a config: params CONFIG [key=value ...]"),
}


def params_main(argv: list[str]) -> int:
    import argparse

    from uniflow.config import load_tokenizer_config
    from uniflow.tokenizer.summary import parameter_counts

    parser = argparse.ArgumentParser(
        prog="python -m uniflow params", description="parameter counts of a tokenizer config (meta device)"
    )
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="key=value")
    parser.add_argument("--encoder-width", type=int, help="count the decoder alone, for this encoder width")
    parser.add_argument("--patch-size", type=int, help="with --encoder-width: the encoder's patch size")
    args = parser.parse_args(argv)
    if (args.encoder_width is None) != (args.patch_size is None):
        parser.error("--encoder-width and --patch-size go together")
    cfg = load_tokenizer_config(args.config, args.overrides)
    try:
        counts = parameter_counts(cfg, args.encoder_width, args.patch_size)
    except OSError as err:  # e.g. a hub-only architecture (InternViT) on an offline machine
        print(
            f"error: cannot build the encoder {cfg.encoder.name!r} here ({err.__class__.__name__}: "
            f"{str(err).splitlines()[0]}); give --encoder-width and --patch-size to count the decoder alone",
            file=sys.stderr,
        )
        return 2
    print(json.dumps(counts, indent=2))
    return 0


def usage() -> str:
    lines = ["usage: python -m uniflow <command> [args]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, function = COMMANDS[name][0].split(":")
    return int(getattr(importlib.import_module(module), function)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
