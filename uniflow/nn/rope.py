"""2-D rotary position embedding (RoFormer, Su et al. 2021, extended to image grids as in EVA-02 / LightningDiT).

Each attention head's channels form ``head_dim / 2`` rotation pairs ``(i, i + head_dim / 2)``. The
first half of the pairs turns with the token's row, the second half with its column, each half over
its own geometric ladder of frequencies, so the dot product of a query and a key depends only on
their row and column offsets.
"""

from __future__ import annotations

import torch


def rope_2d_angles(
    head_dim: int, grid_h: int, grid_w: int, base: float = 10000.0, device: torch.device | str | None = None
) -> torch.Tensor:
    """Rotation angles ``(grid_h * grid_w, head_dim / 2)`` for a row-major grid (float64 for exact tables)."""
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs head_dim divisible by 4, got {head_dim}")
    quarter = head_dim // 4
    freqs = base ** (-torch.arange(quarter, dtype=torch.float64, device=device) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64, device=device),
        torch.arange(grid_w, dtype=torch.float64, device=device),
        indexing="ij",
    )
    return torch.cat([rows.reshape(-1, 1) * freqs, cols.reshape(-1, 1) * freqs], dim=1)


def rope_2d_table(
    head_dim: int, grid_h: int, grid_w: int, base: float = 10000.0, device: torch.device | str | None = None
) -> torch.Tensor:
    """``cos`` and signed ``sin`` stacked: ``2 x N x head_dim``, each angle repeated for both members of its pair.

    The sine carries the sign of the rotation (``-sin`` on the first half), so applying the table
    needs no negation pass (element-wise passes are memory-bound and add up on CPU).
    """
    angles = rope_2d_angles(head_dim, grid_h, grid_w, base, device)
    cos, sin = angles.cos(), angles.sin()
    return torch.stack([torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)]).float()


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (``... x N x head_dim``) by a :func:`rope_2d_table`; the pair ``(a, b)`` -> ``(a cos - b sin, a sin + b cos)``."""
    cos, signed_sin = table.to(x.dtype)
    a, b = x.chunk(2, dim=-1)
    return torch.addcmul(x * cos, torch.cat([b, a], dim=-1), signed_sin)
