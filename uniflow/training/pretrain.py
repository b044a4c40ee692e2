"""Teacher pretraining: a supervised ViT classifier whose weights the tokenizer then starts from.

The embedded default has no pretrained encoder to adapt, so it first trains one: the
``tokenizer.encoder`` architecture (timm) with a classifier head, on the labelled training images.
The checkpoint is the timm state dict, head included: timm loads it as pretrained weights through
``tokenizer.encoder.checkpoint`` (dropping the head, which the tokenizer does not use), and the
summary loads the head back to run the teacher's own classifier on the student's tokens.
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

from uniflow.config import EncoderConfig, TeacherConfig
from uniflow.data.embedded import NO_LABEL
from uniflow.encoders.timm_encoder import create_timm_vit, timm_normalization
from uniflow.io import atomic_write
from uniflow.nn.embeddings import sincos_2d_position_embedding
from uniflow.training.finite import check_finite
from uniflow.training.schedule import adamw_warmup_cosine, weight_decay_groups

HEAD_WEIGHT = "head.weight"


def _fresh(cfg: EncoderConfig) -> EncoderConfig:
    """The architecture without the checkpoint (which is where the teacher goes, not where it comes from)."""
    return dataclasses.replace(cfg, checkpoint=None)


@torch.no_grad()
def sincos_position_embedding_(model: nn.Module) -> None:
    """Set a timm ViT's patch position embeddings to the 2-D sin-cos table (prefix ones to zero)."""
    grid = model.patch_embed.grid_size
    prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
    model.pos_embed[:, prefix:].copy_(sincos_2d_position_embedding(model.embed_dim, *grid))
    model.pos_embed[:, :prefix].zero_()


class TeacherModule(L.LightningModule):
    """Cross-entropy training of a timm ViT classifier on ``{"image", "label"}`` batches."""

    def __init__(self, encoder: EncoderConfig, teacher: TeacherConfig, num_classes: int):
        super().__init__()
        if encoder.backend != "timm":
            raise ValueError(
                f"teacher pretraining builds timm models; tokenizer.encoder.backend is {encoder.backend!r}"
            )
        if num_classes < 2:
            raise ValueError(f"teacher pretraining needs at least 2 classes, the data has {num_classes}")
        self.encoder_cfg, self.teacher_cfg = encoder, teacher
        self.model = create_timm_vit(_fresh(encoder), num_classes=num_classes)
        if teacher.sincos_pos_embed and not encoder.pretrained:
            sincos_position_embedding_(self.model)
        mean, std = timm_normalization(encoder, self.model)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.val_accuracy = MeanMetric()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        labels = batch["label"]
        loss = F.cross_entropy(
            logits.float(), labels, ignore_index=NO_LABEL, label_smoothing=self.teacher_cfg.label_smoothing
        )
        check_finite(self, {"cross_entropy": loss.detach()}, "loss")
        known = labels != NO_LABEL
        accuracy = (logits.argmax(-1)[known] == labels[known]).float().mean()
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/accuracy", accuracy, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        labels = batch["label"]
        known = labels != NO_LABEL
        correct = (self(batch["image"]).argmax(-1) == labels)[known].float()
        if correct.numel():
            self.val_accuracy.update(correct)
        self.log("val/accuracy", self.val_accuracy, on_epoch=True, prog_bar=True)

    def configure_optimizers(self) -> dict[str, Any]:
        t = self.teacher_cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = weight_decay_groups(params, t.weight_decay, t.lr, "model")
        return adamw_warmup_cosine(groups, t.betas, t.max_steps, t.warmup_steps, "cosine", t.min_lr_ratio)

    def save_teacher(self, path: str | Path) -> None:
        """Write the classifier's timm state dict (head included) as safetensors, atomically."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        blob = safetensors_bytes(state, metadata={"format": "pt", "num_classes": str(self.model.num_classes)})
        atomic_write(path, lambda f: f.write(blob))


def load_teacher_classifier(encoder: EncoderConfig, path: str | Path) -> nn.Module | None:
    """The teacher's full classifier (head included) from its checkpoint; None if it has no head."""
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
