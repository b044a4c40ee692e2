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
    from uniflow.config import load_tokenizer_config
    from uniflow.tokenizer.summary import parameter_counts

    if not argv:
        print("usage: python -m uniflow params CONFIG [key=value ...]", file=sys.stderr)
        return 2
    counts = parameter_counts(load_tokenizer_config(argv[0], argv[1:]))
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
