"""Transformer blocks of the latent generators: RMSNorm, SwiGLU, attention with QK-norm / 2-D RoPE / KV cache.

The choices follow LightningDiT (Yao et al. 2025): RMSNorm (Zhang & Sennrich 2019) instead of
LayerNorm, a SwiGLU MLP (Shazeer 2020) whose hidden width is 2/3 of the usual ``mlp_ratio * width``
so that its three matrices cost what the two of a GELU MLP cost, optional RMS normalisation of
queries and keys per head (QK-norm, Dehghani et al. 2023) against attention-logit growth, and
rotary positions. :class:`AdaLNZeroBlock` is DiT's conditioning (Peebles & Xie 2023); its
modulation starts at zero, so each block starts as the identity. :class:`PreNormBlock` is the
unconditioned block of the autoregressive model, with a causal mode and a KV cache for sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.attention import SDPBackend, sdpa_kernel

from uniflow.nn.rope import apply_rope


class _RMSNormFunction(torch.autograd.Function):
    """``x * rsqrt(mean(x^2) + eps) [* weight]`` with its gradient written out.

    Autograd's composite (norm, scale, gain) walks the activations about six times backward; the
    closed form ``r (g - x_hat mean(g x_hat))`` takes one dot product per row, one fused multiply-add
    and one in-place scaling.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:  # type: ignore[override]
        stat_dtype = torch.promote_types(x.dtype, torch.float32)  # float32, or float64 for float64 inputs
        mean_square = (
            torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=stat_dtype).square_() / x.shape[-1]
        )
        r = torch.rsqrt(mean_square + eps)
        x_hat = x * r.to(x.dtype)
        ctx.save_for_backward(x_hat, r, weight)
        return x_hat if weight is None else x_hat * weight.to(x.dtype)

    @staticmethod
    @once_differentiable  # the closed form is not itself differentiated: a second order raises
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, None]:  # type: ignore[override]
        x_hat, r, weight = ctx.saved_tensors
        grad_weight = None
        if weight is not None:
            if ctx.needs_input_grad[1]:
                grad_weight = (grad * x_hat).flatten(0, -2).sum(0, dtype=weight.dtype)
            grad = grad * weight.to(grad.dtype)
        mean_dot = torch.linalg.vecdot(grad, x_hat, dim=-1).unsqueeze(-1) / x_hat.shape[-1]
        grad_x = torch.addcmul(grad, x_hat, mean_dot.to(grad.dtype), value=-1.0).mul_(r.to(grad.dtype))
        return grad_x, grad_weight, None


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` (same parameters and result) as one vector-norm reduction and a closed-form gradient.

    On CPU, ``torch.rms_norm`` with autograd is a composite of pow, mean, add, rsqrt and one or two
    multiplications, each a pass over the activations forward and again backward; here the forward
    reads them once for the statistic and once to scale them, and the backward is the closed form
    of :class:`_RMSNormFunction` (``python benchmarks/speed/bench_rmsnorm.py``). The statistic is
    computed in (at least) float32 whatever the activations' dtype, and the output keeps that dtype
    (as ``nn.RMSNorm`` under autocast, without its warning that a float32 weight blocks the fused kernel).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps  # nn.RMSNorm's default
        return _RMSNormFunction.apply(x, self.weight, eps)


def swiglu_hidden(width: int, mlp_ratio: float) -> int:
    """Hidden width of a SwiGLU MLP with the parameter count of a ``mlp_ratio`` GELU MLP: 2/3 of it."""
    return int(2 * mlp_ratio * width / 3)


class SwiGLU(nn.Module):
    """``W_2 (SiLU(W_g x) * W_u x)``; the gate and up projections are one matmul."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(width, 2 * hidden)
        self.down = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


# Below this many keys, CPU training in bf16/fp16 takes SDPA's unfused (math) kernels: the fused
# kernel's forward + backward is 1.35-3.4x slower there (16-128 keys), faster from 256 on; in float32
# the fused kernel is as fast or faster at every length (``python benchmarks/speed/bench_attention.py``).
CPU_FUSED_MIN_KEYS = 256


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` with the faster kernel for short reduced-precision sequences on CPU."""
    short_cpu_training = (
        q.device.type == "cpu"
        and q.dtype in (torch.bfloat16, torch.float16)
        and k.shape[-2] < CPU_FUSED_MIN_KEYS
        and torch.is_grad_enabled()
        and (q.requires_grad or k.requires_grad or v.requires_grad)
    )
    if not short_cpu_training:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)


@dataclass
class LayerKVCache:
    """Keys and values (``B x heads x S x head_dim``) of the tokens one attention layer has seen so far."""

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` (fused kernels where available)."""

    def __init__(self, width: int, heads: int, qk_norm: bool = False):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = width // heads
        self.qkv = nn.Linear(width, 3 * width)
        self.qk_norm = qk_norm
        if qk_norm:
            self.q_norm = RMSNorm(self.head_dim, eps=1e-6)
            self.k_norm = RMSNorm(self.head_dim, eps=1e-6)
        self.proj = nn.Linear(width, width)

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor | None = None,
        causal: bool = False,
        cache: LayerKVCache | None = None,
    ) -> torch.Tensor:
        """``x``: B x L x width. ``rope``: a 2-D RoPE table for these L tokens. ``cache``: earlier keys/values
        to attend to, extended in place with this call's; with ``causal``, token i attends to every
        cached token and to tokens <= i of this call."""
        b, n, width = x.shape
        # A split (its gradient is one concatenation), not indexing (whose gradients are zero-filled
        # copies of the whole projection, summed).
        qk, v = self.qkv(x).split([2 * width, width], dim=-1)
        qk = qk.reshape(b, n, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        v = v.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)
        if self.qk_norm:
            q, k = qk.unbind(0)
            q, k = self.q_norm(q), self.k_norm(k)
            if rope is not None:
                q, k = apply_rope(q, rope), apply_rope(k, rope)
        else:
            # Queries and keys rotate together: one pass of each kernel instead of two.
            q, k = (qk if rope is None else apply_rope(qk, rope)).unbind(0)
        past = 0
        if cache is not None:
            past = cache.length
            if cache.k is not None:
                k, v = torch.cat([cache.k, k], dim=2), torch.cat([cache.v, v], dim=2)
            cache.k, cache.v = k, v
        mask = None
        if causal and past and n > 1:
            # SDPA's is_causal aligns the triangle top-left; with a cache the new queries sit at the end.
            mask = torch.arange(n, device=x.device)[:, None] + past >= torch.arange(past + n, device=x.device)
        out = attention(q, k, v, attn_mask=mask, is_causal=causal and not past)
        return self.proj(out.transpose(1, 2).reshape(b, n, width))


