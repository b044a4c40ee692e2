"""A trained generator as one object: the model, the latent statistics it was trained in, its tokenizer.

The export directory (``<run>/generator/``)::

    config.yaml                 the generator section, the latent shape, the image side, the class
                                names, the tokenizer (path and SHA-256 of its weights)
    model.safetensors           the generator's weights (the EMA when the run kept one)
    latent_stats.safetensors    the per-channel mean/std the model's latents were standardised with

Samples come out standardised; :meth:`LatentGenerator.sample_latents` un-normalises them with the
statistics of the export, so they are latents the tokenizer decodes (forgetting the inverse
normalisation is how whole runs are lost: the round trip is tested). The tokenizer is loaded from
the recorded path and refused if its weights are not the ones the latents came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from torch import nn

from uniflow.config import load_config, to_dict
from uniflow.generation.ar import ARFlow
from uniflow.generation.config import GeneratorConfig, SamplingConfig
from uniflow.generation.dit import FlowDiT
from uniflow.generation.latent_stats import LatentNormalizer
from uniflow.io import atomic_path, atomic_write_bytes, atomic_write_text

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
STATS_FILE = "latent_stats.safetensors"
EXPORT_NAME = "generator"

Generator = FlowDiT | ARFlow


def build_generator(cfg: GeneratorConfig, latent_shape: Sequence[int], num_classes: int) -> Generator:
    """The model ``cfg`` names for latents ``C x h x w`` and ``num_classes`` classes (+ the null class)."""
    channels, h, w = latent_shape
    cls = FlowDiT if cfg.model == "flowdit" else ARFlow
    kwargs: dict[str, Any] = {
        "in_channels": channels,
        "input_size": (h, w),
        "num_classes": num_classes,
        **dict(cfg.kwargs),
    }
    try:
        return cls.from_name(cfg.size, **kwargs) if cfg.size else cls(**kwargs)
    except TypeError as err:  # an unknown key in generator.kwargs
        raise ValueError(f"generator.kwargs do not fit {cls.__name__}: {err}") from None


@dataclass(frozen=True)
class TokenizerReference:
    """Which tokenizer made the latents: the export's path and the SHA-256 of its weights file."""

    path: str
    sha256: str

    @classmethod
    def of(cls, export: str | Path) -> TokenizerReference:
        from uniflow.metrics.inception import sha256_file
        from uniflow.tokenizer.model import WEIGHTS_FILE as TOKENIZER_WEIGHTS

        export = Path(export).resolve()
        return cls(str(export), sha256_file(export / TOKENIZER_WEIGHTS))

    def load(self, map_location: str | torch.device = "cpu") -> Any:
        """The tokenizer, after checking that its weights are the recorded ones (a retrained run is refused)."""
        from uniflow.metrics.inception import sha256_file
        from uniflow.tokenizer import UniFlowTokenizer
        from uniflow.tokenizer.model import WEIGHTS_FILE as TOKENIZER_WEIGHTS

        found = sha256_file(Path(self.path) / TOKENIZER_WEIGHTS)
        if found != self.sha256:
            raise ValueError(
                f"the tokenizer at {self.path} is not the one this generator's latents came from "
                f"(weights sha256 {found[:12]}..., recorded {self.sha256[:12]}...)"
            )
        return UniFlowTokenizer.from_pretrained(self.path, map_location)


