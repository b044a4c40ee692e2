"""The ``pretrain`` stage: a supervised ViT classifier whose weights a tokenizer then starts from.

The embedded default has no pretrained encoder to adapt, so it first trains one: the
``tokenizer.encoder`` architecture (timm) with a classifier head, on the labelled training images.
The export is the timm state dict, head included: timm loads it as pretrained weights through
``tokenizer.encoder.checkpoint`` (dropping the head, which the tokenizer does not use), and the
tokenizer summary loads the head back to run the encoder's own classifier on the student's tokens.
(In the tokenizer this encoder becomes both the trainable student and the frozen distillation teacher.)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn
from torchmetrics import MeanMetric

from uniflow.config import ConfigError
from uniflow.data.datamodule import UniFlowDataModule
from uniflow.data.embedded import ATTRIBUTES, MULTI_LABEL, NO_LABEL
from uniflow.encoders.timm_encoder import create_timm_vit, timm_normalization
from uniflow.io import atomic_write
from uniflow.nn.embeddings import sincos_2d_position_embedding
from uniflow.run_dir import RunDirectory
from uniflow.stages import Stage
from uniflow.tokenizer.config import EncoderConfig, TokenizerConfig
from uniflow.training.config import OptimConfig, PretrainConfig
from uniflow.training.data import StepDataModule
from uniflow.training.finite import check_finite
from uniflow.training.schedule import adamw_warmup_cosine, weight_decay_groups

HEAD_WEIGHT = "head.weight"


EXPORT_NAME = "encoder.safetensors"


def _fresh(cfg: EncoderConfig) -> EncoderConfig:
    """The architecture without the checkpoint (which is where the export goes, not where it comes from)."""
    return dataclasses.replace(cfg, checkpoint=None)


@torch.no_grad()
def sincos_position_embedding_(model: nn.Module) -> None:
    """Set a timm ViT's patch position embeddings to the 2-D sin-cos table (prefix ones to zero)."""
    grid = model.patch_embed.grid_size
    prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
    model.pos_embed[:, prefix:].copy_(sincos_2d_position_embedding(model.embed_dim, *grid))
    model.pos_embed[:, :prefix].zero_()


