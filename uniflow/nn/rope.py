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
    """``cos`` and ``sin`` of the rotation angles stacked: ``2 x N x head_dim / 2`` (float32)."""
    angles = rope_2d_angles(head_dim, grid_h, grid_w, base, device)
    return torch.stack([angles.cos(), angles.sin()]).float()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # Each half written in place by one multiply and one fused multiply-add: x is read twice and the
    # output written once per half, fewer passes than chunk + cat + two products (memory-bound on CPU).
    a, b = x.chunk(2, dim=-1)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # contiguous heads: faster attention
    out_a, out_b = out.chunk(2, dim=-1)
    torch.mul(a, cos, out=out_a).addcmul_(b, sin, value=-1.0)
    torch.mul(b, cos, out=out_b).addcmul_(a, sin)
    return out


class _Rotary(torch.autograd.Function):
    """The rotation by (cos, sin); its gradient is the rotation by (cos, -sin), itself a :class:`_Rotary`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        cos, sin = ctx.saved_tensors
        return _Rotary.apply(grad, cos, -sin), None, None


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (``... x N x head_dim``) by a :func:`rope_2d_table`; the pair ``(a, b)`` -> ``(a cos - b sin, a sin + b cos)``."""
    cos, sin = table.to(x.dtype)
    return _Rotary.apply(x, cos, sin)