class LatentGenerator(nn.Module):
    """A generator with the statistics of its latents and a reference to the tokenizer that decodes them."""

    def __init__(
        self,
        cfg: GeneratorConfig,
        latent_shape: Sequence[int],
        image_size: int,
        classes: Sequence[str],
        normalizer: LatentNormalizer,
        tokenizer: TokenizerReference,
        model: Generator | None = None,
        weights: str = "live",
    ):
        super().__init__()
        self.cfg = cfg
        self.latent_shape = tuple(int(x) for x in latent_shape)
        # The side of the images the latents encode: decoded samples are cropped back to it.
        self.image_size = int(image_size)
        self.classes = list(classes)
        if normalizer.channels != self.latent_shape[0]:
            raise ValueError(
                f"latent statistics have {normalizer.channels} channels, the latents {self.latent_shape[0]}"
            )
        self.normalizer = normalizer
        self.tokenizer_ref = tokenizer
        # Which weights the export holds ("EMA (decay d)" or "live"): recorded with every score.
        self.weights = weights
        self.model = model if model is not None else build_generator(cfg, self.latent_shape, len(classes))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(
        self, directory: str | Path, state: dict[str, torch.Tensor] | None = None, weights: str | None = None
    ) -> None:
        """Write the export; ``state`` replaces the model's own weights (the EMA's, gathered under FSDP2),
        and ``weights`` says which they are."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = state if state is not None else self.model.state_dict()
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        atomic_write_bytes(directory / WEIGHTS_FILE, save_safetensors(tensors, metadata={"format": "pt"}))
        with atomic_path(directory / STATS_FILE) as tmp:
            self.normalizer.save(tmp)
        meta = {
            "generator": to_dict(self.cfg),
            "latent_shape": list(self.latent_shape),
            "image_size": self.image_size,
            "classes": self.classes,
            "weights": weights or self.weights,
            "tokenizer": {"path": self.tokenizer_ref.path, "sha256": self.tokenizer_ref.sha256},
        }
        atomic_write_text(directory / CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.create(meta)))

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, map_location: str | torch.device = "cpu"
    ) -> LatentGenerator:
        """Load an export written by :meth:`save_pretrained` (a run directory or the export itself)."""
        from uniflow.run_dir import RunDirectory

        directory = RunDirectory.find_export(directory, EXPORT_NAME, WEIGHTS_FILE)
        meta = OmegaConf.to_container(OmegaConf.load(directory / CONFIG_FILE))
        assert isinstance(meta, dict)
        cfg = load_config(meta["generator"], schema=GeneratorConfig)
        state = load_file(str(directory / WEIGHTS_FILE), device=str(map_location))
        if (
            cfg.model == "flowdit"
            and "qk_norm" not in cfg.kwargs
            and any(k.endswith(".q_norm.weight") for k in state)
        ):
            # Written while QK-norm was FlowDiT's default (before it followed LightningDiT's release).
            cfg = replace(cfg, kwargs={**cfg.kwargs, "qk_norm": True})
        generator = cls(
            cfg,
            meta["latent_shape"],
            meta["image_size"],
            meta["classes"],
            LatentNormalizer.load(directory / STATS_FILE),
            TokenizerReference(**meta["tokenizer"]),
            weights=meta["weights"],
        )
        generator.model.load_state_dict(state)
        return generator.to(map_location).eval()

    # ------------------------------------------------------------------ sampling
    def check_labels(self, labels: torch.Tensor) -> None:
        if labels.dim() != 1 or labels.dtype != torch.int64:
            raise ValueError(f"expected int64 labels of shape (B,), got {labels.dtype} {tuple(labels.shape)}")
        if len(labels) and not (int(labels.min()) >= 0 and int(labels.max()) < self.num_classes):
            raise ValueError(
                f"labels must be class indices in [0, {self.num_classes}), got {labels.tolist()}"
            )

    @torch.no_grad()
    def decode(
        self, tokenizer: Any, z: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Images ``B x 3 x S x S`` in [0, 1] of un-normalised latents ``z`` (S: the cache's image side)."""
        size = (self.image_size, self.image_size)
        return tokenizer.decode(z, steps=self.cfg.sampling.decode_steps, size=size, generator=generator)

    @torch.no_grad()
    def sample_latents(
        self,
        labels: torch.Tensor,
        sampling: SamplingConfig | None = None,
        generator: torch.Generator | None = None,
        cfg_scale: float | None = None,
        model: Generator | None = None,
    ) -> torch.Tensor:
        """Latents ``B x C x h x w`` for ``labels``, un-normalised: what the tokenizer decodes.

        ``sampling`` defaults to the export's; ``cfg_scale`` overrides its guidance scale; ``model``
        replaces the bundle's own (training samples with its EMA copy).
        """
        self.check_labels(labels)
        s = sampling or self.cfg.sampling
        scale = s.cfg_scale if cfg_scale is None else cfg_scale
        model = model if model is not None else self.model
        labels = labels.to(self.normalizer.mean.device)
        if isinstance(model, FlowDiT):
            interval = tuple(s.guidance_interval) if s.guidance_interval else None
            z = model.sample(labels, s.steps, s.sampler, scale, interval, generator=generator)  # type: ignore[arg-type]
        else:
            z = model.sample(
                labels,
                iterations=min(s.iterations, model.num_tokens),
                head_steps=s.steps,
                sampler=s.sampler,
                cfg_scale=scale,
                cfg_schedule=s.cfg_schedule,  # type: ignore[arg-type]
                temperature=s.temperature,
                generator=generator,
            )
        return self.normalizer.denormalize(z.float())
