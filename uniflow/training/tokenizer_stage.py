"""The ``tokenizer`` stage: UniFlow tokenizer training, its export and its end-of-run summary.

With ``pretrain.enabled`` and no pretrained encoder yet, the ``pretrain`` stage runs first (the
embedded default trains its own tiny encoder); the tokenizer then starts from that export.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import lightning as L

from uniflow.config import ConfigError
from uniflow.data.datamodule import UniFlowDataModule
from uniflow.io import atomic_write_bytes
from uniflow.stages import Stage
from uniflow.tokenizer.config import TokenizerConfig
from uniflow.tokenizer.model import WEIGHTS_FILE
from uniflow.training.callbacks import ReconstructionGrid
from uniflow.training.config import PretrainConfig, SummaryConfig
from uniflow.training.data import StepDataModule
from uniflow.training.run import fingerprints_per_rank

EXPORT_NAME = "tokenizer"
# A complete tokenizer export contains this file (downstream stages look for it).
EXPORT_MARKER = WEIGHTS_FILE


def _module(cfg: Any) -> L.LightningModule:
    from uniflow.training.tokenizer_module import TokenizerModule

    return TokenizerModule(cfg)


def _export(module: Any, trainer: L.Trainer, path: Path) -> dict[str, Any]:
    """EMA weights as a ``from_pretrained`` directory (rank 0), and every rank's weight fingerprint."""
    state = module.export_state()  # a collective under FSDP2: every rank calls it
    fingerprints = fingerprints_per_rank(state, trainer)
    if trainer.is_global_zero:
        module.export(path, state)
    return {"weights_fingerprint_per_rank": fingerprints}


def _summary(cfg: Any, directory: Any) -> dict[str, Any]:
    from uniflow.tokenizer import UniFlowTokenizer
    from uniflow.training.summary import evaluate_tokenizer

    if not cfg.summary.enabled:
        return {}
    tokenizer = UniFlowTokenizer.from_pretrained(directory.export(EXPORT_NAME))
    return evaluate_tokenizer(cfg, tokenizer, directory.root)


def _format(metrics: dict[str, Any]) -> str:
    from uniflow.training.summary import format_summary

    return format_summary(metrics) if "reconstruction" in metrics else ""


def _prepare(cfg: Any, metrics: dict[str, Any]) -> Any:
    """Run the pretrain stage first if the config asks for an encoder that is not there yet."""
    if not cfg.pretrain.enabled:
        return cfg
    from uniflow.stages import get
    from uniflow.training.pretrain import export_path, upstream_config
    from uniflow.training.run import run_stage, timed

    path = export_path(cfg)
    if path.is_file():
        print(f"pretrained encoder: using {path}")
    else:
        upstream = upstream_config(cfg)
        result, metrics["timing_s"]["pretrain"] = timed(run_stage, get("pretrain"), upstream)
        metrics["pretrain"] = {**result.metrics, "steps": result.steps}
        produced = result.directory.export(get("pretrain").export_name)
        if produced != path:  # tokenizer.encoder.checkpoint named another place for it
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, produced.read_bytes())
    encoder = dataclasses.replace(cfg.tokenizer.encoder, checkpoint=str(path))
    return dataclasses.replace(cfg, tokenizer=dataclasses.replace(cfg.tokenizer, encoder=encoder))


def _check_reused_encoder(cfg: Any) -> None:
    """An existing pretrain export is reused only while the recipe and encoder that made it still hold."""
    from uniflow.training.pretrain import export_path, recipe_changes

    path = export_path(cfg)
    changed = recipe_changes(cfg) if path.is_file() else []
    if changed:
        raise ConfigError(
            f"config key {changed[0]!r}: the pretrained encoder {path} was trained with another "
            f"pretrain recipe or encoder (differing keys: {', '.join(changed)}); delete "
            f"{path.parent} to pretrain it again, or set pretrain.name to a new run name"
        )


def _check(cfg: Any) -> None:
    if cfg.optim.ema_decay > 0 and cfg.trainer.precision == "bf16-true":
        # bf16-true casts the whole module, the average included: an update of (1 - decay) times a
        # small difference then rounds away, and the EMA stops moving once the decay passes ~0.996.
        raise ConfigError(
            "config key 'optim.ema_decay' > 0 needs the EMA in float32, which trainer.precision=bf16-true "
            "does not keep; use trainer.precision=bf16-mixed or optim.ema_decay=0"
        )
    if cfg.pretrain.enabled:
        from uniflow.training.pretrain import STAGE as PRETRAIN

        PRETRAIN.check(cfg)  # type: ignore[misc]
        if cfg.pretrain.max_steps < 1:
            raise ConfigError(
                f"config key 'pretrain.max_steps' must be at least 1, got {cfg.pretrain.max_steps}"
            )
        _check_reused_encoder(cfg)
    elif cfg.tokenizer.encoder.checkpoint and not Path(cfg.tokenizer.encoder.checkpoint).is_file():
        raise ConfigError(
            f"config key 'tokenizer.encoder.checkpoint': file not found: {cfg.tokenizer.encoder.checkpoint} "
            "(pretrain.enabled=true trains an encoder there)"
        )


STAGE = Stage(
    name="tokenizer",
    description="UniFlow tokenizer: layer-wise adaptive self-distillation + patch-wise pixel flow decoder",
    sections={"tokenizer": TokenizerConfig, "pretrain": PretrainConfig, "summary": SummaryConfig},
    module=_module,
    data=lambda cfg: StepDataModule(UniFlowDataModule.from_config(cfg.data)),
    export_name=EXPORT_NAME,
    export=_export,
    summary=_summary,
    format_summary=_format,
    prepare=_prepare,
    check=_check,
    callbacks=lambda cfg: [
        ReconstructionGrid(cfg.trainer.image_every_n_steps, cfg.trainer.grid_sample_steps, seed=cfg.seed)
    ],
    find_unused_parameters=lambda cfg, module: not module.tokenizer.student.all_parameters_used,
)
