"""Hugging Face transformers backend: ViT, CLIP/SigLIP vision, DINOv2, InternViT (remote code)."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import torch

from uniflow.encoders.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderAdapter,
    EncoderFeatures,
    disable_stochastic_layers,
    load_state_dict_file,
)
from uniflow.tokenizer.config import EncoderConfig

log = logging.getLogger(__name__)


WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


# Config fields that transformers vision towers read as plain floats inside forward (attention
# dropout passed to the attention kernel, InternViT's drop_path_rate schedule), so zeroing modules
# after building would not reach them; see disable_stochastic_layers for why they must be 0.
STOCHASTIC_CONFIG_KEYS = (
    "drop_path_rate",
    "attention_dropout",
    "attention_probs_dropout_prob",
    "hidden_dropout_prob",
    "hidden_dropout",
    "dropout",
)


def _vision_config(config):
    return getattr(config, "vision_config", None) or config


def _without_stochastic_layers(config) -> list[str]:
    """Zero the stochastic rates of ``config``'s vision part in place; returns the keys changed."""
    vcfg = _vision_config(config)
    changed = []
    for key in STOCHASTIC_CONFIG_KEYS:
        value = getattr(vcfg, key, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value:
            setattr(vcfg, key, 0.0)
            changed.append(f"{key}={value}")
    return changed


class HFEncoder(EncoderAdapter):
    """Runs the model with ``output_hidden_states=True``; ``hidden_states[1:]`` are the block outputs."""

    all_parameters_used = False

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        local = Path(cfg.name).expanduser()
        if local.exists() and not (local / "config.json").is_file():
            raise FileNotFoundError(
                f"Hugging Face model directory has no config.json: tried {local / 'config.json'}"
            )
        source = str(local) if local.exists() else cfg.name
        # A local directory with only config.json describes the architecture (e.g. inside a saved
        # tokenizer, whose weights file holds the adapted encoder); weights come from elsewhere.
        has_weights = any((local / f).is_file() for f in WEIGHT_FILES) if local.exists() else cfg.pretrained
        config = AutoConfig.from_pretrained(
            source, trust_remote_code=cfg.trust_remote_code, **dict(cfg.kwargs)
        )
        changed = _without_stochastic_layers(config)
        if changed:
            log.warning("%s: set %s to 0 (the student must match its frozen teacher)", source, changed)
        if has_weights:
            model = AutoModel.from_pretrained(source, config=config, trust_remote_code=cfg.trust_remote_code)
        else:
            model = AutoModel.from_config(config, trust_remote_code=cfg.trust_remote_code)
        # Composite models (CLIPModel, SiglipModel) keep the tower in .vision_model.
        self.model = (
            getattr(model, "vision_model", model) if hasattr(model.config, "vision_config") else model
        )
        # Dropout modules built from config fields with other names (remote code).
        disable_stochastic_layers(self.model, f"transformers {source}")
        if cfg.checkpoint:
            missing, unexpected = self.model.load_state_dict(
                load_state_dict_file(cfg.checkpoint), strict=False
            )
            # Pooling/classification heads do not shape the per-block tokens the tokenizer reads.
            missing = [k for k in missing if not k.startswith(("pooler.", "head."))]
            if missing:
                raise ValueError(f"{cfg.checkpoint} is missing {len(missing)} weights, e.g. {missing[:3]}")
            if unexpected:
                log.warning(
                    "ignored %d unexpected keys from %s, e.g. %s",
                    len(unexpected),
                    cfg.checkpoint,
                    unexpected[:3],
                )
        vcfg = _vision_config(model.config)
        patch = vcfg.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        self.width = int(vcfg.hidden_size)
        self.depth = int(vcfg.num_hidden_layers)
        size = getattr(vcfg, "image_size", cfg.image_size)
        self.native_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.set_normalization(*self._normalisation(cfg, source))
        self._interpolate = "interpolate_pos_encoding" in inspect.signature(self.model.forward).parameters

    @staticmethod
    def _normalisation(cfg: EncoderConfig, source: str) -> tuple[tuple, tuple]:
        if cfg.mean and cfg.std:
            return tuple(cfg.mean), tuple(cfg.std)
        try:
            from transformers import AutoImageProcessor

            processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
            return tuple(processor.image_mean), tuple(processor.image_std)
        except (OSError, ValueError, AttributeError):
            log.warning(
                "no image processor for %s; using ImageNet normalisation (set encoder.mean/std)", source
            )
            return IMAGENET_MEAN, IMAGENET_STD

    def forward(self, pixels: torch.Tensor) -> EncoderFeatures:
        grid = self.grid_for(*pixels.shape[-2:])
        extra = {}
        if self._interpolate and tuple(pixels.shape[-2:]) != (self.native_size, self.native_size):
            extra["interpolate_pos_encoding"] = True
        out = self.model(pixel_values=pixels, output_hidden_states=True, return_dict=True, **extra)
        hidden = list(out.hidden_states[1:])
        num_patches = grid[0] * grid[1]
        self.num_prefix_tokens = hidden[0].shape[1] - num_patches
        return EncoderFeatures(
            layers=[h[:, self.num_prefix_tokens :] for h in hidden],
            prefix=[h[:, : self.num_prefix_tokens] for h in hidden],
            grid=grid,
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            self.model.gradient_checkpointing_enable()
        else:
            self.model.gradient_checkpointing_disable()