def _xavier_linears(module: nn.Module) -> None:
    # DiT / MAE initialisation of the transformer matmuls; the zero-initialised layers are set after.
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)


class AdaLNZeroBlock(nn.Module):
    """DiT block with adaLN-zero: shift, scale and gate of both branches regressed from the condition.

    The condition is ``B x width`` (one per sample: time + class) or ``B x N x width`` (one per
    token: the wide head of DiT^DH, conditioned on the trunk's output at that token).
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False):
        super().__init__()
        self.norm1 = RMSNorm(width, eps=1e-6, elementwise_affine=False)
        self.attn = Attention(width, heads, qk_norm)
        self.norm2 = RMSNorm(width, eps=1e-6, elementwise_affine=False)
        self.mlp = SwiGLU(width, swiglu_hidden(width, mlp_ratio))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        _xavier_linears(self)
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, rope: torch.Tensor | None = None) -> torch.Tensor:
        mod = self.ada(cond)
        if mod.dim() == 2:
            mod = mod[:, None]
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mod.chunk(6, dim=-1)
        # addcmul: one pass over the activations for each modulation and gated residual (memory-bound on CPU).
        x = torch.addcmul(x, gate_a, self.attn(torch.addcmul(shift_a, self.norm1(x), 1 + scale_a), rope))
        return torch.addcmul(x, gate_m, self.mlp(torch.addcmul(shift_m, self.norm2(x), 1 + scale_m)))


class PreNormBlock(nn.Module):
    """``x + Attn(RMSNorm(x))``, ``x + SwiGLU(RMSNorm(x))``: bidirectional, or causal with an optional KV cache."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False):
        super().__init__()
        self.norm1 = RMSNorm(width, eps=1e-6)
        self.attn = Attention(width, heads, qk_norm)
        self.norm2 = RMSNorm(width, eps=1e-6)
        self.mlp = SwiGLU(width, swiglu_hidden(width, mlp_ratio))
        _xavier_linears(self)

    def forward(
        self, x: torch.Tensor, causal: bool = False, cache: LayerKVCache | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), causal=causal, cache=cache)
        return x + self.mlp(self.norm2(x))
