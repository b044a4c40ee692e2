"""Timestep and 2-D position embeddings."""

from __future__ import annotations

import math

import torch
from torch import nn


def sincos_2d_position_embedding(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine embedding, ``(grid_h * grid_w, dim)``, row-major over the grid.

    Half of the channels encode the row, half the column (MAE/DiT convention), which is why ``dim``
    must be divisible by 4.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64), indexing="ij"
    )

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of a scalar time t in [0, 1] followed by a two-layer MLP."""

    def __init__(
        self, dim: int, frequency_dim: int = 256, max_period: float = 10000.0, scale: float = 1000.0
    ):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.max_period = max_period
        # Flow time lives in [0, 1]; scaling it to the usual diffusion range keeps the low
        # frequencies informative instead of nearly constant.
        self.scale = scale
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        nn.init.normal_(self.mlp[0].weight, std=0.02)
        nn.init.normal_(self.mlp[2].weight, std=0.02)

    def frequencies(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequency_dim // 2
        freqs = torch.exp(
            -math.log(self.max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
        )
        args = (t.float() * self.scale)[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freqs = self.frequencies(t).to(self.mlp[0].weight.dtype)
        return self.mlp(freqs)
