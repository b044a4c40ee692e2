"""ARFlow: an autoregressive model of continuous latent tokens with a per-token flow head.

No quantiser: as in MAR (Li et al. 2024, "Autoregressive Image Generation without Vector
Quantization"), the transformer outputs one condition vector per token and a small AdaLN MLP
models that token's distribution; here the MLP is the tokenizer's patch-wise flow head, trained as
a rectified flow with several noise draws per token (the head is cheap next to the transformer).

One model, two orders:

* ``"random"``: MAR's masked autoregression. A bidirectional transformer sees the known tokens and
  a mask token elsewhere; training masks a ratio drawn from a truncated normal and predicts the
  masked tokens; sampling unmasks a random order over a cosine schedule.
* ``"raster"``: next-token prediction in raster order under a causal mask (MAR's AR baseline),
  sampled one token at a time with a KV cache.

The sequence is ``num_prefix`` class tokens followed by one slot per latent token; slot i always
predicts token i. In raster order slot i holds token i - 1 (slot 0 the mask token), so a causal
mask is all that keeps token i out of its own prediction.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from uniflow import flow
from uniflow.generation.conditioning import ClassConditionedLatents
from uniflow.nn import sincos_2d_position_embedding
from uniflow.nn.dit_blocks import LayerKVCache, PreNormBlock, RMSNorm
from uniflow.tokenizer.decoder import PatchFlowHead, patchify, unpatchify

Order = Literal["random", "raster"]


@dataclass(frozen=True)
class ARSize:
    """Transformer depth (MAR's encoder + decoder depths together), width, heads; flow head depth and width."""

    depth: int
    width: int
    heads: int
    head_depth: int
    head_width: int


# MAR-B/L/H: 12+12 x 768, 16+16 x 1024, 20+20 x 1280, with 6 x 1024, 8 x 1280, 12 x 1536 heads.
ARFLOW_SIZES: dict[str, ARSize] = {
    "B": ARSize(24, 768, 12, 6, 1024),
    "L": ARSize(32, 1024, 16, 8, 1280),
    "H": ARSize(40, 1280, 16, 12, 1536),
}


def truncated_normal(
    n: int,
    mean: float,
    std: float,
    low: float,
    high: float,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``n`` draws of N(mean, std) restricted to [low, high], by inverting the normal CDF on the clipped range."""
    lo = torch.special.ndtr(torch.tensor((low - mean) / std, dtype=torch.float64))
    hi = torch.special.ndtr(torch.tensor((high - mean) / std, dtype=torch.float64))
    u = lo + (hi - lo) * torch.rand(n, dtype=torch.float64, device=device, generator=generator)
    return (mean + std * torch.special.ndtri(u)).clamp(low, high).float()


def unmasking_schedule(num_tokens: int, iterations: int) -> list[int]:
    """How many tokens are still masked after each of ``iterations`` steps (MAR's cosine schedule).

    After step k, ``floor(N cos(pi/2 (k + 1) / K))`` tokens stay masked, clamped so that every step
    generates at least one token and the last step generates the rest.
    """
    if not 1 <= iterations <= num_tokens:
        raise ValueError(f"iterations must be in [1, {num_tokens}] for {num_tokens} tokens, got {iterations}")
    remaining, schedule = num_tokens, []
    for k in range(iterations):
        steps_left = iterations - 1 - k
        cosine = math.floor(num_tokens * math.cos(math.pi / 2 * (k + 1) / iterations))
        remaining = max(steps_left, min(remaining - 1, cosine))
        schedule.append(remaining)
    return schedule


def generation_masks(order: torch.Tensor, schedule: list[int]) -> Iterator[torch.Tensor]:
    """For a random ``order`` (``B x N``: the positions, first generated first) and an unmasking
    ``schedule``, the boolean ``B x N`` mask of the positions each step generates."""
    b, n = order.shape
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=order.device).expand(b, n))
    before = n
    for after in schedule:
        yield (rank >= n - before) & (rank < n - after)
        before = after


class ARFlow(ClassConditionedLatents, nn.Module):
    """Class-conditional AR model over the ``patch_size``-patches of ``B x C x h x w`` latents."""

    def __init__(
        self,
        in_channels: int,
        input_size: int | tuple[int, int],
        num_classes: int,
        order: Order = "random",
        patch_size: int = 1,
        depth: int = 24,
        width: int = 768,
        heads: int = 12,
        mlp_ratio: float = 4.0,
        qk_norm: bool = False,
        num_prefix: int = 64,
        head_depth: int = 6,
        head_width: int = 1024,
        class_dropout: float = 0.1,
        noise_draws: int = 4,
        mask_ratio_min: float = 0.7,
        mask_ratio_mean: float = 1.0,
        mask_ratio_std: float = 0.25,
        logit_normal_prob: float = 0.9,
    ):
        super().__init__()
        if order not in ("random", "raster"):
            raise ValueError(f"unknown order {order!r}; choose 'random' or 'raster'")
        h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        if h % patch_size or w % patch_size:
            raise ValueError(f"latent grid {h}x{w} is not divisible by patch_size={patch_size}")
        if num_prefix < 1:
            raise ValueError(f"the class needs at least one prefix token, got num_prefix={num_prefix}")
        self.order = order
        self.in_channels, self.input_size, self.patch_size = in_channels, (h, w), patch_size
        self.grid = (h // patch_size, w // patch_size)
        self.num_tokens = self.grid[0] * self.grid[1]
        self.token_dim = in_channels * patch_size**2
        self.num_classes = num_classes
        self.num_prefix = num_prefix
        self.class_dropout = class_dropout
        self.noise_draws = noise_draws
        self.mask_ratio = (mask_ratio_mean, mask_ratio_std, mask_ratio_min)
        self.logit_normal_prob = logit_normal_prob

        # Index num_classes is the null class, the unconditional model of classifier-free guidance.
        self.class_embed = nn.Embedding(num_classes + 1, width)
        self.prefix_pos = nn.Parameter(torch.randn(num_prefix, width) * 0.02)
        self.token_embed = nn.Linear(self.token_dim, width)
        self.mask_token = nn.Parameter(torch.randn(width) * 0.02)
        self.pos = nn.Parameter(sincos_2d_position_embedding(width, *self.grid))
        nn.init.normal_(self.class_embed.weight, std=0.02)
        self.blocks = nn.ModuleList(PreNormBlock(width, heads, mlp_ratio, qk_norm) for _ in range(depth))
        self.norm = RMSNorm(width, eps=1e-6)
        self.head = PatchFlowHead(self.token_dim, width, head_width, head_depth)

    @classmethod
    def from_name(cls, name: str, **kwargs) -> ARFlow:
        """A named size of :data:`ARFLOW_SIZES` (``"B"``, ``"L"``, ``"H"``); other arguments as ``__init__``."""
        if name not in ARFLOW_SIZES:
            raise ValueError(f"unknown ARFlow size {name!r}; choose one of {sorted(ARFLOW_SIZES)}")
        s = ARFLOW_SIZES[name]
        return cls(
            depth=s.depth,
            width=s.width,
            heads=s.heads,
            head_depth=s.head_depth,
            head_width=s.head_width,
            **kwargs,
        )

    # -- the transformer ----------------------------------------------------------------------

    def _prefix(self, labels: torch.Tensor) -> torch.Tensor:
        return self.class_embed(labels)[:, None] + self.prefix_pos

    def _trunk(self, x: torch.Tensor, causal: bool, caches: list[LayerKVCache] | None = None) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, causal=causal, cache=None if caches is None else caches[i])
        return self.norm(x)

    def _masked_slots(self, tokens: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        return torch.where(known[..., None], self.token_embed(tokens), self.mask_token) + self.pos

    def _shifted_slots(self, tokens: torch.Tensor) -> torch.Tensor:
        """Slot i holds token i - 1 and slot 0 the mask token, each with slot i's position."""
        start = self.mask_token.expand(tokens.shape[0], 1, -1)
        return torch.cat([start, self.token_embed(tokens[:, :-1])], dim=1) + self.pos

    # -- training -----------------------------------------------------------------------------

    def training_loss(
        self, z: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Flow-matching loss of the head on the predicted tokens: the masked ones (random order) or all (raster)."""
        self.check_latents(z, labels)
        tokens = patchify(z, self.patch_size)
        b, n, _ = tokens.shape
        prefix = self._prefix(self.drop_labels(labels, generator))
        if self.order == "random":
            mean, std, low = self.mask_ratio
            ratio = truncated_normal(1, mean, std, low, 1.0, z.device, generator).item()
            num_masked = min(n, max(1, math.ceil(ratio * n)))
            order = torch.rand(b, n, device=z.device, generator=generator).argsort(dim=1)
            masked = torch.zeros(b, n, dtype=torch.bool, device=z.device).scatter_(
                1, order[:, :num_masked], True
            )
            out = self._trunk(torch.cat([prefix, self._masked_slots(tokens, ~masked)], dim=1), causal=False)
            cond, target = out[:, self.num_prefix :][masked], tokens[masked]
        else:
            out = self._trunk(torch.cat([prefix, self._shifted_slots(tokens)], dim=1), causal=True)
            cond, target = out[:, self.num_prefix :].reshape(b * n, -1), tokens.reshape(b * n, -1)
        # Several (t, noise) draws per token: the transformer's pass is shared, the head is cheap.
        cond, target = cond.repeat(self.noise_draws, 1), target.repeat(self.noise_draws, 1)
        t = flow.sample_time(target.shape[0], self.logit_normal_prob, device=z.device, generator=generator)
        noise = torch.randn(target.shape, device=z.device, dtype=target.dtype, generator=generator)
        x_t, u = flow.interpolate(target, noise, t)
        return F.mse_loss(self.head(x_t, t, cond).float(), u.float())

    # -- sampling -----------------------------------------------------------------------------

    def _sample_tokens(
        self,
        cond: torch.Tensor,
        guided: bool,
        scale: float,
        temperature: float,
        head_steps: int,
        sampler: str,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Integrate the head's flow for each row of ``cond`` (``2R`` rows, conditional first when guided).

        Temperature scales the starting noise: the flow maps a narrower Gaussian to a sharper
        sample, the flow analogue of MAR's temperature on the diffusion noise.
        """
        rows = cond.shape[0] // 2 if guided else cond.shape[0]
        noise = torch.randn(rows, self.token_dim, device=cond.device, generator=generator) * temperature
        c_cond, c_uncond = cond[:rows], cond[rows:]
        velocity = flow.classifier_free_guidance(
            lambda x, t: self.head(x, t, c_cond), lambda x, t: self.head(x, t, c_uncond), scale
        )
        return flow.sample(velocity, noise.to(cond.dtype), head_steps, sampler)

    @torch.no_grad()
    def sample(
        self,
        labels: torch.Tensor,
        iterations: int = 64,
        head_steps: int = 50,
        sampler: str = "euler",
        cfg_scale: float = 1.0,
        cfg_schedule: Literal["linear", "constant"] = "linear",
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        kv_cache: bool = True,
    ) -> torch.Tensor:
        """Latents ``B x C x h x w`` for ``labels``.

        Random order: ``iterations`` steps of the cosine schedule over a random order per sample.
        Raster order: one token per step (``iterations`` is ignored), with a KV cache unless
        ``kv_cache`` is False (then every step reruns the whole prefix: the reference the cache
        must reproduce). With ``cfg_schedule="linear"`` the guidance scale of a step is
        ``1 + (cfg_scale - 1) * generated fraction`` (MAR): weak while little of the image exists.
        """
        if cfg_schedule not in ("linear", "constant"):
            raise ValueError(f"unknown cfg_schedule {cfg_schedule!r}; choose 'linear' or 'constant'")
        if labels.dim() != 1:
            raise ValueError(f"expected labels of shape (B,), got {tuple(labels.shape)}")
        guided = cfg_scale != 1.0
        all_labels = torch.cat([labels, torch.full_like(labels, self.null_class)]) if guided else labels
        prefix = self._prefix(all_labels)
        b, n = labels.shape[0], self.num_tokens
        tokens = torch.zeros(b, n, self.token_dim, device=prefix.device, dtype=prefix.dtype)

        def scale_at(generated: int) -> float:
            if cfg_schedule == "constant":
                return cfg_scale
            return 1.0 + (cfg_scale - 1.0) * generated / n

        def batch(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, x]) if guided else x

        sample_kwargs = {
            "guided": guided,
            "temperature": temperature,
            "head_steps": head_steps,
            "sampler": sampler,
            "generator": generator,
        }
        if self.order == "random":
            order = torch.rand(b, n, device=prefix.device, generator=generator).argsort(dim=1)
            known = torch.zeros(b, n, dtype=torch.bool, device=prefix.device)
            schedule = unmasking_schedule(n, iterations)
            for still_masked, masks in zip(schedule, generation_masks(order, schedule), strict=True):
                slots = self._masked_slots(batch(tokens), batch(known))
                out = self._trunk(torch.cat([prefix, slots], dim=1), causal=False)[:, self.num_prefix :]
                tokens[masks] = self._sample_tokens(
                    out[batch(masks)], scale=scale_at(n - still_masked), **sample_kwargs
                )
                known |= masks
        else:
            caches = [LayerKVCache() for _ in self.blocks] if kv_cache else None
            for i in range(n):
                if caches is None or i == 0:
                    x = torch.cat([prefix, self._shifted_slots(batch(tokens))[:, : i + 1]], dim=1)
                else:  # the cache holds the prefix and slots < i: feed slot i alone
                    x = self.token_embed(batch(tokens[:, i - 1 : i])) + self.pos[i]
                out = self._trunk(x, causal=True, caches=caches)[:, -1]
                tokens[:, i] = self._sample_tokens(out, scale=scale_at(i + 1), **sample_kwargs)
        return unpatchify(tokens, self.grid, self.patch_size, self.in_channels)
