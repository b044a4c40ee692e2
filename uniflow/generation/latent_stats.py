"""Per-channel latent statistics: the standardisation a generator trains in and the decoder must undo.

A generator learns unit-variance latents (LightningDiT, Yao et al. 2025; RAE, Zheng et al. 2025);
its samples are mapped back with the same statistics before the tokenizer decodes them. The
statistics are accumulated as float64 sums so that shards, batches and ranks combine exactly by
addition (one all-reduce), whatever order they arrive in.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn


class LatentNormalizer(nn.Module):
    """``(z - mean) / std`` with ``mean`` and ``std`` of shape ``1 x C x 1 x 1``.

    Use it in two phases: :meth:`update` with batches (and :meth:`all_reduce` across ranks), then
    :meth:`finalize`; or :meth:`load` statistics saved by :meth:`save`.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("sum", torch.zeros(channels, dtype=torch.float64))
        self.register_buffer("sum_sq", torch.zeros(channels, dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))

    def _check(self, z: torch.Tensor) -> None:
        if z.dim() != 4 or z.shape[1] != self.channels:
            raise ValueError(f"expected latents B x {self.channels} x h x w, got {tuple(z.shape)}")

    @torch.no_grad()
    def update(self, z: torch.Tensor) -> None:
        """Add a batch ``B x C x h x w`` to the running sums (every spatial position counts as one sample)."""
        self._check(z)
        z = z.detach().to(self.sum.device, torch.float64)
        self.count += z.numel() // self.channels
        self.sum += z.sum(dim=(0, 2, 3))
        self.sum_sq += z.square().sum(dim=(0, 2, 3))

    def all_reduce(self) -> None:
        """Sum the accumulators over the ranks of the default process group (a no-op without one)."""
        if dist.is_available() and dist.is_initialized():
            for buffer in (self.count, self.sum, self.sum_sq):
                dist.all_reduce(buffer)

    @torch.no_grad()
    def finalize(self) -> None:
        """Turn the sums into ``mean`` and ``std`` (population std, floored at ``eps``)."""
        if self.count.item() == 0:
            raise ValueError("no latents were accumulated: call update() before finalize()")
        mean = self.sum / self.count
        var = (self.sum_sq / self.count - mean.square()).clamp_min(0.0)
        self.mean.copy_(mean.reshape(1, -1, 1, 1))
        self.std.copy_(var.sqrt().clamp_min(self.eps).reshape(1, -1, 1, 1))

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        self._check(z)
        return (z - self.mean.to(z.dtype)) / self.std.to(z.dtype)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        self._check(z)
        return z * self.std.to(z.dtype) + self.mean.to(z.dtype)

    def save(self, path: str | Path) -> None:
        """Write ``mean`` and ``std`` (float32, ``1 x C x 1 x 1``) and the sample count as safetensors."""
        save_file(
            {"mean": self.mean.contiguous(), "std": self.std.contiguous(), "count": self.count.reshape(1)},
            str(path),
        )

    @classmethod
    def load(cls, path: str | Path) -> LatentNormalizer:
        tensors = load_file(str(path))
        mean, std = tensors["mean"], tensors["std"]
        if mean.dim() != 4 or mean.shape != std.shape or mean.shape[0] != 1:
            raise ValueError(f"{path}: expected mean and std of shape 1 x C x 1 x 1, got {tuple(mean.shape)}")
        normalizer = cls(mean.shape[1])
        normalizer.mean.copy_(mean)
        normalizer.std.copy_(std)
        normalizer.count.copy_(tensors["count"].reshape(()))
        return normalizer
