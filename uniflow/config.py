"""Typed configuration: dataclass schemas, YAML loading with ``_base_`` inheritance, dotted overrides.

Every run is described by one :class:`RunConfig`. YAML files under ``experiments/`` are merged onto
the schema, so a key that does not exist or a value of the wrong type fails before any work starts,
with a message naming the full key and the valid choices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

T = TypeVar("T")

BASE_KEY = "_base_"


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


def _choice(default: str, *choices: str) -> Any:
    return field(default=default, metadata={"choices": choices})


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------
@dataclass
class EncoderConfig:
    """Which pretrained vision encoder is adapted (student) and kept frozen (teacher)."""

    backend: str = _choice("timm", "timm", "open_clip", "hf")
    # timm model name, open_clip model name, or Hugging Face model id / local directory.
    name: str = "vit_tiny_patch16_224"
    # Fetch weights from the backend's hub (timm/open_clip pretrained tag, HF id); needs a network.
    pretrained: bool = False
    # open_clip pretrained tag (e.g. "dfn2b"); ignored by the other backends.
    pretrained_tag: str | None = None
    # Local weights file (.pth/.pt/.bin/.safetensors) loaded after the model is built.
    checkpoint: str | None = None
    # Resolution the encoder is built for (position embeddings are resampled by the backend).
    image_size: int = 224
    # Extra constructor arguments, e.g. timm's embed_dim/depth/num_heads/patch_size for a custom ViT.
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Input normalisation override; None uses the encoder's own (from its pretrained config).
    mean: list[float] | None = None
    std: list[float] | None = None
    # Hugging Face remote code (InternViT).
    trust_remote_code: bool = False


@dataclass
class DistillConfig:
    """Layer-wise adaptive self-distillation (UNIFLOW.md section 3)."""

    # adaptive: w_l from beta and alpha_l; hierarchical: w_l = l/L normalised; uniform: 1/L;
    # last: only the last layer; none: no distillation term.
    mode: str = _choice("adaptive", "adaptive", "hierarchical", "uniform", "last", "none")
    beta: float = 2.0
    normalization: str = _choice("paper", "paper", "figure", "softmax_product")
    # 1-based subset of encoder blocks to distil; None = all blocks.
    layers: list[int] | None = None


@dataclass
class FlowConfig:
    """Rectified flow used by the patch-wise decoder (and shared with the generators)."""

    # t ~ sigmoid(N(mean, std)) with probability logit_normal_prob, else U(0, 1); per patch.
    logit_normal_prob: float = 0.9
    logit_normal_mean: float = 0.0
    logit_normal_std: float = 1.0
    sampler: str = _choice("euler", "euler", "heun")
    steps: int = 1


@dataclass
class DecoderConfig:
    """Latent projection, up projection, global transformer blocks and patch-wise flow head."""

    latent_dim: int = 64
    # 2x2 pixel-unshuffle of the student tokens before the latent projection (paper's ratio-28).
    token_merge: bool = False
    width: int = 1024
    gtb_depth: int = 6
    gtb_heads: int = 16
    mlp_ratio: float = 4.0
    head_depth: int = 12
    head_width: int = 1024


@dataclass
class TokenizerConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    # Training resolution (images are resized to it by the data pipeline).
    image_size: int = 448
    lambda_distill: float = 1.0
    lambda_flow: float = 1.0
    # Optional LPIPS term on the one-step estimate x_hat = x_t - t * v (off in the paper).
    lambda_lpips: float = 0.0
    lpips_weights: str | None = None
    # Activation checkpointing of encoder blocks and GTB (trades compute for memory).
    grad_checkpointing: bool = False


# --------------------------------------------------------------------------------------------------
# Data, optimisation, trainer
# --------------------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    backend: str = _choice("embedded", "embedded", "folder", "ffcv")
    # folder: ImageFolder roots; ffcv: .beton files.
    train_path: str | None = None
    val_path: str | None = None
    image_size: int = 64
    batch_size: int = 64
    num_workers: int = 2
    # embedded backend: number of generated training / validation samples.
    num_train: int = 4096
    num_val: int = 512
    seed: int = 0
    # embedded backend: share of samples that are plain real-photo crops (label -1) rather than
    # labelled shape scenes; 0 for supervised classification, >0 so a tokenizer sees natural images.
    photo_fraction: float = 0.5
    # embedded backend: render each split once into memory (uint8; 50 MB per 4096 images at 64 px).
    cache: bool = True
    # folder/ffcv training: random-resized-crop area range; evaluation uses a centre square crop.
    crop_scale: list[float] = field(default_factory=lambda: [0.35, 1.0])
    # folder backend: "classes" (ImageFolder subfolders), "flat" (no labels), or "auto" (by layout).
    folder_mode: str = _choice("auto", "auto", "classes", "flat")
    # ffcv backend: keep the file in the OS page cache (else read per batch, QUASI_RANDOM order).
    ffcv_os_cache: bool = True


@dataclass
class OptimConfig:
    lr: float = 2e-4
    encoder_lr: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.0
    warmup_steps: int = 1000
    schedule: str = _choice("cosine", "cosine", "constant")
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.9999


@dataclass
class TrainerConfig:
    max_steps: int = 70000
    precision: str = _choice("bf16-mixed", "32-true", "bf16-mixed", "16-mixed", "bf16-true")
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = _choice("auto", "auto", "ddp", "fsdp")
    compile: bool = False
    log_every_n_steps: int = 50
    val_every_n_steps: int = 1000
    checkpoint_every_n_steps: int = 1000
    deterministic: bool = False


@dataclass
class RunConfig:
    name: str = "uniflow"
    seed: int = 0
    output_dir: str = "runs"
    # "auto": continue from <output_dir>/<name>/checkpoints/last.ckpt if it exists; or a path; or None.
    resume: str | None = None
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------
def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
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
    return OmegaConf.merge(_read_yaml(path.parent / str(base), (*seen, path)), cfg)


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


def load_config(
    source: str | Path | Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    schema: type[T] = RunConfig,  # type: ignore[assignment]
) -> T:
    """Merge a YAML file (or mapping) and dotted overrides onto ``schema`` and return typed objects.

    Raises :class:`ConfigError` naming the offending key for unknown keys, wrong types and values
    outside a key's choices.
    """
    layers: list[Any] = [OmegaConf.structured(schema)]
    if isinstance(source, (str, Path)):
        layers.append(_read_yaml(Path(source)))
    elif isinstance(source, DictConfig):
        layers.append(source)
    elif isinstance(source, Mapping):
        layers.append(OmegaConf.create(dict(source)))
    elif source is not None:
        raise ConfigError(f"config source must be a path or a mapping, got {type(source).__name__}")
    layers.append(parse_overrides(overrides))
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


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def load_tokenizer_config(
    source: str | Path | Mapping[str, Any], overrides: Sequence[str] = ()
) -> TokenizerConfig:
    """A :class:`TokenizerConfig` from a run config (with a ``tokenizer`` section) or a bare tokenizer config.

    Overrides are relative to the file's top level (``tokenizer.decoder.width=...`` for a run config).
    """
    raw = _read_yaml(Path(source)) if isinstance(source, (str, Path)) else OmegaConf.create(dict(source))
    if "tokenizer" in raw:
        return load_config(raw, overrides, RunConfig).tokenizer
    return load_config(raw, overrides, TokenizerConfig)
