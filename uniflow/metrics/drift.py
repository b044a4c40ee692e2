"""Semantic drift between the student (the adapted encoder) and the teacher (the untouched one):
per layer, the mean token cosine similarity and linear CKA.

Linear CKA (Kornblith, Norouzi, Lee and Hinton, "Similarity of Neural Network Representations
Revisited", ICML 2019) compares two representations X (n x p) and Y (n x q) of the same n samples.
In its feature-space form, with X and Y centred over the samples,

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F * ||Y^T Y||_F),

which equals the HSIC form with linear kernels without ever building an n x n Gram matrix. It is
invariant to orthogonal transforms and isotropic scaling of either side, but not to arbitrary
invertible linear maps.

Streaming form: every term is a centred (cross-)covariance, and each is a function of running sums
that add up across batches and ranks. With n samples, s_x = sum x_i, S_xy = sum x_i y_i^T,

    C_xy = S_xy - s_x s_y^T / n,  and likewise C_xx, C_yy;  CKA = ||C_xy||_F^2 / (||C_xx||_F ||C_yy||_F)

(the 1/n factors cancel). The sums are float64 so that subtracting the mean term stays accurate when
tokens have large means relative to their spread.

Here a sample is one patch token: student and teacher tokens at the same image and grid position
are paired, so CKA asks whether the two encoders' dense features span the same geometry.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric


def _samples(tokens: torch.Tensor) -> torch.Tensor:
    """``B x N x D`` tokens (or ``n x D`` samples) -> float64 ``n x D``."""
    if tokens.dim() not in (2, 3):
        raise ValueError(f"expected tokens B x N x D or samples n x D, got shape {tuple(tokens.shape)}")
    return tokens.detach().reshape(-1, tokens.shape[-1]).double()


def cka_from_moments(
    n: torch.Tensor,
    sum_x: torch.Tensor,
    sum_y: torch.Tensor,
    xx: torch.Tensor,
    yy: torch.Tensor,
    xy: torch.Tensor,
) -> torch.Tensor:
    """Linear CKA from sample count, feature sums and (uncentred) second-moment matrices."""
    c_xy = xy - torch.outer(sum_x, sum_y) / n
    c_xx = xx - torch.outer(sum_x, sum_x) / n
    c_yy = yy - torch.outer(sum_y, sum_y) / n
    return c_xy.square().sum() / (torch.linalg.matrix_norm(c_xx) * torch.linalg.matrix_norm(c_yy))


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA between paired samples ``x`` (n x p) and ``y`` (n x q), or tokens ``B x N x D``."""
    x, y = _samples(x), _samples(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} samples, y has {y.shape[0]}: they must be paired")
    n = torch.tensor(float(x.shape[0]), dtype=torch.float64)
    return cka_from_moments(n, x.sum(0), y.sum(0), x.T @ x, y.T @ y, x.T @ y)


class LayerDrift(Metric):
    """Streaming mean cosine and linear CKA between paired student and teacher tokens of one layer.

    ``update(student, teacher)`` with ``B x N x D_s`` and ``B x N x D_t`` tokens; the cosine needs
    ``D_s == D_t`` (it is NaN otherwise), CKA does not. States are sums (all-reduced across ranks).
    """

    full_state_update = False

    def __init__(self, student_dim: int, teacher_dim: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        teacher_dim = student_dim if teacher_dim is None else teacher_dim
        self.student_dim, self.teacher_dim = student_dim, teacher_dim
        f64 = torch.float64
        self.add_state("n", default=torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("cosine_sum", default=torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("sum_x", default=torch.zeros(student_dim, dtype=f64), dist_reduce_fx="sum")
        self.add_state("sum_y", default=torch.zeros(teacher_dim, dtype=f64), dist_reduce_fx="sum")
        self.add_state("xx", default=torch.zeros(student_dim, student_dim, dtype=f64), dist_reduce_fx="sum")
        self.add_state("yy", default=torch.zeros(teacher_dim, teacher_dim, dtype=f64), dist_reduce_fx="sum")
        self.add_state("xy", default=torch.zeros(student_dim, teacher_dim, dtype=f64), dist_reduce_fx="sum")

    def update(self, student: torch.Tensor, teacher: torch.Tensor) -> None:
        x, y = _samples(student), _samples(teacher)
        if x.shape != (x.shape[0], self.student_dim) or y.shape != (x.shape[0], self.teacher_dim):
            raise ValueError(
                f"expected paired tokens of width {self.student_dim} (student) and {self.teacher_dim} "
                f"(teacher), got shapes {tuple(student.shape)} and {tuple(teacher.shape)}"
            )
        self.n += x.shape[0]
        if self.student_dim == self.teacher_dim:
            self.cosine_sum += F.cosine_similarity(x, y, dim=-1).sum()
        self.sum_x += x.sum(0)
        self.sum_y += y.sum(0)
        self.xx += x.T @ x
        self.yy += y.T @ y
        self.xy += x.T @ y

    def compute(self) -> dict[str, torch.Tensor]:
        if self.n == 0:
            nan = torch.tensor(torch.nan, dtype=torch.float64)
            return {"cosine": nan, "cka": nan.clone()}
        cosine = self.cosine_sum / self.n if self.student_dim == self.teacher_dim else torch.tensor(torch.nan)
        return {
            "cosine": cosine,
            "cka": cka_from_moments(self.n, self.sum_x, self.sum_y, self.xx, self.yy, self.xy),
        }


class SemanticDrift(nn.Module):
    """:class:`LayerDrift` for every block: ``update`` takes the per-block token lists of the student
    and the teacher (e.g. ``EncoderFeatures.layers``), block ``l`` paired with block ``l``."""

    def __init__(self, num_layers: int, student_dim: int, teacher_dim: int | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(LayerDrift(student_dim, teacher_dim) for _ in range(num_layers))

    def update(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> None:
        if not len(student) == len(teacher) == len(self.layers):
            raise ValueError(
                f"expected {len(self.layers)} layers from both, got {len(student)} (student) "
                f"and {len(teacher)} (teacher)"
            )
        for metric, s, t in zip(self.layers, student, teacher, strict=True):
            metric.update(s, t)

    def compute(self) -> list[dict[str, float]]:
        """One row per block (1-based ``layer``, as the blocks are counted in the papers)."""
        rows = []
        for index, metric in enumerate(self.layers):
            values = metric.compute()
            rows.append({"layer": index + 1, **{k: float(v) for k, v in values.items()}})
        return rows

    def reset(self) -> None:
        for metric in self.layers:
            metric.reset()
