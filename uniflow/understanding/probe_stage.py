"""The ``probe`` stage: a head trained on a tokenizer run's frozen features (its student, or the
teacher it started from), on the shared machinery (``uniflow.training.run.run_stage``).

``python -m uniflow train experiments/probe/embedded_segmentation.yaml probe.source=teacher``

The protocol is the ``probe`` section plus ``optim`` (lr, weight decay, warm-up, schedule) and
``seed``; ``trainer.max_steps`` is derived from ``probe.epochs`` (so a resumed run ends where the
uninterrupted one would), and the evaluation split is scored once, in full, after the last step.
The export ``<run>/probe/`` holds the head (``head.safetensors``) and ``result.json``: the metrics
with the protocol and the feature source's description and weight hash as provenance.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import lightning as L
from safetensors.torch import save_file

from uniflow.config import ConfigError, to_dict
from uniflow.io import atomic_path, atomic_write_text
from uniflow.stages import Stage
from uniflow.understanding.probe_config import TASK_DATASETS, ProbeConfig

EXPORT_NAME = "probe"
RESULT_FILE = "result.json"
HEAD_FILE = "head.safetensors"


def protocol(cfg: Any) -> dict[str, Any]:
    """Everything that decides the probe's number, for the result's provenance."""
    p, o = cfg.probe, cfg.optim
    recorded = {
        key: value
        for key, value in to_dict(p).items()
        if key not in ("tokenizer", "data_path", "cache_dir", "extract_batch_size", "num_workers")
    }
    if p.task != "depth":
        recorded = {k: v for k, v in recorded.items() if k not in ("min_depth", "max_depth", "eigen_crop")}
    if p.task != "detection":
        recorded = {
            k: v
            for k, v in recorded.items()
            if k
            not in ("anchor_sizes", "pyramid_channels", "representation_size", "rpn_batch_size_per_image",
                    "box_batch_size_per_image", "proposals")
        }  # fmt: skip
    recorded["pooling"] = "mean over patch tokens" if p.task == "classification" else "patch tokens"
    recorded.update(
        optimizer="AdamW",
        lr=o.lr,
        weight_decay=o.weight_decay,
        betas=list(o.betas),
        warmup_steps=o.warmup_steps,
        schedule=o.schedule,
        seed=cfg.seed,
    )
    return recorded


def _world(cfg: Any) -> int:
    from uniflow.training.run import _world_size

    return _world_size(cfg.trainer) or 1


def _prepare(cfg: Any, metrics: dict[str, Any]) -> Any:
    """Derive the step count from the epochs, and validate once, on the whole split, at the end."""
    from uniflow.understanding.probe_data import probe_splits

    splits = probe_splits(cfg.probe, cfg.seed)
    world = _world(cfg)
    samples = sum(len(view) for view in splits["train"])
    steps = cfg.probe.epochs * max(1, math.ceil(samples / (cfg.probe.batch_size * world)))
    val_batches = math.ceil(len(splits["val"][0]) / (cfg.probe.batch_size * world)) + 1
    trainer = dataclasses.replace(
        cfg.trainer,
        max_steps=steps,
        val_every_n_steps=steps,
        checkpoint_every_n_steps=min(cfg.trainer.checkpoint_every_n_steps, steps),
        val_batches=val_batches,
    )
    return dataclasses.replace(cfg, trainer=trainer)


def _module(cfg: Any) -> L.LightningModule:
    from uniflow.understanding.probe_module import ProbeModule

    module = ProbeModule(cfg.probe, cfg.optim, cfg.trainer.max_steps, cfg.seed)
    module.protocol = protocol(cfg)  # the export records it with the steps taken
    return module


def _data(cfg: Any) -> L.LightningDataModule:
    from uniflow.understanding.probe_data import ProbeDataModule

    return ProbeDataModule(cfg.probe, cfg.seed)


def _export(module: Any, trainer: L.Trainer, path: Path) -> dict[str, Any]:
    """Score the final head if the last step did not (a resumed, finished run), then write the export."""
    if not module.results:
        trainer.validate(module, datamodule=trainer.datamodule, verbose=False)
    data = trainer.datamodule
    result = {
        "task": module.probe.task,
        "metrics": module.results,
        "source": {"kind": module.probe.source, "description": data.source_description,
                   "model_hash": data.model_hash},
        "samples": {"train": sum(len(v) for v in data.splits["train"]), "val": data.num_val},
        "protocol": {**module.protocol, "steps": trainer.global_step},
    }  # fmt: skip
    if trainer.is_global_zero:
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in module.head.state_dict().items()}
        with atomic_path(path / HEAD_FILE) as tmp:
            save_file(state, str(tmp))
        atomic_write_text(path / RESULT_FILE, json.dumps(result, indent=2))
    return {"probe": result}


def _summary(cfg: Any, directory: Any) -> dict[str, Any]:
    return {"probe": json.loads((directory.export(EXPORT_NAME) / RESULT_FILE).read_text())}


def _format(metrics: dict[str, Any]) -> str:
    probe = metrics["probe"]
    values = ", ".join(f"{k} {v:.4f}" for k, v in probe["metrics"].items())
    return (
        f"{probe['task']} probe on {probe['source']['description']} "
        f"({probe['samples']['train']} training / {probe['samples']['val']} evaluation samples): {values}"
    )


def _check(cfg: Any) -> None:
    from uniflow.run_dir import RunDirectory
    from uniflow.tokenizer.model import WEIGHTS_FILE

    p = cfg.probe
    if p.dataset not in TASK_DATASETS[p.task]:
        raise ConfigError(
            f"config key 'probe.dataset' = {p.dataset!r} has no {p.task} targets; choose one of "
            f"{TASK_DATASETS[p.task]}"
        )
    if p.dataset != "embedded" and not p.data_path:
        raise ConfigError(f"config key 'probe.data_path' must name the {p.dataset} root")
    if len(p.resolution) != 2 or min(p.resolution) < 1:
        raise ConfigError(f"config key 'probe.resolution' must be [height, width], got {p.resolution}")
    for key in ("epochs", "batch_size", "extract_batch_size"):
        if getattr(p, key) < 1:
            raise ConfigError(f"config key 'probe.{key}' must be at least 1, got {getattr(p, key)}")
    if not 0 < p.min_depth < p.max_depth:
        raise ConfigError(
            f"config keys 'probe.min_depth' < 'probe.max_depth' must hold, got {p.min_depth}, {p.max_depth}"
        )
    try:
        RunDirectory.find_export(p.tokenizer, "tokenizer", WEIGHTS_FILE)
    except FileNotFoundError as err:
        raise ConfigError(f"config key 'probe.tokenizer': {err}") from None


STAGE = Stage(
    name="probe",
    description="a linear / dense / detection head on a tokenizer's frozen features (student or teacher)",
    sections={"probe": ProbeConfig},
    module=_module,
    data=_data,
    export_name=EXPORT_NAME,
    export=_export,
    summary=_summary,
    format_summary=_format,
    prepare=_prepare,
    check=_check,
)
