"""The MLLM stage's LightningModule, its FSDP2 layout and its export (``mllm/``).

Export layout::

    mllm/config.json                 the mllm section, the vision source and its model hash
    mllm/connector.safetensors       the connector (stage 2 starts from a stage-1 export of it)
    mllm/language_model.safetensors  what of the LM trained: the LoRA adapters or the full LM (absent
                                     when the LM was frozen)

:func:`load_exported_probe` rebuilds the probe from it (the frozen parts come from where the config
says: the tokenizer run and the LM directory) and checks that every exported tensor found its place.
Checkpoints keep only the trainable tensors too: the frozen LM and encoder are not copied into every
``last.ckpt``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn

from uniflow.config import to_dict
from uniflow.io import atomic_path, atomic_write_text
from uniflow.training.finite import CheckedGradientClipping, check_finite
from uniflow.training.schedule import adamw_warmup_cosine, weight_decay_groups
from uniflow.understanding.mllm.build import (
    VisionTokens,
    build_probe,
    describe,
    load_language_model,
    vision_source,
)
from uniflow.understanding.mllm.config import MLLMConfig
from uniflow.understanding.mllm.model import MLLMProbe

EXPORT_NAME = "mllm"
EXPORT_CONFIG = "config.json"
CONNECTOR_FILE = "connector.safetensors"
LM_FILE = "language_model.safetensors"
CONNECTOR_PREFIX = "connector."
LM_PREFIX = "language_model."


def decoder_layers(causal_lm: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a Hugging Face causal LM (``model.layers`` in Llama, Mistral, Qwen, SmolLM)."""
    layers = getattr(getattr(causal_lm, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"no decoder layers at model.layers in {type(causal_lm).__name__}")
    return layers


def shard_probe(probe: MLLMProbe, mesh: Any) -> None:
    """FSDP2 ``fully_shard`` units of the probe on the data-parallel ``mesh``, in place.

    Each decoder layer is a unit (the 7B LM's 32 layers: one layer's weights gathered at a time), then
    the LM (embeddings, final norm, head), the frozen vision encoder, and the probe as the root, which
    also holds the small connector. Works on a probe built on the meta device (nothing is allocated).
    """
    from torch.distributed.fsdp import fully_shard

    lm = probe.causal_lm
    for layer in decoder_layers(lm):
        fully_shard(layer, mesh=mesh)
    fully_shard(lm, mesh=mesh)
    if isinstance(probe.vision, nn.Module):
        fully_shard(probe.vision, mesh=mesh)
    fully_shard(probe, mesh=mesh)


class MLLMModule(CheckedGradientClipping, L.LightningModule):
    """Trains :class:`MLLMProbe` on collated LLaVA batches: the LM's cross entropy on the answers."""

    def __init__(self, cfg: Any, language_model: tuple[nn.Module, Any] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        m: MLLMConfig = cfg.mllm
        source, self.image_size = vision_source(m)
        self.vision_description = source.description
        self.vision_hash = source.model_hash()
        lm, tokenizer = (
            language_model if language_model is not None else load_language_model(m.language_model)
        )
        self.probe = build_probe(m, lm, tokenizer, VisionTokens(source, m.layer))
        if m.connector:
            load_connector(self.probe, m.connector)
        # Checkpoints hold the trainable tensors only (on_save_checkpoint); loading them is partial.
        self.strict_loading = False
        self._configured = False

    def configure_model(self) -> None:
        if self._configured:
            return
        self._configured = True
        if getattr(self, "_device_mesh", None) is not None:  # ModelParallelStrategy: FSDP2
            shard_probe(self.probe, self.device_mesh["data_parallel"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.probe(batch)
        check_finite(self, {"cross_entropy": loss.detach()}, "loss")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["ids"]))
        return loss

    def trainable_names(self) -> list[str]:
        return [name for name, p in self.named_parameters() if p.requires_grad]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = set(self.trainable_names())
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.cfg.optim
        params = [p for p in self.probe.parameters() if p.requires_grad]
        groups = weight_decay_groups(params, o.weight_decay, o.lr, "probe")
        return adamw_warmup_cosine(groups, o, self.cfg.trainer.max_steps)

    def export_state(self) -> dict[str, torch.Tensor]:
        """The trainable tensors by probe name, unsharded (a collective under FSDP2: every rank calls it)."""
        if getattr(self, "_device_mesh", None) is not None:
            from uniflow.training.tokenizer_module import full_state_dict

            state = full_state_dict(self.probe)
        else:
            state = self.probe.state_dict()
        trainable = {name for name, p in self.probe.named_parameters() if p.requires_grad}
        return {k: v.detach().float().cpu().contiguous() for k, v in state.items() if k in trainable}

    def export(self, directory: Path, state: dict[str, torch.Tensor]) -> None:
        """Write ``state`` (from :meth:`export_state`) and the config as the ``mllm/`` export; rank 0 only."""
        directory.mkdir(parents=True, exist_ok=True)
        parts = {
            CONNECTOR_FILE: {
                k[len(CONNECTOR_PREFIX) :]: v for k, v in state.items() if k.startswith(CONNECTOR_PREFIX)
            },
            LM_FILE: {k[len(LM_PREFIX) :]: v for k, v in state.items() if k.startswith(LM_PREFIX)},
        }
        for name, tensors in parts.items():
            if tensors:
                with atomic_path(directory / name) as tmp:
                    save_file(tensors, str(tmp), metadata={"format": "pt"})
        info = {
            "mllm": to_dict(self.cfg.mllm),
            "settings": describe(self.cfg.mllm),
            "vision_description": self.vision_description,
            "vision_model_hash": self.vision_hash,
            "image_size": self.image_size,
        }
        atomic_write_text(directory / EXPORT_CONFIG, json.dumps(info, indent=2))


def load_connector(probe: MLLMProbe, reference: str | Path) -> None:
    """Start the probe's connector from an MLLM run's export (stage 1 -> stage 2)."""
    from uniflow.run_dir import RunDirectory

    directory = RunDirectory.find_export(reference, EXPORT_NAME, marker=CONNECTOR_FILE)
    probe.connector.load_state_dict(load_file(str(directory / CONNECTOR_FILE)))


def read_export_config(directory: str | Path) -> dict[str, Any]:
    from uniflow.run_dir import RunDirectory

    export = RunDirectory.find_export(directory, EXPORT_NAME, marker=EXPORT_CONFIG)
    return {**json.loads((export / EXPORT_CONFIG).read_text()), "directory": str(export)}


def export_mllm_config(info: dict[str, Any]) -> MLLMConfig:
    """The mllm section recorded in an export, as the dataclass."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(MLLMConfig), info["mllm"]))  # type: ignore[return-value]


def load_exported_probe(
    reference: str | Path, language_model: tuple[nn.Module, Any] | None = None
) -> tuple[MLLMProbe, dict[str, Any]]:
    """The probe of an MLLM run (run directory or ``mllm/`` export), in eval mode, and its export config.

    The vision tokens' model hash must be the recorded one: a tokenizer run retrained since would
    otherwise silently feed the connector tokens it never saw.
    """
    info = read_export_config(reference)
    m = export_mllm_config(info)
    source, _ = vision_source(m)
    if source.model_hash() != info["vision_model_hash"]:
        raise ValueError(
            f"the vision tokens of {m.tokenizer} ({m.vision}) are not those the MLLM run at {info['directory']} "
            "was trained on (model hash differs): the tokenizer run changed since; retrain the probe"
        )
    lm, tokenizer = language_model if language_model is not None else load_language_model(m.language_model)
    m = dataclasses.replace(
        m, language_model=dataclasses.replace(m.language_model, activation_checkpointing=False)
    )
    probe = build_probe(m, lm, tokenizer, VisionTokens(source, m.layer))
    directory = Path(info["directory"])
    probe.connector.load_state_dict(load_file(str(directory / CONNECTOR_FILE)))
    if (directory / LM_FILE).is_file():
        tensors = {LM_PREFIX + k: v for k, v in load_file(str(directory / LM_FILE)).items()}
        missing = set(tensors) - set(probe.state_dict())
        if missing:
            raise ValueError(
                f"{directory / LM_FILE} holds tensors the probe does not have, e.g. {sorted(missing)[:3]}"
            )
        probe.load_state_dict(tensors, strict=False)
    return probe.eval(), info
