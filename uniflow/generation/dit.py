"""FlowDiT: a class-conditional flow transformer on the tokenizer's latent grid.

DiT (Peebles & Xie 2023) with LightningDiT's blocks (RMSNorm, SwiGLU, 2-D RoPE, adaLN-zero and an
optional QK-norm, off by default as in LightningDiT's and RAE's released configs; Yao et al. 2025)
trained as a rectified flow with the project's convention (t = 0 data, t = 1 noise, velocity target
``eps - x``), logit-normal times and the dimension-dependent time shift of RAE (Zheng et al. 2025).
The optional wide head is RAE's DiT^DH: a few wide blocks that embed the noisy tokens again and are
conditioned per token by the trunk's output, so that the final projection is wider than the token
it predicts even for high-channel latents.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from uniflow import flow
from uniflow.generation.conditioning import ClassConditionedLatents
from uniflow.nn import FinalAdaLNLayer, TimestepEmbedder, sincos_2d_position_embedding
from uniflow.nn.dit_blocks import AdaLNZeroBlock
from uniflow.nn.rope import rope_2d_table
from uniflow.tokenizer.decoder import patchify, unpatchify


@dataclass(frozen=True)
class DiTSize:
    """Trunk depth, width and heads (DiT's table), and the wide head (0 blocks: none)."""

    depth: int
    width: int
    heads: int
    head_depth: int = 0
    head_width: int = 0
    head_heads: int = 0


_TRUNKS = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
# RAE's DiT^DH uses the same head (2 blocks, width 2048, 16 heads) on every trunk size.
_WIDE_HEAD = (2, 2048, 16)

FLOWDIT_SIZES: dict[str, DiTSize] = {
    **{name: DiTSize(*trunk) for name, trunk in _TRUNKS.items()},
    **{f"{name}-DH": DiTSize(*trunk, *_WIDE_HEAD) for name, trunk in _TRUNKS.items()},
}


class FlowDiT(ClassConditionedLatents, nn.Module):
    """v(x_t, t, class) on latents ``B x C x h x w``, tokenised by ``patch_size`` x ``patch_size`` patches."""

    def __init__(
        self,
        in_channels: int,
        input_size: int | tuple[int, int],
        num_classes: int,
        patch_size: int = 1,
        depth: int = 12,
        width: int = 384,
        heads: int = 6,
        mlp_ratio: float = 4.0,
        qk_norm: bool = False,
        rope: bool = True,
        head_depth: int = 0,
        head_width: int = 0,
        head_heads: int = 0,
        class_dropout: float = 0.1,
        shift: float | None = None,
        logit_normal_prob: float = 1.0,
        logit_normal_mean: float = 0.0,
        logit_normal_std: float = 1.0,
    ):
        super().__init__()
        h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        if h % patch_size or w % patch_size:
            raise ValueError(f"latent grid {h}x{w} is not divisible by patch_size={patch_size}")
        if not 0.0 <= class_dropout < 1.0:
            raise ValueError(f"class_dropout must be in [0, 1), got {class_dropout}")
        self.in_channels, self.input_size, self.patch_size = in_channels, (h, w), patch_size
        self.grid = (h // patch_size, w // patch_size)
        self.num_classes = num_classes
        self.class_dropout = class_dropout
        # The rule's base is 4096 numbers per latent; below it, it would shift toward the data, where
        # a small model then almost never trains at the high noise levels that decide the class
        # (a 4 x 4 x 4 latent gets s = 0.125 and its samples ignore the label). Default: at least 1.
        self.shift = max(1.0, flow.shift_for_latent(h, w, in_channels)) if shift is None else float(shift)
        self.logit_normal = (logit_normal_prob, logit_normal_mean, logit_normal_std)
        patch_dim = in_channels * patch_size**2

        self.x_embed = nn.Linear(patch_dim, width)
        self.t_embed = TimestepEmbedder(width)
        # Index num_classes is the null class: the unconditional model of classifier-free guidance.
        self.y_embed = nn.Embedding(num_classes + 1, width)
        nn.init.normal_(self.y_embed.weight, std=0.02)
        self.register_buffer("pos", sincos_2d_position_embedding(width, *self.grid)[None], persistent=False)
        self.register_buffer(
            "rope", rope_2d_table(width // heads, *self.grid) if rope else None, persistent=False
        )
        self.blocks = nn.ModuleList(AdaLNZeroBlock(width, heads, mlp_ratio, qk_norm) for _ in range(depth))

        self.has_head = head_depth > 0
        out_width = width
        if self.has_head:
            self.s_proj = nn.Linear(width, head_width)
            self.head_x_embed = nn.Linear(patch_dim, head_width)
            self.register_buffer(
                "head_pos", sincos_2d_position_embedding(head_width, *self.grid)[None], persistent=False
            )
            self.register_buffer(
                "head_rope",
                rope_2d_table(head_width // head_heads, *self.grid) if rope else None,
                persistent=False,
            )
            self.head_blocks = nn.ModuleList(
                AdaLNZeroBlock(head_width, head_heads, mlp_ratio, qk_norm) for _ in range(head_depth)
            )
            out_width = head_width
        self.final = FinalAdaLNLayer(out_width, patch_dim)

    @classmethod
    def from_name(cls, name: str, **kwargs) -> FlowDiT:
        """A named size of :data:`FLOWDIT_SIZES` (``"XL"``, ``"XL-DH"``, ...); other arguments as ``__init__``."""
        if name not in FLOWDIT_SIZES:
            raise ValueError(f"unknown FlowDiT size {name!r}; choose one of {sorted(FLOWDIT_SIZES)}")
        size = FLOWDIT_SIZES[name]
        return cls(
            depth=size.depth,
            width=size.width,
            heads=size.heads,
            head_depth=size.head_depth,
            head_width=size.head_width,
            head_heads=size.head_heads,
            **kwargs,
        )

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Velocity ``B x C x h x w`` at noisy latents ``x_t``, times ``t`` (``B``) and labels (``B``, null allowed)."""
        tokens = patchify(x_t, self.patch_size)
        t_emb = self.t_embed(t)
        cond = t_emb + self.y_embed(labels)
        x = self.x_embed(tokens) + self.pos
        for block in self.blocks:
            x = block(x, cond, self.rope)
        if self.has_head:
            # DiT^DH: the trunk's token (with the time) becomes the head's per-token condition.
            cond = self.s_proj(F.silu(x + t_emb[:, None]))
            x = self.head_x_embed(tokens) + self.head_pos
            for block in self.head_blocks:
                x = block(x, cond, self.head_rope)
        else:
            cond = cond[:, None]
        out = self.final(x, cond)
        return unpatchify(out, self.grid, self.patch_size, self.in_channels)

    def training_loss(
        self, z: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Mean squared error of the predicted velocity against ``eps - z`` at shifted logit-normal times."""
        self.check_latents(z, labels)
        prob, mean, std = self.logit_normal
        t = flow.sample_time(z.shape[0], prob, mean, std, z.device, generator, shift=self.shift)
        noise = torch.randn(z.shape, device=z.device, dtype=z.dtype, generator=generator)
        x_t, u = flow.interpolate(z, noise, t)
        v = self(x_t, t, self.drop_labels(labels, generator))
        return F.mse_loss(v.float(), u.float())

    @torch.no_grad()
    def sample(
        self,
        labels: torch.Tensor,
        steps: int = 50,
        sampler: str = "euler",
        cfg_scale: float = 1.0,
        guidance_interval: tuple[float, float] | None = None,
        shift: float | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Latents ``B x C x h x w`` for ``labels`` by integrating the flow from noise on the shifted grid.

        ``shift`` defaults to the one the model was trained with. Guidance acts on every channel,
        within ``guidance_interval`` when one is given. The noise is ``noise`` if given, else drawn
        in float32 from ``generator`` on the model's device, so a seed gives the same samples under
        any autocast dtype.
        """
        param = self.x_embed.weight
        if noise is None:
            noise = torch.randn(
                (labels.shape[0], self.in_channels, *self.input_size),
                device=param.device,
                generator=generator,
            )
        self.check_latents(noise, labels)
        null = torch.full_like(labels, self.null_class)
        guided = flow.classifier_free_guidance(
            lambda x, t: self(x, t, labels), lambda x, t: self(x, t, null), cfg_scale, guidance_interval
        )
        return flow.sample(
            guided, noise.to(param.dtype), steps, sampler, shift=self.shift if shift is None else shift
        )
