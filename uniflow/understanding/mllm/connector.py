"""The vision-language connector of the MLLM probe.

LLaVA-1.5's ``mlp2x_gelu`` projector (Liu et al., "Improved Baselines with Visual Instruction Tuning"):
Linear(vision_dim, llm_dim) -> GELU -> Linear(llm_dim, llm_dim), applied to every vision token. With
``pixel_unshuffle`` the token grid is first folded 2x2 into channels, as InternVL's ``mlp1`` does
(Chen et al., "InternVL 1.5"): four times fewer tokens in the LLM's context for four times wider inputs,
normalised by a LayerNorm because the folded vector concatenates four unnormalised tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# The side of the square of neighbouring tokens folded into one by the pixel unshuffle.
UNSHUFFLE = 2


class Connector(nn.Module):
    """Vision tokens ``B x N x vision_dim`` -> LLM input embeddings ``B x M x llm_dim``.

    ``M = N`` without unshuffle and ``N / 4`` with it. The unshuffle needs the token grid: ``grid``
    (rows, columns), or a square grid inferred from ``N``; both sides must be even.
    """

    def __init__(
        self,
        vision_dim: int,
        llm_dim: int,
        pixel_unshuffle: bool = False,
        grid: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.vision_dim = vision_dim
        self.llm_dim = llm_dim
        self.pixel_unshuffle = pixel_unshuffle
        self.grid = grid
        in_dim = vision_dim * UNSHUFFLE**2 if pixel_unshuffle else vision_dim
        self.norm = nn.LayerNorm(in_dim) if pixel_unshuffle else nn.Identity()
        self.mlp = nn.Sequential(nn.Linear(in_dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim))

    def num_tokens(self, num_vision_tokens: int) -> int:
        """How many LLM tokens one image of ``num_vision_tokens`` vision tokens becomes."""
        return num_vision_tokens // UNSHUFFLE**2 if self.pixel_unshuffle else num_vision_tokens

    def _token_grid(self, num_tokens: int) -> tuple[int, int]:
        if self.grid is not None:
            rows, cols = self.grid
        else:
            side = math.isqrt(num_tokens)
            rows, cols = side, side
        if rows * cols != num_tokens:
            raise ValueError(
                f"pixel unshuffle needs the token grid: {num_tokens} tokens do not fill "
                f"{'the grid ' + str(self.grid) if self.grid else 'a square grid'}; pass grid=(rows, cols)"
            )
        if rows % UNSHUFFLE or cols % UNSHUFFLE:
            raise ValueError(f"pixel unshuffle folds 2x2 tokens: the grid {rows}x{cols} must have even sides")
        return rows, cols

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 3 or tokens.shape[-1] != self.vision_dim:
            raise ValueError(
                f"expected vision tokens B x N x {self.vision_dim}, got shape {tuple(tokens.shape)}"
            )
        if self.pixel_unshuffle:
            batch, num, dim = tokens.shape
            rows, cols = self._token_grid(num)
            grid = tokens.transpose(1, 2).reshape(batch, dim, rows, cols)
            # Each output token concatenates its 2x2 neighbourhood (channel-major), row-major over the
            # halved grid, so the LLM still reads the image in raster order.
            folded = F.pixel_unshuffle(grid, UNSHUFFLE)
            tokens = folded.flatten(2).transpose(1, 2)
        return self.mlp(self.norm(tokens))