class EncoderPretrainModule(L.LightningModule):
    """Cross-entropy training of a timm ViT classifier on ``{"image", "label"}`` batches.

    With ``pretrain.attributes``, linear heads on the classifier's pooled features also predict the
    batches' ``"attributes"`` (cross-entropy; binary cross-entropy for multi-label ones).
    """

    def __init__(
        self,
        encoder: EncoderConfig,
        pretrain: PretrainConfig,
        optim: OptimConfig,
        max_steps: int,
        num_classes: int,
    ):
        super().__init__()
        if encoder.backend != "timm":
            raise ValueError(
                f"encoder pretraining builds timm models; tokenizer.encoder.backend is {encoder.backend!r}"
            )
        if num_classes < 2:
            raise ValueError(f"encoder pretraining needs at least 2 classes, the data has {num_classes}")
        self.encoder_cfg, self.pretrain_cfg, self.optim_cfg, self.max_steps = (
            encoder,
            pretrain,
            optim,
            max_steps,
        )
        self.model = create_timm_vit(_fresh(encoder), num_classes=num_classes)
        self.attribute_heads = nn.ModuleDict(
            {name: nn.Linear(self.model.num_features, ATTRIBUTES[name]) for name in pretrain.attributes}
        )
        if pretrain.sincos_pos_embed and not encoder.pretrained:
            sincos_position_embedding_(self.model)
        mean, std = timm_normalization(encoder, self.model)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.val_accuracy = MeanMetric()
        self.val_attribute_accuracy = nn.ModuleDict({name: MeanMetric() for name in pretrain.attributes})

    def _logits(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Class logits and each attribute head's logits, from one pass of the encoder."""
        pooled = self.model.forward_head(
            self.model.forward_features((images - self.mean) / self.std), pre_logits=True
        )
        heads = {name: head(pooled).float() for name, head in self.attribute_heads.items()}
        return self.model.head(pooled).float(), heads

    def _batch_attributes(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if not self.attribute_heads:
            return {}
        if "attributes" not in batch:
            raise ValueError(
                f"pretrain.attributes={list(self.attribute_heads)} but the batches carry no scene "
                "attributes (only the embedded backend's scenes have them)"
            )
        return batch["attributes"]

    @staticmethod
    def _correct(name: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample correctness (multi-label: every label right)."""
        if name in MULTI_LABEL:
            return ((logits > 0) == (target > 0.5)).all(-1).float()
        return (logits.argmax(-1) == target).float()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits, attribute_logits = self._logits(batch["image"])
        labels = batch["label"]
        terms = {
            "cross_entropy": F.cross_entropy(
                logits, labels, ignore_index=NO_LABEL, label_smoothing=self.pretrain_cfg.label_smoothing
            )
        }
        targets = self._batch_attributes(batch)
        for name, head_logits in attribute_logits.items():
            terms[name] = (
                F.binary_cross_entropy_with_logits(head_logits, targets[name].float())
                if name in MULTI_LABEL
                else F.cross_entropy(head_logits, targets[name])
            )
            self.log(f"train/{name}_accuracy", self._correct(name, head_logits, targets[name]).mean())
        check_finite(self, {k: v.detach() for k, v in terms.items()}, "loss")
        loss = terms.pop("cross_entropy") + self.pretrain_cfg.attribute_weight * sum(terms.values())
        known = labels != NO_LABEL
        accuracy = (logits.argmax(-1)[known] == labels[known]).float().mean()
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/accuracy", accuracy, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        labels = batch["label"]
        known = labels != NO_LABEL
        logits, attribute_logits = self._logits(batch["image"])
        correct = (logits.argmax(-1) == labels)[known].float()
        if correct.numel():
            self.val_accuracy.update(correct)
        self.log("val/accuracy", self.val_accuracy, on_epoch=True, prog_bar=True)
        targets = self._batch_attributes(batch)
        for name, head_logits in attribute_logits.items():
            self.val_attribute_accuracy[name].update(self._correct(name, head_logits, targets[name]))
            self.log(f"val/{name}_accuracy", self.val_attribute_accuracy[name], on_epoch=True)

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.optim_cfg
        params = [p for p in self.parameters() if p.requires_grad]
        groups = weight_decay_groups(params, o.weight_decay, o.lr, "model")
        return adamw_warmup_cosine(groups, o, self.max_steps)

    def save_encoder(self, path: str | Path) -> None:
        """Write the classifier's timm state dict (head included) as safetensors, atomically."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        blob = safetensors_bytes(state, metadata={"format": "pt", "num_classes": str(self.model.num_classes)})
        atomic_write(path, lambda f: f.write(blob))


def load_pretrained_classifier(encoder: EncoderConfig, path: str | Path) -> nn.Module | None:
    """The pretrained encoder's full classifier (head included) from its export; None if it has no head."""
    state = load_file(str(path))
    if HEAD_WEIGHT not in state:
        return None
    model = create_timm_vit(
        dataclasses.replace(_fresh(encoder), pretrained=False), state[HEAD_WEIGHT].shape[0]
    )
    model.load_state_dict(state)
    return model.eval()


def classify_tokens(classifier: nn.Module, prefix: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Run a timm ViT's own final norm, pooling and head on last-block tokens (prefix + patch tokens)."""
    return classifier.forward_head(classifier.norm(torch.cat([prefix, tokens], dim=1)))


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------
def _num_classes(data: UniFlowDataModule) -> int:
    if data.backend == "embedded":
        from uniflow.data.embedded import NUM_CLASSES

        return NUM_CLASSES
    if data.backend == "folder":
        data.setup("fit")
        return len(getattr(data.train_set, "classes", []) or [])
    raise ConfigError(
        "encoder pretraining needs the number of classes, which only the embedded and folder backends "
        "give; point tokenizer.encoder.checkpoint to a pretrained encoder and set pretrain.enabled=false"
    )


def _data(cfg: Any) -> StepDataModule:
    # Only labelled images: the plain photo crops of the embedded mixture carry no class.
    data = dataclasses.replace(cfg.data, photo_fraction=0.0)
    return StepDataModule(UniFlowDataModule.from_config(data, attributes=bool(cfg.pretrain.attributes)))


def _module(cfg: Any) -> EncoderPretrainModule:
    data = UniFlowDataModule.from_config(cfg.data)
    return EncoderPretrainModule(
        cfg.tokenizer.encoder, cfg.pretrain, cfg.optim, cfg.trainer.max_steps, _num_classes(data)
    )


def _export(module: EncoderPretrainModule, trainer: L.Trainer, path: Path) -> dict[str, Any]:
    """Validate the final weights (if the last step was not a validation step) and save them (rank 0)."""
    interval = min(module.trainer.val_check_interval, trainer.max_steps)
    if trainer.global_step % interval != 0:
        trainer.validate(module, datamodule=trainer.datamodule, verbose=False)
    metrics = trainer.callback_metrics
    if trainer.is_global_zero:
        module.save_encoder(path)
    names = ["accuracy"] + [f"{name}_accuracy" for name in module.attribute_heads]
    return {
        f"val_{name}": float(metrics[f"val/{name}"]) if f"val/{name}" in metrics else None for name in names
    }


def _check(cfg: Any) -> None:
    if cfg.tokenizer.encoder.backend != "timm":
        raise ConfigError(
            f"config key 'pretrain.enabled': encoder pretraining builds timm models, but "
            f"tokenizer.encoder.backend is {cfg.tokenizer.encoder.backend!r}"
        )
    unknown = sorted(set(cfg.pretrain.attributes) - set(ATTRIBUTES))
    if unknown:
        raise ConfigError(
            f"config key 'pretrain.attributes': unknown attribute(s) {unknown}; known: {sorted(ATTRIBUTES)}"
        )
    if cfg.pretrain.attributes and cfg.data.backend != "embedded":
        raise ConfigError(
            "config key 'pretrain.attributes': scene attributes exist only for data.backend='embedded', "
            f"not {cfg.data.backend!r}"
        )
    if cfg.data.backend == "ffcv":
        raise ConfigError(
            "config key 'pretrain.enabled': encoder pretraining reads class counts from the embedded or "
            "folder backend, not ffcv; point tokenizer.encoder.checkpoint to a pretrained encoder instead"
        )


def export_path(cfg: Any) -> Path:
    """Where a tokenizer config's pretrained encoder is: ``tokenizer.encoder.checkpoint``, else the pretrain run's export."""
    explicit = cfg.tokenizer.encoder.checkpoint
    return (
        Path(explicit) if explicit else RunDirectory.of(cfg.output_dir, cfg.pretrain.name).export(EXPORT_NAME)
    )


def recipe_changes(cfg: Any) -> list[str]:
    """The keys of the pretrain recipe and encoder architecture on which ``cfg`` and the pretrain run
    whose export it would reuse disagree (empty when there is no such run to compare with).

    A changed recipe would otherwise be silently ignored: the tokenizer reuses an existing export.
    """
    if cfg.tokenizer.encoder.checkpoint:
        return []  # an encoder named explicitly is the user's to vouch for
    saved = RunDirectory.of(cfg.output_dir, cfg.pretrain.name).config
    if not saved.is_file():
        return []
    from uniflow.config import flatten, load_config, to_dict

    try:
        previous = load_config(saved)
    except ConfigError as err:
        raise ConfigError(f"{saved} (the pretrained encoder's run) no longer loads: {err}") from err
    wanted = upstream_config(cfg)
    changed = []
    for section, old_value, new_value in (
        ("pretrain", previous.pretrain, wanted.pretrain),
        ("tokenizer.encoder", previous.tokenizer.encoder, wanted.tokenizer.encoder),
    ):
        old, new = flatten(to_dict(old_value), f"{section}."), flatten(to_dict(new_value), f"{section}.")
        changed += [key for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]
    return changed


def upstream_config(cfg: Any) -> Any:
    """The pretrain-stage config a tokenizer config asks for: its ``pretrain`` section as a run of its own.

    Same encoder architecture, data source and trainer; the pretrain recipe (optim, steps, batch,
    labelled images only) from ``pretrain``. FSDP2 shards the tokenizer; the small classifier
    trains with plain data parallelism.
    """
    from uniflow.stages import schema

    p, trainer = cfg.pretrain, cfg.trainer
    return schema("pretrain")(
        stage="pretrain",
        name=p.name,
        seed=cfg.seed,
        output_dir=cfg.output_dir,
        resume="auto",
        data=dataclasses.replace(
            cfg.data, photo_fraction=0.0, num_train=p.num_train, batch_size=p.batch_size
        ),
        optim=p.optim,
        trainer=dataclasses.replace(
            trainer,
            max_steps=p.max_steps,
            strategy="auto" if trainer.strategy == "fsdp" else trainer.strategy,
        ),
        eval=cfg.eval,
        tokenizer=cfg.tokenizer,
        pretrain=p,
    )


STAGE = Stage(
    name="pretrain",
    description="supervised pretraining of a timm ViT encoder (a classifier) that a tokenizer then adapts",
    # The encoder architecture is the tokenizer section's: the tokenizer config that asks for it
    # and the pretrain run agree on it by construction.
    sections={"tokenizer": TokenizerConfig, "pretrain": PretrainConfig},
    module=_module,
    data=_data,
    export_name=EXPORT_NAME,
    export=_export,
    check=_check,
)
