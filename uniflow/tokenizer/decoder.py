"""Patch-wise pixel flow decoder: latent -> global transformer blocks -> per-patch conditions -> flow head.

The global transformer blocks (GTB) let every patch see the whole image once; after that each patch
is decoded on its own by a small AdaLN MLP that integrates a flow from noise to that patch's pixels.
Patches are rows of one big batch, so the head never mixes information between patches.
"""

from __future__ import annotations

import torch
from torch import nn

from uniflow import flow
from uniflow.nn import AdaLNMLPBlock, FinalAdaLNLayer, TimestepEmbedder, TransformerStack
from uniflow.tokenizer.config import DecoderConfig, FlowConfig
from uniflow.tokenizer.latent import UpProjection


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``B x C x H x W`` -> ``B x N x (p * p * C)``, patches row-major, pixels (row, col, channel) inside."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: torch.Tensor, grid: tuple[int, int], patch: int, channels: int = 3) -> torch.Tensor:
    """Inverse of :func:`patchify`."""
    b = patches.shape[0]
    x = patches.reshape(b, grid[0], grid[1], patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, grid[0] * patch, grid[1] * patch)


class PatchFlowHead(nn.Module):
    """v(x_t, t, c) for one flattened patch per row: y = TimestepEmbed(t) + Linear(c), AdaLN MLP blocks."""

    def __init__(self, patch_dim: int, cond_dim: int, width: int, depth: int):
        super().__init__()
        self.input = nn.Linear(patch_dim, width)
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(cond_dim, width)
        self.blocks = nn.ModuleList(AdaLNMLPBlock(width) for _ in range(depth))
        self.final = FinalAdaLNLayer(width, patch_dim)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``x_t``: R x P, ``t``: R, ``cond``: R x C -> velocity R x P."""
        y = self.time_embed(t) + self.cond_embed(cond)
        h = self.input(x_t)
        for block in self.blocks:
            h = block(h, y)
        return self.final(h, y)


class PixelFlowDecoder(nn.Module):
    """Up projection -> GTB (with learnable position embedding) -> patch-wise flow head."""

    def __init__(self, cfg: DecoderConfig, flow_cfg: FlowConfig, patch_size: int, grid: tuple[int, int]):
        super().__init__()
        self.patch_size = patch_size
        self.flow_cfg = flow_cfg
        self.up = UpProjection(cfg.latent_dim, cfg.width, cfg.token_merge)
        self.gtb = TransformerStack(
            cfg.width,
            cfg.gtb_depth,
            cfg.gtb_heads,
            grid,
            cfg.mlp_ratio,
            final_norm=cfg.gtb_final_norm,
            output_pos_embed=cfg.post_gtb_pos_embed,
        )
        self.head = PatchFlowHead(3 * patch_size**2, cfg.width, cfg.head_width, cfg.head_depth)

    def conditions(self, z: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Latent ``B x d x h x w`` -> per-patch conditions ``B x N x D_dec`` and the patch grid."""
        tokens, grid = self.up(z)
        return self.gtb(tokens, grid), grid

    def flow_loss(
        self, z: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Flow matching on every patch of ``target`` (pixels in [-1, 1], ``B x 3 x H x W``).

        Each patch draws its own t and noise. Returns the loss and the one-step estimate x_hat
        (as an image) for optional perceptual terms and logging.
        """
        cond, grid = self.conditions(z)
        x = patchify(target, self.patch_size)
        rows, cond = x.reshape(-1, x.shape[-1]), cond.reshape(-1, cond.shape[-1])
        fc = self.flow_cfg
        t = flow.sample_time(
            rows.shape[0],
            fc.logit_normal_prob,
            fc.logit_normal_mean,
            fc.logit_normal_std,
            rows.device,
            generator,
        )
        noise = torch.randn(rows.shape, device=rows.device, dtype=rows.dtype, generator=generator)
        x_t, u = flow.interpolate(rows, noise, t)
        v = self.head(x_t, t, cond).float()
        x_hat = flow.one_step_estimate(x_t, t, v).reshape(x.shape)
        return {
            "loss": torch.mean((v - u) ** 2),
            "x_hat": unpatchify(x_hat, grid, self.patch_size),
        }

    @torch.no_grad()
    def sample(
        self,
        z: torch.Tensor,
        steps: int = 1,
        sampler: str = "euler",
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Decode the latent to pixels in [-1, 1] (``B x 3 x h*p x w*p``) by integrating every patch's flow.

        The starting noise is ``noise`` (``B x N x patch_dim``) if given, else drawn in float32 from
        ``generator`` (on ``z``'s device). The ODE state and its Euler/Heun updates stay in float32
        whatever the condition's dtype (bf16 under bf16-true, and under bf16 autocast unless the GTB
        ends in a LayerNorm); only the head may compute in lower precision. So a seeded decode is the same under any precision up to
        the head's rounding, and the rounding does not accumulate in the state over the steps.
        """
        cond, grid = self.conditions(z)
        b, n, _ = cond.shape
        cond = cond.reshape(b * n, -1)
        patch_dim = 3 * self.patch_size**2
        if noise is None:
            noise = torch.randn(b, n, patch_dim, device=z.device, generator=generator)
        noise = noise.reshape(b * n, patch_dim).float()

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            # The head runs in the condition's dtype (or autocast's); its output joins the fp32 state.
            return self.head(x.to(cond.dtype), t, cond).float()

        rows = flow.sample(velocity, noise, steps=steps, sampler=sampler)
        return unpatchify(rows.reshape(b, n, patch_dim), grid, self.patch_size)
