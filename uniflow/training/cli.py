"""``python -m uniflow train CONFIG [key=value ...]``: run the stage the config names (``stage:``)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Any

from uniflow.config import ConfigError, load_config
from uniflow.stages import RunConfig

EPILOG = """overrides:
  dotted keys after the config, parsed as YAML values, e.g.
    trainer.max_steps=200 'tokenizer.distill.layers=[1,2]' resume=auto stage=tokenizer

stages (the config's `stage:` key, default tokenizer):
{stages}

The run directory <output_dir>/<name>/ receives the resolved config, checkpoints, TensorBoard logs,
the stage's export and metrics.json; a summary is printed at the end. Launch on several processes
with `srun python -m uniflow train ...` (SLURM), `torchrun ... -m uniflow train ...` or
`fabric run --accelerator cpu --devices N uniflow/__main__.py train ...` (see docs/training.md)."""


def _parser() -> argparse.ArgumentParser:
    from uniflow import stages

    lines = "\n".join(f"  {name:<10} {stages.get(name).description}" for name in stages.names())
    parser = argparse.ArgumentParser(
        prog="python -m uniflow train",
        description="Train the stage a config describes (a YAML under experiments/) with dotted overrides.",
        epilog=EPILOG.format(stages=lines),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="a YAML file, e.g. experiments/tokenizer/embedded.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    return parser


def check_config(cfg: RunConfig) -> None:
    """Problems that can be seen before any work starts, as ConfigErrors naming the key."""
    from uniflow import stages
    from uniflow.data.datamodule import UniFlowDataModule
    from uniflow.run_dir import RunDirectory
    from uniflow.training.run import build_strategy, resume_checkpoint

    t = cfg.trainer
    for key, value in (
        ("trainer.max_steps", t.max_steps),
        ("trainer.val_every_n_steps", t.val_every_n_steps),
        ("trainer.checkpoint_every_n_steps", t.checkpoint_every_n_steps),
        ("trainer.log_every_n_steps", t.log_every_n_steps),
        ("data.batch_size", cfg.data.batch_size),
    ):
        if value < 1:
            raise ConfigError(f"config key '{key}' must be at least 1, got {value}")
    stage = stages.get(cfg.stage)
    if stage.check is not None:
        stage.check(cfg)
    try:
        UniFlowDataModule.from_config(cfg.data)
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(f"data: {err}") from None
    resume_checkpoint(cfg.resume, RunDirectory.of(cfg.output_dir, cfg.name))
    build_strategy(t)


def run(cfg: RunConfig) -> dict[str, Any] | None:
    """The config's stage (after what it needs first), then on rank 0 its summary; returns rank 0's metrics."""
    from uniflow import stages
    from uniflow.hardware import resolve_precision
    from uniflow.training.run import run_stage, timed, write_json

    start = time.perf_counter()
    stage = stages.get(cfg.stage)
    # Resolved once, so every stage and the recorded config use the same precision.
    choice = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    print(f"precision: {choice.precision} ({choice.reason})")
    cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, precision=choice.precision))
    metrics: dict[str, Any] = {"stage": stage.name, "precision": choice.as_dict(), "timing_s": {}}
    if stage.prepare is not None:
        cfg = stage.prepare(cfg, metrics)
    result, metrics["timing_s"][stage.name] = timed(run_stage, stage, cfg)
    if not result.is_global_zero:
        return None
    metrics["steps"] = result.steps
    metrics.update(result.metrics)
    summary: dict[str, Any] = {}
    if stage.summary is not None:
        summary, metrics["timing_s"]["summary"] = timed(stage.summary, cfg, result.directory)
        metrics.update(summary)
    metrics["timing_s"]["total"] = time.perf_counter() - start
    write_json(result.directory.metrics, metrics)
    print(f"\nrun directory: {result.directory.root}")
    if summary and stage.format_summary is not None:
        print(stage.format_summary(metrics))
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in metrics["timing_s"].items())
    print(f"wall time: {timing}")
    return metrics


def train_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)  # exits 2 with a usage message on bad arguments
    try:
        cfg = load_config(args.config, args.overrides)
        check_config(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from uniflow.training.finite import NonFiniteLossError

    try:
        run(cfg)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
