"""Command line: ``python -m uniflow VERB [args]``; the Makefile targets call these.

Every verb parses its own arguments with argparse (``python -m uniflow VERB --help``). Exit status:
0 done; 2 a usage, config or missing-input error, reported as ``error: ...`` on stderr before any
work starts; 1 a failure while running.

Launchers start this same command on every process: ``srun python -m uniflow train ...`` (SLURM),
``torchrun --nproc-per-node N -m uniflow train ...``, and ``fabric run ... uniflow/__main__.py train
...`` (Lightning's launcher takes a script path, not ``-m``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback

if __name__ == "__main__" and not __package__:
    # Started as a script (`fabric run uniflow/__main__.py ...`): Python put this package's own folder
    # first on sys.path, where its modules (config, data, io, metrics, ...) would shadow top-level
    # modules of the same names, and from which a checkout that is not pip-installed cannot import
    # `uniflow`. Put the folder holding the package there instead, as `-m` would from the checkout.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROG = "python -m uniflow"

# verb -> ("module:function", one-line help). The function takes the arguments after the verb and
# returns the exit status. Imported lazily, so a verb pays only for its own imports.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": (
        "uniflow.training.cli:train_main",
        "train the stage a config names: train CONFIG [key=value ...]",
    ),
    "eval": ("uniflow.evaluation.cli:eval_main", "run the benchmark suite: eval [CONFIG] [key=value ...]"),
    "sample": (
        "uniflow.generation.sampling:sample_main",
        "samples of a generator run as an ADM .npz: sample RUN --num N --out samples.npz",
    ),
    "fid": ("uniflow.metrics.cli:fid_main", "FID between two image folders or .npz statistics: fid A B"),
    "data": ("uniflow.data.cli:main", "data preparation: data VERB [args] (verbs below)"),
    "doctor": ("uniflow.doctor:main", "what this machine offers and what uniflow will do with it"),
    "params": ("uniflow.__main__:params_main", "parameter counts of a config: params CONFIG [key=value ...]"),
}
# Verbs that group sub-verbs: verb -> the module whose COMMANDS table (same shape as above) lists them.
GROUPS: dict[str, str] = {"data": "uniflow.data.cli"}


def group_commands(verb: str) -> dict[str, tuple[str, str]]:
    """The sub-verb table of a group verb (``data``)."""
    return importlib.import_module(GROUPS[verb]).COMMANDS


def params_main(argv: list[str]) -> int:
    """``params CONFIG [key=value ...]``: parameter counts of a tokenizer config, built on the meta device."""
    from uniflow.tokenizer.config import load_tokenizer_config
    from uniflow.tokenizer.summary import parameter_counts

    parser = argparse.ArgumentParser(
        prog=f"{PROG} params",
        description="Parameter counts (JSON) of a tokenizer config, built on the meta device (no weights "
        "are read). A run config (with a tokenizer: section) or a bare tokenizer config.",
        epilog="overrides are dotted keys relative to the file's top level, parsed as YAML values, "
        "e.g. tokenizer.decoder.width=512",
    )
    parser.add_argument("config", help="a YAML file, e.g. experiments/tokenizer/internvit300m.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
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


def verb_lines(rows: list[tuple[str, str]]) -> list[str]:
    """Help lines of ``(verb, help)`` rows, aligned."""
    width = max(len(name) for name, _ in rows)
    return [f"  {name:<{width}}  {help_}" for name, help_ in rows]


def _parser() -> argparse.ArgumentParser:
    rows = []
    for name, (_, help_) in COMMANDS.items():
        rows.append((name, help_))
        if name in GROUPS:
            rows += [(f"  {name} {sub}", sub_help) for sub, (_, sub_help) in group_commands(name).items()]
    lines = verb_lines(rows)
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} [-h] VERB [args]",
        description="UniFlow: train tokenizers and the stages on their tokens, evaluate them, prepare data.",
        epilog="verbs:\n"
        + "\n".join(lines)
        + f"\n\n`{PROG} VERB --help` describes a verb. Exit status: 0 done, 2 usage, config or "
        "missing-input error,\n1 failure while running. Launchers: docs/training.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("verb", metavar="VERB", choices=list(COMMANDS), help="one of the verbs below")
    return parser


def run_verb(target: str, argv: list[str]) -> int:
    """Call ``module:function`` with ``argv``, turning what escapes it into the exit status.

    A ConfigError is a config error wherever it is raised (2). Anything else is a failure while
    running (1): its traceback is printed, because it is a bug or a broken machine that someone has to
    find, then the one-line ``error:``. SystemExit passes (argparse's ``--help`` 0 and usage errors 2).
    """
    from uniflow.config import ConfigError  # after the sys.path repair above, when run as a script

    module, function = target.split(":")
    try:
        return int(getattr(importlib.import_module(module), function)(argv) or 0)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        traceback.print_exc()
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """``python -m uniflow VERB [args]``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Only the verb is parsed here; what follows it belongs to the verb's own parser.
    verb = _parser().parse_args(argv[:1]).verb
    return run_verb(COMMANDS[verb][0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
