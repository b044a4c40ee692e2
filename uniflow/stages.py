"""The table of stages: what ``python -m uniflow train CONFIG`` can run, selected by the config's ``stage:``.

A stage is a spec of builders over the shared machinery (``uniflow.training.run``: Trainer,
strategies, resume, atomic checkpoints, the non-finite stop, TensorBoard): its config sections, a
LightningModule factory, a data factory, an export and an end-of-run summary. The built-in stages
are one row each in :data:`BUILTIN`, imported only when used. Adding a stage is a package with its
``Stage`` object, one row here (or :func:`register` from the user's own code) and its YAML files;
nothing else in the core changes. A name is registered once: a second registration is refused.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uniflow.config import ConfigError
from uniflow.data.config import DataConfig
from uniflow.evaluation.config import EvalConfig
from uniflow.training.config import OptimConfig, TrainerConfig

# stage name -> "module:attribute" of its Stage object; imported lazily so `--help` stays fast and
# a stage's heavy dependencies load only when it runs.
BUILTIN: dict[str, str] = {
    "pretrain": "uniflow.training.pretrain:STAGE",
    "probe": "uniflow.understanding.probe_stage:STAGE",
    "generator": "uniflow.training.generator_stage:STAGE",
    "mllm": "uniflow.understanding.mllm.stage:STAGE",
    "tokenizer": "uniflow.training.tokenizer_stage:STAGE",
}
DEFAULT_STAGE = "tokenizer"


@dataclass
class RunConfig:
    """The sections every run has; a stage adds its own (``uniflow.stages.schema``)."""

    # Which stage `python -m uniflow train` runs (`python -m uniflow train --help` lists them).
    stage: str = "tokenizer"
    name: str = "uniflow"
    seed: int = 0
    output_dir: str = "runs"
    # "auto": continue from <output_dir>/<name>/checkpoints/last.ckpt if it exists; or a path; or None.
    resume: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


@dataclass(frozen=True)
class Stage:
    """How one stage is built, trained, exported and summarised. Callables receive the run config."""

    name: str
    description: str
    # Config sections this stage adds to the common ones of RunConfig (name -> dataclass).
    sections: Mapping[str, type]
    # cfg -> LightningModule; cfg -> LightningDataModule.
    module: Callable[[Any], Any]
    data: Callable[[Any], Any]
    # The product's name in the run directory (a file or a directory).
    export_name: str
    # (module, trainer, export path) -> extra metrics. Called on every rank (FSDP gathers are
    # collectives); only rank 0 writes.
    export: Callable[[Any, Any, Path], dict[str, Any]]
    # (cfg, run directory) -> summary metrics, on rank 0 after the export; None: no summary.
    summary: Callable[[Any, Any], dict[str, Any]] | None = None
    # (summary metrics) -> printable lines.
    format_summary: Callable[[dict[str, Any]], str] | None = None
    # (cfg, metrics) -> cfg: run what this stage needs first (an upstream stage), record its metrics.
    prepare: Callable[[Any, dict[str, Any]], Any] | None = None
    # cfg -> None: config problems that can be seen before any work (raise ConfigError).
    check: Callable[[Any], None] | None = None
    # cfg -> callbacks added to the shared ones (e.g. image grids).
    callbacks: Callable[[Any], list[Any]] = field(default=lambda cfg: [])
    # (cfg, module) -> DDP must search for unused parameters (encoders with unused heads).
    find_unused_parameters: Callable[[Any, Any], bool] = field(default=lambda cfg, module: False)


_REGISTRY: dict[str, Stage] = {}


def register(stage: Stage) -> Stage:
    """Add ``stage`` to the table; a name that is already taken is refused (two definitions would race)."""
    if stage.name in _REGISTRY or (stage.name in BUILTIN and _load_builtin(stage.name) is not stage):
        raise ValueError(f"stage {stage.name!r} is already registered")
    _REGISTRY[stage.name] = stage
    return stage


def unregister(name: str) -> None:
    """Remove a stage registered with :func:`register` (tests define toy stages and clean up)."""
    if name in BUILTIN:
        raise ValueError(f"stage {name!r} is built in and cannot be removed")
    _REGISTRY.pop(name, None)


def _load_builtin(name: str) -> Stage:
    module, attribute = BUILTIN[name].split(":")
    stage = getattr(importlib.import_module(module), attribute)
    _REGISTRY.setdefault(name, stage)
    return stage


def names() -> list[str]:
    return sorted({*BUILTIN, *_REGISTRY})


def get(name: str) -> Stage:
    """The stage called ``name``; a ConfigError listing the stages if there is none."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in BUILTIN:
        return _load_builtin(name)
    raise ConfigError(f"config key 'stage' = {name!r} is not a stage; choose one of {names()}")


_SCHEMAS: dict[str, tuple[Stage, type[RunConfig]]] = {}


def schema(name: str) -> type[RunConfig]:
    """RunConfig with the sections of stage ``name`` added: the schema a config of that stage loads onto.

    Built once per stage object, so two loads of one config compare equal.
    """
    stage = get(name)
    cached = _SCHEMAS.get(name)
    if cached is not None and cached[0] is stage:
        return cached[1]
    common = {f.name for f in dataclasses.fields(RunConfig)}
    clashes = sorted(common & set(stage.sections))
    if clashes:
        raise ValueError(f"stage {name!r} redefines the common config sections {clashes}")
    extra = [(key, section, field(default_factory=section)) for key, section in stage.sections.items()]
    composed = dataclasses.make_dataclass(f"RunConfig[{name}]", extra, bases=(RunConfig,))
    _SCHEMAS[name] = (stage, composed)
    return composed
