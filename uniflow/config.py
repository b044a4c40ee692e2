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
    # EMA of the trainable weights (validation, export and the summary use it); 0 disables it.
    ema_decay: float = 0.9999
    # Ramp the EMA decay as min(ema_decay, (1 + k) / (10 + k)) at update k, so that short runs do not
    # average in their random initialisation; off gives the plain constant-decay EMA.
    ema_warmup: bool = True


@dataclass
class TrainerConfig:
    max_steps: int = 70000
    precision: str = _choice("bf16-mixed", "32-true", "bf16-mixed", "16-mixed", "bf16-true")
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    # auto: DDP when there is more than one process, else a single device; fsdp: FSDP2 (fully_shard)
    # through Lightning's ModelParallelStrategy, which needs an integer number of devices.
    strategy: str = _choice("auto", "auto", "ddp", "fsdp")
    compile: bool = False
    log_every_n_steps: int = 50
    val_every_n_steps: int = 1000
    checkpoint_every_n_steps: int = 1000
    # Keep every step checkpoint (checkpoints/stepNNNNNNN.ckpt) besides last.ckpt; off keeps last.ckpt only.
    keep_step_checkpoints: bool = False
    deterministic: bool = False
    # Intra-op CPU threads per process (torch.set_num_threads); None keeps torch's default.
    num_threads: int | None = None
    # Validation (PSNR/SSIM of one-step reconstructions) reads this many batches of the val split.
    val_batches: int = 4
    # Reconstruction grids of a fixed set of validation images go to TensorBoard this often, decoded
    # with each of grid_sample_steps Euler steps.
    image_every_n_steps: int = 500
    grid_sample_steps: list[int] = field(default_factory=lambda: [1, 8])


@dataclass
class EvalConfig:
    """The benchmark suite (``python -m uniflow eval``); see ``uniflow/evaluation``.

    Every paper benchmark appears in the results table; those not listed in ``benchmarks`` (or not
    implemented yet) say "not run" and why.
    """

    # Registry names (``python -m uniflow eval --list``): embedded_photos, embedded_scenes,
    # imagenet_recon, coco_recon, imagenet_gen, ...
    benchmarks: list[str] = field(default_factory=lambda: ["embedded_photos", "embedded_scenes"])
    # A ``save_pretrained`` tokenizer directory; None: <output_dir>/<name>/tokenizer.
    tokenizer: str | None = None
    # Decoding; None keeps the tokenizer's own (tokenizer.flow.steps / sampler).
    steps: int | None = None
    sampler: str | None = field(default=None, metadata={"choices": (None, "euler", "heun")})
    # Tokenizer autocast; Inception always runs in float32 (the FID protocol).
    precision: str = _choice("32-true", "32-true", "bf16-mixed", "16-mixed")
    # "auto": this rank's CUDA device if there is one, else CPU.
    device: str = "auto"
    batch_size: int = 50
    num_workers: int = 4
    # Decoding noise of sample i is drawn from seed (seed, i): results do not depend on batching or ranks.
    seed: int = 0
    # Samples per benchmark. Embedded sets are generated, so they need a count; a dataset on disk
    # without an entry is evaluated in full. rFID from a few hundred samples is noisy and biased up.
    num_samples: dict[str, int] = field(
        default_factory=lambda: {"embedded_photos": 200, "embedded_scenes": 200}
    )
    # Side of the ADM centre crop for ImageNet and COCO (the paper's 256 px protocol).
    image_size: int = 256
    # ImageNet-1K / COCO 2017 validation images: an image folder (searched recursively) or an FFCV .beton.
    imagenet_val: str | None = None
    coco_val: str | None = None
    # Optional `python -m uniflow ref-stats` files of the same ADM-cropped images: they replace the
    # originals' Inception pass (halving the cost) when their sample count matches.
    imagenet_reference: str | None = None
    coco_reference: str | None = None
    # Generation: an ADM-format .npz of samples to score, and the ADM reference batch
    # (VIRTUAL_imagenet256_labeled.npz, mu/sigma) for gFID.
    generation_samples: str | None = None
    adm_reference: str | None = None
    # FID Inception weights (torch-fidelity format); None resolves them (see uniflow/metrics/inception.py).
    inception_weights: str | None = None
    # torchvision VGG16 weights for LPIPS; None looks in the usual places, else LPIPS is reported n/a.
    lpips_weights: str | None = None
    # Where results.json / results.md go; None: <run dir>/eval.
    output_dir: str | None = None


@dataclass
class TeacherConfig:
    """Supervised pretraining of the encoder the tokenizer starts from (the embedded default's teacher).

    With ``enabled``, ``python -m uniflow train`` first makes sure ``tokenizer.encoder.checkpoint`` exists,
    training a classifier of the ``tokenizer.encoder`` architecture on the labelled training images
    (embedded: the scenes' shape labels; folder/ffcv: the class folders) with the same Trainer and data
    code when it does not. The checkpoint is a timm state dict (classifier head included), so timm
    loads it as pretrained weights and the summary can run the teacher's own classifier.
    """

    enabled: bool = False
    # Run name of the teacher stage: its run directory is <output_dir>/<name>/, and the checkpoint is
    # <output_dir>/<name>/teacher.safetensors unless tokenizer.encoder.checkpoint names another path.
    name: str = "teacher"
    max_steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.05
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    # Start the (learnable) position embedding from the 2-D sin-cos table instead of timm's random
    # one: a ViT trained from scratch on little data then learns the spatial layout much sooner
    # (on the embedded scenes 83% vs 59% held-out accuracy after the same 12.8k images).
    sincos_pos_embed: bool = True
    # embedded backend: labelled training scenes (the teacher never sees the plain photo crops).
    num_train: int = 8192


@dataclass
class SummaryConfig:
    """The evaluation printed (and written to metrics.json) at the end of a tokenizer run.

    Reconstruction PSNR/SSIM on held-out real-photo crops, and linear probes (logistic regression on
    mean-pooled last-layer patch tokens) of the teacher and the trained student on held-out embedded
    scenes, plus the teacher-head transfer accuracy (the teacher's classifier on the student's tokens).
    """

    enabled: bool = True
    photo_crops: int = 256
    # Embedded scenes the probes are fitted on (train split) and scored on (held-out val split).
    probe_train: int = 2048
    probe_test: int = 1024
    sample_steps: int = 1
    batch_size: int = 128


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
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    summary: SummaryConfig = field(default_factory=SummaryConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


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
