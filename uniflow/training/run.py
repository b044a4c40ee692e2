"""A training run: run directory, Trainer (strategy, precision, checkpoints, logs), the teacher and tokenizer stages.

Run directory ``<output_dir>/<name>/``::

    config.yaml             the resolved configuration of the run
    checkpoints/last.ckpt   Lightning checkpoint (written atomically; ``resume=auto`` continues from it)
    tensorboard/            TensorBoard event files
    tokenizer/              the exported tokenizer (EMA weights): UniFlowTokenizer.from_pretrained(...)
    reconstructions.png     held-out photo crops: originals, then reconstructions
    metrics.json            the summary numbers, timings and per-rank weight fingerprints
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

from uniflow.config import ConfigError, RunConfig, TrainerConfig, to_dict, to_yaml
from uniflow.data.datamodule import UniFlowDataModule
from uniflow.io import atomic_write_text, remove_stale_partials
from uniflow.training.callbacks import ImagesPerSecond, ReconstructionGrid, StepProgressBar
from uniflow.training.checkpoint_io import AtomicCheckpointIO
from uniflow.training.data import StepDataModule

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
TOKENIZER_DIR = "tokenizer"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
TEACHER_FILE = "teacher.safetensors"


def run_directory(output_dir: str, name: str) -> Path:
    return Path(output_dir) / name


def resume_checkpoint(resume: str | None, directory: Path) -> str | None:
    """The checkpoint to continue from: ``auto`` -> ``last.ckpt`` if present; a path must exist."""
    if resume is None:
        return None
    if resume == "auto":
        # last.ckpt, or a newer checkpoint that Lightning wrote on SLURM's requeue signal (hpc_ckpt_*).
        found = [directory / CHECKPOINT_DIR / LAST, *directory.glob("hpc_ckpt_*.ckpt")]
        found = [p for p in found if p.is_file()]
        return str(max(found, key=lambda p: p.stat().st_mtime)) if found else None
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
    directory: Path,
    stage: str,
    max_steps: int,
    grad_clip: float,
    callbacks: Sequence[L.Callback] = (),
    find_unused_parameters: bool = False,
) -> L.Trainer:
    t = cfg.trainer
    checkpoints = directory / CHECKPOINT_DIR
    remove_stale_partials(checkpoints)
    checkpoint = ModelCheckpoint(
        dirpath=checkpoints,
        filename="step{step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=t.checkpoint_every_n_steps,
        save_last=True,
        save_top_k=-1 if t.keep_step_checkpoints else 0,
    )
    logger = TensorBoardLogger(save_dir=directory, name="tensorboard", version="", default_hp_metric=False)
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=build_strategy(t, find_unused_parameters),
        precision=t.precision,
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
        default_root_dir=directory,
    )


def _prepare(cfg: RunConfig, directory: Path) -> None:
    # The frozen teacher and the EMA copy are in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    directory.mkdir(parents=True, exist_ok=True)


def _finish_fit(trainer: L.Trainer, directory: Path) -> None:
    """Save the final state as last.ckpt (the last step need not be a checkpoint step).

    A Ctrl-C never gets here: Lightning shuts down and exits on KeyboardInterrupt, leaving the last
    periodic checkpoint for resume=auto.
    """
    trainer.save_checkpoint(directory / CHECKPOINT_DIR / LAST)


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2))


# --------------------------------------------------------------------------------------------------
# Teacher stage
# --------------------------------------------------------------------------------------------------
def teacher_checkpoint_path(cfg: RunConfig) -> Path:
    explicit = cfg.tokenizer.encoder.checkpoint
    return Path(explicit) if explicit else run_directory(cfg.output_dir, cfg.teacher.name) / TEACHER_FILE


def _num_classes(data: UniFlowDataModule) -> int:
    if data.backend == "embedded":
        from uniflow.data.embedded import NUM_CLASSES

        return NUM_CLASSES
    if data.backend == "folder":
        data.setup("fit")
        return len(getattr(data.train_set, "classes", []) or [])
    raise ConfigError(
        "teacher pretraining needs the number of classes, which only the embedded and folder backends give; "
        "point tokenizer.encoder.checkpoint to a pretrained encoder and set teacher.enabled=false"
    )


def train_teacher(cfg: RunConfig, path: Path, callbacks: Sequence[L.Callback] = ()) -> dict[str, Any]:
    """Train the supervised teacher and write its timm checkpoint to ``path``; returns its val accuracy."""
    from uniflow.training.teacher import TeacherModule

    t = cfg.teacher
    directory = run_directory(cfg.output_dir, t.name)
    _prepare(cfg, directory)
    # Only labelled images: the plain photo crops of the embedded mixture carry no class.
    data_cfg = dataclasses.replace(
        cfg.data, photo_fraction=0.0, num_train=t.num_train, batch_size=t.batch_size
    )
    data = UniFlowDataModule.from_config(data_cfg)
    module = TeacherModule(cfg.tokenizer.encoder, t, _num_classes(data))
    # FSDP2 shards the tokenizer; the small classifier trains with plain data parallelism (it has no
    # configure_model for ModelParallelStrategy to shard, and needs none).
    if cfg.trainer.strategy == "fsdp":
        cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, strategy="auto"))
    trainer = build_trainer(cfg, directory, "teacher", t.max_steps, t.grad_clip, callbacks)
    if trainer.is_global_zero:
        atomic_write_text(directory / CONFIG_FILE, to_yaml(cfg))
    datamodule = StepDataModule(data)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_checkpoint("auto", directory))
    _finish_fit(trainer, directory)
    if trainer.global_step % min(cfg.trainer.val_every_n_steps, t.max_steps) != 0:  # last step not validated
        trainer.validate(module, datamodule=datamodule, verbose=False)
    accuracy = trainer.callback_metrics.get("val/accuracy")
    if trainer.is_global_zero:
        module.save_teacher(path)
    trainer.strategy.barrier()
    return {"val_accuracy": float(accuracy) if accuracy is not None else None, "steps": trainer.global_step}


def with_teacher(cfg: RunConfig, path: Path) -> RunConfig:
    encoder = dataclasses.replace(cfg.tokenizer.encoder, checkpoint=str(path))
    return dataclasses.replace(cfg, tokenizer=dataclasses.replace(cfg.tokenizer, encoder=encoder))


# --------------------------------------------------------------------------------------------------
# Tokenizer stage
# --------------------------------------------------------------------------------------------------
@dataclass
class TokenizerRun:
    """What the tokenizer stage leaves for the caller (rank 0 evaluates it)."""

    directory: Path
    is_global_zero: bool
    steps: int
    fingerprints: list[float] = field(default_factory=list)


def _fingerprint(state: dict[str, torch.Tensor]) -> float:
    """A scalar summary of all weights; equal on every rank when the replicas agree."""
    return float(sum(v.double().abs().sum().item() for v in state.values()))


def train_tokenizer(cfg: RunConfig, callbacks: Sequence[L.Callback] = ()) -> TokenizerRun:
    """Train (or resume) the tokenizer of ``cfg`` and export it to ``<run>/tokenizer``."""
    from uniflow.training.tokenizer_module import TokenizerModule

    directory = run_directory(cfg.output_dir, cfg.name)
    _prepare(cfg, directory)
    ckpt = resume_checkpoint(cfg.resume, directory)
    data = StepDataModule(UniFlowDataModule.from_config(cfg.data))
    module = TokenizerModule(cfg)
    grids = ReconstructionGrid(cfg.trainer.image_every_n_steps, cfg.trainer.grid_sample_steps, seed=cfg.seed)
    trainer = build_trainer(
        cfg,
        directory,
        "tokenizer",
        cfg.trainer.max_steps,
        cfg.optim.grad_clip,
        [grids, *callbacks],
        find_unused_parameters=not module.tokenizer.student.all_parameters_used,
    )
    if trainer.is_global_zero:
        atomic_write_text(directory / CONFIG_FILE, to_yaml(cfg))
        trainer.logger.log_hyperparams(_flat(to_dict(cfg)))  # type: ignore[union-attr]
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    _finish_fit(trainer, directory)
    state = module.export_state()
    fingerprints = [_fingerprint(state)]
    if trainer.world_size > 1:
        import torch.distributed as dist

        gathered: list[Any] = [None] * trainer.world_size
        dist.all_gather_object(gathered, fingerprints[0])
        fingerprints = [float(x) for x in gathered]
    if trainer.is_global_zero:
        module.export(directory / TOKENIZER_DIR, state)
    trainer.strategy.barrier()
    return TokenizerRun(directory, trainer.is_global_zero, trainer.global_step, fingerprints)


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value) if isinstance(value, (list, tuple)) or value is None else value
    return out


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start
