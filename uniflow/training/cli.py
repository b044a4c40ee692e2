"""``python -m uniflow train CONFIG [key=value ...]``: teacher (if needed), tokenizer, summary."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from uniflow.config import ConfigError, RunConfig, load_config

USAGE = """usage: python -m uniflow train CONFIG [key=value ...]

Trains the tokenizer described by CONFIG (a YAML under experiments/) with dotted overrides, e.g.
  python -m uniflow train experiments/tokenizer/embedded.yaml trainer.max_steps=200 resume=auto
With teacher.enabled and no teacher checkpoint, a supervised teacher is trained first. The run
directory <output_dir>/<name>/ receives the resolved config, checkpoints, TensorBoard logs, the
exported tokenizer, a reconstruction grid and metrics.json; a summary is printed at the end."""


def check_config(cfg: RunConfig) -> None:
    """Problems that can be seen before any work starts, as ConfigErrors naming the key."""
    from uniflow.data.datamodule import UniFlowDataModule
    from uniflow.training.run import build_strategy, resume_checkpoint, run_directory

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
    if cfg.optim.ema_decay > 0 and t.precision == "bf16-true":
        # bf16-true casts the whole module, the average included: an update of (1 - decay) times a
        # small difference then rounds away, and the EMA stops moving once the decay passes ~0.996.
        raise ConfigError(
            "config key 'optim.ema_decay' > 0 needs the EMA in float32, which trainer.precision=bf16-true "
            "does not keep; use trainer.precision=bf16-mixed or optim.ema_decay=0"
        )
    if cfg.teacher.enabled:
        if cfg.tokenizer.encoder.backend != "timm":
            raise ConfigError(
                f"config key 'teacher.enabled': teacher pretraining builds timm models, but "
                f"tokenizer.encoder.backend is {cfg.tokenizer.encoder.backend!r}"
            )
        if cfg.data.backend == "ffcv":
            raise ConfigError(
                "config key 'teacher.enabled': teacher pretraining reads class counts from the embedded or "
                "folder backend, not ffcv; point tokenizer.encoder.checkpoint to a pretrained encoder instead"
            )
        if cfg.teacher.max_steps < 1:
            raise ConfigError(
                f"config key 'teacher.max_steps' must be at least 1, got {cfg.teacher.max_steps}"
            )
    elif cfg.tokenizer.encoder.checkpoint and not Path(cfg.tokenizer.encoder.checkpoint).is_file():
        raise ConfigError(
            f"config key 'tokenizer.encoder.checkpoint': file not found: {cfg.tokenizer.encoder.checkpoint} "
            "(teacher.enabled=true trains a teacher there)"
        )
    try:
        UniFlowDataModule.from_config(cfg.data)
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(f"data: {err}") from None
    resume_checkpoint(cfg.resume, run_directory(cfg.output_dir, cfg.name))
    build_strategy(t)


def run(cfg: RunConfig) -> dict[str, Any] | None:
    """Teacher stage (if needed), tokenizer stage, then on rank 0 the summary; returns rank 0's metrics."""
    from uniflow.tokenizer import UniFlowTokenizer
    from uniflow.training.run import (
        METRICS_FILE,
        TOKENIZER_DIR,
        teacher_checkpoint_path,
        timed,
        train_teacher,
        train_tokenizer,
        with_teacher,
        write_json,
    )
    from uniflow.training.summary import evaluate_tokenizer, format_summary

    start = time.perf_counter()
    metrics: dict[str, Any] = {"timing_s": {}}
    if cfg.teacher.enabled:
        path = teacher_checkpoint_path(cfg)
        if path.is_file():
            print(f"teacher: using {path}")
        else:
            metrics["teacher"], metrics["timing_s"]["teacher"] = timed(train_teacher, cfg, path)
        cfg = with_teacher(cfg, path)
    result, metrics["timing_s"]["tokenizer"] = timed(train_tokenizer, cfg)
    if not result.is_global_zero:
        return None
    metrics["steps"] = result.steps
    metrics["weights_fingerprint_per_rank"] = result.fingerprints
    if cfg.summary.enabled:
        tokenizer = UniFlowTokenizer.from_pretrained(result.directory / TOKENIZER_DIR)
        summary, metrics["timing_s"]["summary"] = timed(evaluate_tokenizer, cfg, tokenizer, result.directory)
        metrics.update(summary)
    metrics["timing_s"]["total"] = time.perf_counter() - start
    write_json(result.directory / METRICS_FILE, metrics)
    print(f"\nrun directory: {result.directory}")
    if cfg.summary.enabled:
        print(format_summary(metrics))
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in metrics["timing_s"].items())
    print(f"wall time: {timing}")
    return metrics


def train_main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    try:
        cfg = load_config(argv[0], argv[1:])
        check_config(cfg)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2

    from uniflow.training.finite import NonFiniteLossError

    try:
        run(cfg)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
