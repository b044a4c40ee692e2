"""Config sections owned by the training machinery: optimiser and schedule, Trainer, encoder
pretraining (which reuses the optimiser section) and the tokenizer's end-of-run summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from uniflow.config import choice

SCHEDULES = ("cosine", "constant")
# auto: resolved per machine by uniflow.hardware.resolve_precision; the rest are Lightning's names.
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true")
# auto: DDP when there is more than one process, else a single device; fsdp: FSDP2 (fully_shard)
# through Lightning's ModelParallelStrategy, which needs an integer number of devices.
STRATEGIES = ("auto", "ddp", "fsdp")


@dataclass
class OptimConfig:
    lr: float = 2e-4
    encoder_lr: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.0
    warmup_steps: int = 1000
    schedule: str = choice("cosine", *SCHEDULES)
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
    # auto: bf16-mixed where the device computes bf16 natively (CUDA with bf16, AVX512-BF16/AMX CPUs),
    # else 32-true (uniflow/hardware.py says why; the run prints and records its choice).
    precision: str = choice("auto", *PRECISIONS)
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = choice("auto", *STRATEGIES)
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
class PretrainConfig:
    """Supervised pretraining of the encoder a tokenizer starts from (the ``pretrain`` stage).

    A tokenizer config with ``pretrain.enabled`` first makes sure ``tokenizer.encoder.checkpoint``
    exists, running the pretrain stage when it does not: a classifier of the ``tokenizer.encoder``
    architecture trained on the labelled training images (embedded: the scenes' shape labels;
    folder: the class folders). Its export is a timm state dict (classifier head included), so timm
    loads it as pretrained weights and the tokenizer summary can run the encoder's own classifier.
    """

    enabled: bool = False
    # Run name of the pretrain stage: its run directory is <output_dir>/<name>/, and the export is
    # <output_dir>/<name>/encoder.safetensors unless tokenizer.encoder.checkpoint names another path.
    name: str = "encoder"
    max_steps: int = 1000
    batch_size: int = 64
    # The recipe of the pretrain run (its own: the tokenizer's optim section is the tokenizer's).
    # encoder_lr and the EMA are not used by a classifier trained from scratch.
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            lr=1e-3, betas=[0.9, 0.999], weight_decay=0.05, warmup_steps=50, ema_decay=0.0
        )
    )
    label_smoothing: float = 0.0
    # Start the (learnable) position embedding from the 2-D sin-cos table instead of timm's random
    # one: a ViT trained from scratch on little data then learns the spatial layout much sooner
    # (on the embedded scenes 83% vs 59% held-out accuracy after the same 12.8k images).
    sincos_pos_embed: bool = True
    # embedded backend: labelled training scenes (the classifier never sees the plain photo crops).
    num_train: int = 8192
    # embedded backend: scene attributes predicted besides the class, each by a linear head on the
    # same pooled features ("colour", "count", "shapes"; see uniflow.data.embedded.ATTRIBUTES). A
    # shape classifier alone learns to ignore colour, which a real pretrained encoder keeps; these
    # targets keep it (and the count, and the small shapes) in the tokens. The heads are not exported.
    attributes: list[str] = field(default_factory=list)
    # Weight of each attribute's loss beside the class's cross-entropy (weight 1).
    attribute_weight: float = 1.0


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
