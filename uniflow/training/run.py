"""The machinery every stage shares: Trainer (strategy, precision, checkpoints, logs), resume, fit, export.

:func:`run_stage` trains any :class:`uniflow.stages.Stage` in its run directory
(:class:`uniflow.run_dir.RunDirectory`): the resolved config, atomic Lightning checkpoints,
``resume=auto``, TensorBoard, the non-finite stop (in the modules), then the stage's export.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from uniflow.config import ConfigError, flatten, to_dict, to_yaml
from uniflow.hardware import resolve_precision
from uniflow.io import atomic_write_text, remove_stale_partials
from uniflow.run_dir import RunDirectory
from uniflow.stages import RunConfig, Stage
from uniflow.training.callbacks import ImagesPerSecond, StepProgressBar
from uniflow.training.checkpoint_io import AtomicCheckpointIO
from uniflow.training.config import TrainerConfig


def resume_checkpoint(resume: str | None, directory: RunDirectory) -> str | None:
    """The checkpoint to continue from: ``auto`` -> the run's latest (or none: a fresh start); a path must exist."""
    if resume is None:
        return None
    if resume == "auto":
        latest = directory.latest_checkpoint()
        return str(latest) if latest else None
    if not Path(resume).exists():
        raise ConfigError(f"config key 'resume': checkpoint not found: {resume}")
    return resume


def _world_size(t: TrainerConfig) -> int | None:
    """Processes the run will have, when the config says it (None for ``devices: auto``)."""
    if isinstance(t.devices, int):
        return (t.devices if t.devices > 0 else torch.cuda.device_count()) * t.num_nodes
    if isinstance(t.devices, (list, tuple)):
        return len(t.devices) * t.num_nodes
    if str(t.devices).lstrip("-").isdigit():
        return _world_size(dataclasses.replace(t, devices=int(t.devices)))
    return None


def build_strategy(t: TrainerConfig, find_unused_parameters: bool = False) -> Any:
    """DDP for more than one process, FSDP2 through ModelParallelStrategy, else Lightning's choice.

    ``find_unused_parameters`` is for encoders that keep parameters outside the path of the loss
    (see ``EncoderAdapter.all_parameters_used``); DDP then searches the graph every step.
    """
    from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

    world = _world_size(t)
    if t.strategy == "fsdp":
        if world is None:
            raise ConfigError(
                "config key 'trainer.devices' must be a number of devices with trainer.strategy=fsdp"
            )
        # A full (rank-0) checkpoint file goes through the atomic CheckpointIO like DDP's; a sharded
        # one would be a directory written by torch.distributed.checkpoint.
        return ModelParallelStrategy(
            data_parallel_size=world, tensor_parallel_size=1, save_distributed_checkpoint=False
        )
    many = world is None and torch.cuda.device_count() > 1 and t.accelerator in ("auto", "gpu", "cuda")
    if t.strategy == "ddp" or (world or 0) > 1 or many:
        return DDPStrategy(find_unused_parameters=find_unused_parameters)
    return "auto"


def build_trainer(
    cfg: RunConfig,
    directory: RunDirectory,
    stage: str,
    max_steps: int,
    grad_clip: float,
    callbacks: Sequence[L.Callback] = (),
    find_unused_parameters: bool = False,
) -> L.Trainer:
    t = cfg.trainer
    checkpoints = directory.checkpoints
    remove_stale_partials(checkpoints)
    checkpoint = ModelCheckpoint(
        dirpath=checkpoints,
        filename="step{step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=t.checkpoint_every_n_steps,
        save_last=True,
        save_top_k=-1 if t.keep_step_checkpoints else 0,
    )
    logger = TensorBoardLogger(
        save_dir=directory.root, name=directory.tensorboard.name, version="", default_hp_metric=False
    )
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=build_strategy(t, find_unused_parameters),
        precision=resolve_precision(t.precision, t.accelerator).precision,
        max_steps=max_steps,
        # Training is one endless epoch (uniflow.training.data): validate by steps, not epochs.
        val_check_interval=min(t.val_every_n_steps, max_steps),
        check_val_every_n_epoch=None,
        limit_val_batches=t.val_batches,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_n_steps,
        gradient_clip_val=grad_clip or None,
        deterministic=t.deterministic,
        # The data module shards every split itself (exactly-once evaluation).
        use_distributed_sampler=False,
        callbacks=[
            checkpoint,
            LearningRateMonitor(logging_interval="step"),
            ImagesPerSecond(),
            StepProgressBar(stage),
            *callbacks,
        ],
        logger=logger,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=directory.root,
    )


def _prepare(cfg: RunConfig, directory: RunDirectory) -> None:
    # The frozen teacher and the EMA copy are in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    directory.root.mkdir(parents=True, exist_ok=True)


def _finish_fit(trainer: L.Trainer, directory: RunDirectory) -> None:
    """Save the final state as last.ckpt (the last step need not be a checkpoint step).

    A Ctrl-C never gets here: Lightning shuts down and exits on KeyboardInterrupt, leaving the last
    periodic checkpoint for resume=auto.
    """
    trainer.save_checkpoint(directory.last_checkpoint)


def fingerprints_per_rank(state: dict[str, torch.Tensor], trainer: L.Trainer) -> list[float]:
    """Every rank's scalar summary of the exported weights (a collective): equal when the replicas agree."""
    fingerprint = float(sum(v.double().abs().sum().item() for v in state.values()))
    if trainer.world_size == 1:
        return [fingerprint]
    import torch.distributed as dist

    gathered: list[Any] = [None] * trainer.world_size
    dist.all_gather_object(gathered, fingerprint)
    return [float(x) for x in gathered]


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2))


@dataclass
class StageResult:
    """What a stage's run leaves for the caller (rank 0 summarises it)."""

    directory: RunDirectory
    is_global_zero: bool
    steps: int
    metrics: dict[str, Any] = field(default_factory=dict)


def run_stage(stage: Stage, cfg: RunConfig, callbacks: Sequence[L.Callback] = ()) -> StageResult:
    """Train (or resume) ``stage`` under ``cfg`` in its run directory, then export its product."""
    directory = RunDirectory.of(cfg.output_dir, cfg.name)
    _prepare(cfg, directory)
    ckpt = resume_checkpoint(cfg.resume, directory)
    data = stage.data(cfg)
    module = stage.module(cfg)
    trainer = build_trainer(
        cfg,
        directory,
        stage.name,
        cfg.trainer.max_steps,
        cfg.optim.grad_clip,
        [*stage.callbacks(cfg), *callbacks],
        find_unused_parameters=stage.find_unused_parameters(cfg, module),
    )
    if trainer.is_global_zero:
        atomic_write_text(directory.config, to_yaml(cfg))
        # TensorBoard's hparams take scalars and strings only.
        hparams = {
            k: str(v) if isinstance(v, (list, tuple)) or v is None else v
            for k, v in flatten(to_dict(cfg)).items()
        }
        trainer.logger.log_hyperparams(hparams)  # type: ignore[union-attr]
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    _finish_fit(trainer, directory)
    metrics = stage.export(module, trainer, directory.export(stage.export_name))
    trainer.strategy.barrier()
    return StageResult(directory, trainer.is_global_zero, trainer.global_step, metrics)


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start
