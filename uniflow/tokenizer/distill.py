"""Layer-wise adaptive self-distillation (UniFlow paper, arXiv 2510.10575; ablation switches: README "Configs").

For block l = 1..L the student's patch tokens H_U^l are held close to the frozen teacher's H_T^l by
the mean cosine distance alpha_l. Deeper layers get more weight (w_l^base = l / L), and layers that
drift further get more weight still (exp(beta * alpha_l)). The weights are coefficients: they are
computed from the batch and detached, so the gradient flows only through alpha_l.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from uniflow.tokenizer.config import DISTILL_MODES, DISTILL_NORMALIZATIONS


def layer_alignment(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """alpha = 1 - mean over tokens (and batch) of cos(student, teacher); inputs ``B x S x D``."""
    return 1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1).mean()


def adaptive_layer_weights(
    alphas: torch.Tensor,
    beta: float,
    normalization: str = "paper",
    layer_ids: Sequence[int] | torch.Tensor | None = None,
    depth: int | None = None,
) -> torch.Tensor:
    """Per-layer weights w_l from the per-layer alignment penalties ``alphas`` (layers in order).

    With w_l^base = l / L:

    - ``"paper"`` (canonical, the paper's text): w_l = w_l^base e^{beta a_l} / sum_k w_k^base e^{beta a_k}
    - ``"figure"`` (the framework figure): w_l = w_l^base * softmax(beta a)_l
    - ``"softmax_product"`` (a later author repository): w_l = softmax(w^base * e^{beta a})_l

    ``layer_ids`` are the 1-based block indices the alphas belong to (default ``1..len(alphas)``) and
    ``depth`` is L (default: the largest id), so a subset of layers keeps its place in the hierarchy.
    The result has the dtype of ``alphas`` and carries gradient only if ``alphas`` does; the loss
    passes detached alphas.
    """
    if alphas.dim() != 1 or alphas.numel() == 0:
        raise ValueError(
            f"alphas must be a non-empty 1-D tensor of per-layer values, got shape {tuple(alphas.shape)}"
        )
    if normalization not in DISTILL_NORMALIZATIONS:
        raise ValueError(
            f"unknown normalization {normalization!r}; choose one of {list(DISTILL_NORMALIZATIONS)}"
        )
    ids = torch.arange(1, alphas.numel() + 1) if layer_ids is None else torch.as_tensor(layer_ids)
    if ids.numel() != alphas.numel():
        raise ValueError(f"{alphas.numel()} alphas but {ids.numel()} layer ids")
    ids = ids.to(device=alphas.device, dtype=alphas.dtype)
    base = ids / (depth if depth is not None else ids.max())
    if normalization == "paper":
        unnormalized = base * torch.exp(beta * alphas)
        return unnormalized / unnormalized.sum()
    if normalization == "figure":
        return base * torch.softmax(beta * alphas, dim=0)
    return torch.softmax(base * torch.exp(beta * alphas), dim=0)


@dataclass
class DistillationOutput:
    loss: torch.Tensor
    alphas: torch.Tensor  # (L_selected,) detached, for logging
    weights: torch.Tensor  # (L_selected,)
    layer_ids: list[int]


class SelfDistillationLoss(nn.Module):
    """L_dist = sum_l w_l alpha_l over the selected layers, with the ablations as modes.

    ``mode``: ``adaptive`` (the paper), ``hierarchical`` (fixed w_l proportional to l, i.e. beta = 0),
    ``uniform`` (w_l = 1 / L), ``last`` (last layer only) and ``none``. ``layers`` restricts any
    mode to a 1-based subset of blocks.
    """

    def __init__(
        self,
        depth: int,
        mode: str = "adaptive",
        beta: float = 2.0,
        normalization: str = "paper",
        layers: Sequence[int] | None = None,
    ):
        super().__init__()
        if mode not in DISTILL_MODES:
            raise ValueError(f"unknown distillation mode {mode!r}; choose one of {list(DISTILL_MODES)}")
        if normalization not in DISTILL_NORMALIZATIONS:
            raise ValueError(
                f"unknown normalization {normalization!r}; choose one of {list(DISTILL_NORMALIZATIONS)}"
            )
        selected = list(layers) if layers else list(range(1, depth + 1))
        bad = [layer for layer in selected if not 1 <= layer <= depth]
        if bad:
            raise ValueError(
                f"distillation layers {bad} are outside 1..{depth} (the encoder has {depth} blocks)"
            )
        if mode == "last":
            selected = [max(selected)]
        self.depth, self.mode, self.beta, self.normalization = depth, mode, beta, normalization
        self.layer_ids = sorted(set(selected))

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def weights(self, alphas: torch.Tensor) -> torch.Tensor:
        n = alphas.numel()
        if self.mode in ("uniform", "last"):
            return torch.full_like(alphas, 1.0 / n)
        if self.mode == "hierarchical":  # fixed w_l = l / sum_k k, whatever the normalisation
            return adaptive_layer_weights(alphas, 0.0, "paper", self.layer_ids, self.depth)
        return adaptive_layer_weights(alphas, self.beta, self.normalization, self.layer_ids, self.depth)

    def forward(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> DistillationOutput:
        """``student``/``teacher``: patch tokens of every block (index 0 = block 1)."""
        if len(student) != self.depth or len(teacher) != self.depth:
            raise ValueError(
                f"expected {self.depth} layers from student and teacher, got {len(student)} and {len(teacher)}"
            )
        alphas = torch.stack([layer_alignment(student[i - 1], teacher[i - 1]) for i in self.layer_ids])
        weights = self.weights(alphas.detach())
        return DistillationOutput(
            loss=(weights * alphas).sum(), alphas=alphas.detach(), weights=weights, layer_ids=self.layer_ids
        )
