"""Typed configuration: dataclass schemas, YAML loading with ``_base_`` inheritance, dotted overrides.

This module is the machinery only. Each config section lives beside the code it configures
(``uniflow/tokenizer/config.py``, ``uniflow/data/config.py``, ``uniflow/training/config.py``,
``uniflow/evaluation/config.py``) and the run config is composed in one place, the stage table
(``uniflow.stages``): the common sections of ``RunConfig`` plus the sections of the config's stage.
YAML files under ``experiments/`` are merged onto that schema, so a key that does not exist or a
value of the wrong type fails before any work starts, with a message naming the full key and the
valid choices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

T = TypeVar("T")

BASE_KEY = "_base_"


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


def choice(default: str, *choices: str) -> Any:
    """A string field whose value must be one of ``choices`` (checked on load, named in the error)."""
    return field(default=default, metadata={"choices": choices})


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------
def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    """Read a YAML file, resolving ``_base_`` (a path relative to the file) recursively."""
    path = path.resolve()
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path in seen:
        raise ConfigError(f"cyclic {BASE_KEY} chain: {' -> '.join(map(str, (*seen, path)))}")
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(cfg).__name__}")
    base = cfg.pop(BASE_KEY, None)
    if base is None:
        return cfg
    return OmegaConf.merge(read_yaml(path.parent / str(base), (*seen, path)), cfg)


def _valid_keys(schema: type, dotted: str) -> list[str]:
    """Field names of the dataclass that owns ``dotted``'s last component."""
    node: Any = schema
    for part in dotted.split(".")[:-1]:
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        if part not in fields:
            break
        node = _field_type(node, part)
    return [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []


def _field_type(cls: type, name: str) -> Any:
    default = next(f for f in dataclasses.fields(cls) if f.name == name)
    if default.default_factory is not dataclasses.MISSING:  # nested config section
        return type(default.default_factory())
    return None


def _check_choices(obj: Any, prefix: str = "") -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"config key '{key}' = {value!r} is not valid; choose one of {list(choices)}")
        if dataclasses.is_dataclass(value):
            _check_choices(value, key + ".")


def parse_overrides(overrides: Sequence[str]) -> DictConfig:
    """``["a.b=1", "c=x"]`` -> DictConfig; values are parsed as YAML (numbers, lists, null)."""
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got {bad}")
    return OmegaConf.from_dotlist(list(overrides))


def _stage_schema(layers: Sequence[Any]) -> type:
    """The run schema of the stage the config names (``stage:``, default ``tokenizer``)."""
    from uniflow import stages  # the stage table imports this module: import it when loading, not before

    names = [layer.get("stage") for layer in layers if isinstance(layer, DictConfig) and "stage" in layer]
    return stages.schema(str(names[-1]) if names else stages.DEFAULT_STAGE)


def load_config(
    source: str | Path | Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    schema: type[T] | None = None,
) -> T:
    """Merge a YAML file (or mapping) and dotted overrides onto ``schema`` and return typed objects.

    Without ``schema``, the run schema of the config's stage: the common sections of
    :class:`RunConfig` plus those of the stage named by ``stage:``. Raises :class:`ConfigError`
    naming the offending key for unknown keys, wrong types and values outside a key's choices.
    """
    layers: list[Any] = []
    if isinstance(source, (str, Path)):
        layers.append(read_yaml(Path(source)))
    elif isinstance(source, DictConfig):
        layers.append(source)
    elif isinstance(source, Mapping):
        layers.append(OmegaConf.create(dict(source)))
    elif source is not None:
        raise ConfigError(f"config source must be a path or a mapping, got {type(source).__name__}")
    layers.append(parse_overrides(overrides))
    if schema is None:
        schema = _stage_schema(layers)  # type: ignore[assignment]
    layers.insert(0, OmegaConf.structured(schema))
    try:
        merged = OmegaConf.merge(*layers)
        obj = OmegaConf.to_object(merged)
    except ConfigKeyError as err:
        key = err.full_key or str(err.key)
        raise ConfigError(
            f"unknown config key '{key}'; valid keys here: {_valid_keys(schema, key)}"
        ) from None
    except ValidationError as err:
        raise ConfigError(f"config key '{err.full_key}': {err.msg.splitlines()[0]}") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"invalid config: {err}") from None
    _check_choices(obj)
    return obj  # type: ignore[return-value]


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as plain containers (for YAML/JSON and hyper-parameter logging)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings (e.g. :func:`to_dict`'s) as one mapping of dotted keys to leaf values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
