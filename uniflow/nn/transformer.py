"""A stack of pre-norm ViT blocks over a token grid with a learnable, sin-cos initialised position embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from uniflow.nn.embeddings import sincos_2d_position_embedding


def _resample(table: torch.Tensor, source: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """A ``1 x (h w) x D`` position table on ``source`` resampled bicubically to ``grid``."""
    if tuple(grid) == tuple(source):
        return table
    h, w = source
    image = table.reshape(1, h, w, -1).permute(0, 3, 1, 2)
    image = F.interpolate(image, size=grid, mode="bicubic", align_corners=False)
    return image.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)


class TransformerStack(nn.Module):
    """``depth`` timm ViT blocks (fused attention) over ``grid`` tokens.

    The position embedding is learnable and starts from the 2-D sin-cos table; other grid sizes
    (e.g. a 256 px image through a 448 px model) interpolate it bicubically. ``final_norm`` adds a
    LayerNorm after the blocks; ``output_pos_embed`` adds a second learnable position embedding
    (same start, same resampling) to their output. The released UniFlow decoder has the second and
    not the first.
    """

    def __init__(
        self,
        width: int,
        depth: int,
        heads: int,
        grid: tuple[int, int],
        mlp_ratio: float = 4.0,
        final_norm: bool = True,
        output_pos_embed: bool = False,
    ):
        super().__init__()
        self.grid = grid
        self.pos_embed = nn.Parameter(sincos_2d_position_embedding(width, *grid)[None])
        self.blocks = nn.ModuleList(
            Block(width, heads, mlp_ratio=mlp_ratio, qkv_bias=True) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width, eps=1e-6) if final_norm and depth > 0 else nn.Identity()
        self.output_pos_embed = (
            nn.Parameter(sincos_2d_position_embedding(width, *grid)[None]) if output_pos_embed else None
        )
        self.grad_checkpointing = False

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        return _resample(self.pos_embed, self.grid, grid)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = x + self.position_embedding(grid).to(x.dtype)
        for block in self.blocks:
            x = (
                checkpoint(block, x, use_reentrant=False)
                if self.grad_checkpointing and self.training
                else block(x)
            )
        x = self.norm(x)
        if self.output_pos_embed is not None:
            x = x + _resample(self.output_pos_embed, self.grid, grid).to(x.dtype)
        return x
