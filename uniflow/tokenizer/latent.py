"""Compact latent: student tokens -> latent z (encoder side) and z -> decoder width (decoder side)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def tokens_to_grid(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``B x N x C`` (row-major) -> ``B x C x h x w``."""
    b, n, c = tokens.shape
    if n != grid[0] * grid[1]:
        raise ValueError(f"{n} tokens do not fill a {grid[0]}x{grid[1]} grid")
    return tokens.transpose(1, 2).reshape(b, c, *grid)


def grid_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``B x C x h x w`` -> ``B x (h w) x C``."""
    return x.flatten(2).transpose(1, 2)


class LatentProjection(nn.Module):
    """Per-token MLP D -> D -> d on the student's last-layer patch tokens.

    With ``token_merge`` each 2x2 group of patch tokens is pixel-unshuffled into one token of width
    4D first (4x fewer, 4x wider tokens), the paper's higher-compression variant.
    """

    def __init__(self, encoder_width: int, latent_dim: int, token_merge: bool = False):
        super().__init__()
        self.merge = 2 if token_merge else 1
        in_dim = encoder_width * self.merge**2
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, encoder_width), nn.GELU(), nn.Linear(encoder_width, latent_dim)
        )

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Tokens ``B x N x D`` on ``grid`` -> latent ``B x d x h x w`` (h, w = grid / merge)."""
        x = tokens_to_grid(tokens, grid)
        if self.merge > 1:
            x = F.pixel_unshuffle(x, self.merge)
        return tokens_to_grid(self.mlp(grid_to_tokens(x)), (x.shape[-2], x.shape[-1]))


class UpProjection(nn.Module):
    """Per-token MLP d -> D_dec -> D_dec (x4 and pixel-shuffled back to the patch grid with token merge)."""

    def __init__(self, latent_dim: int, width: int, token_merge: bool = False):
        super().__init__()
        self.merge = 2 if token_merge else 1
        self.mlp = nn.Sequential(
            nn.Linear(latent_dim, width), nn.GELU(), nn.Linear(width, width * self.merge**2)
        )

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Latent ``B x d x h x w`` -> decoder tokens ``B x N x D_dec`` on the patch grid, and that grid."""
        x = tokens_to_grid(self.mlp(grid_to_tokens(z)), (z.shape[-2], z.shape[-1]))
        if self.merge > 1:
            x = F.pixel_shuffle(x, self.merge)
        return grid_to_tokens(x), (x.shape[-2], x.shape[-1])
