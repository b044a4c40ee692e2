"""What every benchmark runner gets: the tokenizer, decoding settings, device, rank, Inception, provenance."""

from __future__ import annotations

import contextlib
import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from uniflow.evaluation.config import EvalConfig
from uniflow.metrics.inception import InceptionFeatureExtractor
from uniflow.tokenizer.decoder import patchify
from uniflow.tokenizer.model import UniFlowTokenizer

log = logging.getLogger("uniflow.evaluation")

_AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


@dataclass
class EvalContext:
    cfg: EvalConfig
    tokenizer: UniFlowTokenizer
    tokenizer_dir: Path
    tokenizer_sha256: str
    device: torch.device
    output_dir: Path
    rank: int = 0
    world_size: int = 1
    # Shared by every FID metric of the run; built on first use so runs without FID never load it.
    extractor: InceptionFeatureExtractor | None = field(default=None, repr=False)

    @property
    def steps(self) -> int:
        return self.cfg.steps if self.cfg.steps is not None else self.tokenizer.cfg.flow.steps

    @property
    def sampler(self) -> str:
        return self.cfg.sampler or self.tokenizer.cfg.flow.sampler

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def inception(self) -> InceptionFeatureExtractor:
        if self.extractor is None:
            self.extractor = InceptionFeatureExtractor(self.cfg.inception_weights).to(self.device)
        return self.extractor

    def inception_provenance(self) -> dict[str, Any]:
        weights = self.inception().weights
        return {
            "inception": "torch-fidelity inception-v3-compat, 2048-d pool features, float32",
            "inception_weights_source": weights.source,
            "inception_weights_sha256": weights.sha256,
        }

    def provenance(self) -> dict[str, Any]:
        """Run-wide provenance, attached to every number."""
        return {
            "tokenizer_sha256": self.tokenizer_sha256,
            "sampler": self.sampler,
            "steps": self.steps,
            # The tokenizer's flow decoder is unconditional given the latent: there is no guidance.
            "guidance": "none",
            "precision": self.cfg.precision,
            # Sides that are not a multiple of the stride (256 px at patch 14) are padded, then cropped.
            "padding": self.tokenizer.padding_policy,
            "noise_seed": self.cfg.seed,
            "device": self.device.type,
            "world_size": self.world_size,
        }

    def autocast(self) -> AbstractContextManager[Any]:
        dtype = _AUTOCAST_DTYPES.get(self.cfg.precision)
        return torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def decoding_noise(self, index: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Per-sample starting noise (B x N x patch_dim) drawn from (seed, sample index).

        Seeding by index rather than by batch makes every reconstruction independent of batch size,
        sample order and the number of ranks, so a distributed run reproduces a single-process one.
        """
        ph, pw = self.tokenizer.padded_size(height, width)
        noise = [
            torch.randn(3, ph, pw, generator=torch.Generator().manual_seed((self.cfg.seed << 32) + int(i)))
            for i in index.tolist()
        ]
        return patchify(torch.stack(noise), self.tokenizer.patch_size)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """uint8 (or [0, 1] float) B x 3 x H x W -> reconstructions in [0, 1], float32, on the device."""
        x = images.to(self.device)
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        height, width = x.shape[-2:]
        noise = self.decoding_noise(index, height, width).to(self.device)
        with self.autocast():
            z = self.tokenizer.encode(x)
            out = self.tokenizer.decode(
                z, steps=self.steps, sampler=self.sampler, size=(height, width), noise=noise
            )
        return out.float()

    def info(self, message: str, *args: Any) -> None:
        if self.is_main:
            log.info(message, *args)
