"""``python -m uniflow eval [CONFIG] [key=value ...]``: run the benchmark suite and print the table.

Without CONFIG it evaluates the newest ``runs/*/tokenizer/`` on the embedded benchmarks. With a
CONFIG it evaluates that run's tokenizer (``<output_dir>/<name>/tokenizer`` or ``eval.tokenizer``)
on the benchmarks its ``eval`` section enables. Under torchrun/srun every rank takes its share.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch.distributed as dist

from uniflow.config import ConfigError, load_config
from uniflow.evaluation import registry
from uniflow.evaluation.distributed import init_from_environment, rank_and_world
from uniflow.evaluation.report import RESULTS_JSON, RESULTS_MD, render_markdown
from uniflow.evaluation.runs import configured_tokenizer, latest_tokenizer, run_of
from uniflow.evaluation.suite import enabled_benchmarks, run_suite
from uniflow.stages import RunConfig

EPILOG = """overrides:
  dotted keys, parsed as YAML values, e.g.
    eval.benchmarks=[imagenet_recon,coco_recon] eval.data.imagenet_recon=/data/imagenet/val
    eval.fid_reference.imagenet_recon=imagenet_val_256.npz eval.tokenizer=runs/embedded/tokenizer

examples:
  python -m uniflow eval                                         # newest run, embedded benchmarks
  python -m uniflow eval experiments/tokenizer/internvit300m.yaml eval.data.imagenet_recon=/data/imagenet/val
  python -m uniflow eval --list                                  # the benchmarks and the data each reads

Under torchrun or srun every rank evaluates its share of the images. See docs/evaluation.md."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m uniflow eval",
        description="Run the benchmark suite on a tokenizer and print the results table.\n"
        "Without CONFIG: the newest runs/*/tokenizer on the embedded benchmarks. With CONFIG: that run's\n"
        "tokenizer (or eval.tokenizer) on the benchmarks its eval section enables. Writes results.json and\n"
        "results.md to eval.output_dir (default: <run dir>/eval).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "args", nargs="*", metavar="CONFIG | key=value", help="an optional YAML config, then dotted overrides"
    )
    parser.add_argument(
        "--list",
        action="store_true",
        help="list the registered benchmarks, with the data each reads, and exit",
    )
    return parser


def _list_benchmarks() -> None:
    for bench in registry.all_benchmarks():
        status = "runnable" if bench.run else f"pending: {bench.pending}"
        suite = "paper" if bench.paper else "embedded"
        print(f"{bench.name:<16} {bench.family:<15} {suite:<9} {', '.join(bench.metrics):<24} {status}")
        if bench.data:
            print(f"{'':<16} eval.data.{bench.name}: {bench.data}")
        if bench.fid_reference:
            print(f"{'':<16} eval.fid_reference.{bench.name}: {bench.fid_reference}")


def _split(args: list[str]) -> tuple[str | None, list[str]]:
    config = args[0] if args and "=" not in args[0] else None
    overrides = args[1:] if config is not None else args
    stray = [a for a in overrides if "=" not in a]
    if stray:
        raise ConfigError(f"expected key=value overrides after the config, got {stray}")
    return config, overrides


def _resolve(args: list[str]) -> tuple[RunConfig, Path, str]:
    """(config, tokenizer directory, run name) from the command line."""
    config, overrides = _split(args)
    cfg = load_config(config, overrides)
    enabled_benchmarks(cfg.eval)  # config mistakes first: they need no run to be found
    if config is not None:
        return cfg, configured_tokenizer(cfg), cfg.name
    tokenizer_dir = configured_tokenizer(cfg) if cfg.eval.tokenizer else latest_tokenizer(cfg.output_dir)
    return cfg, tokenizer_dir, run_of(tokenizer_dir).root.name


def eval_main(argv: list[str]) -> int:
    options = _parser().parse_args(argv)
    if options.list:
        _list_benchmarks()
        return 0
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    joined = init_from_environment()
    rank = rank_and_world()[0]
    try:
        cfg, tokenizer_dir, run_name = _resolve(options.args)
        output_dir = Path(cfg.eval.output_dir) if cfg.eval.output_dir else run_of(tokenizer_dir).eval
        suite = run_suite(cfg.eval, tokenizer_dir, output_dir, run_name=run_name)
    except (ConfigError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if joined:
            dist.destroy_process_group()
    if rank == 0:
        print(render_markdown(suite))
        print(f"wrote {output_dir / RESULTS_JSON} and {output_dir / RESULTS_MD}")
    return 0
