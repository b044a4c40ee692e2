"""Streaming Frechet Inception Distance: feature statistics that merge across ranks, and a careful distance.

No image files are written: batches go straight from a tokenizer or generator through Inception
into float64 running sums. Exactly-once accounting in distributed evaluation rests on two things
the caller passes with every batch: a validity mask (False for the padding a distributed sampler
adds so that every rank gets the same number of batches) and, optionally, each sample's dataset
index, which is checked for duplicates within a rank at update time and across ranks at sync time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

from uniflow.metrics.inception import FEATURE_DIM, InceptionFeatureExtractor
from uniflow.metrics.ledger import SampleLedger, distributed_world

# Negative eigenvalues of a covariance product below -tol * (largest eigenvalue) mean the inputs
# are not covariance matrices; above it they are rounding noise of a rank-deficient estimate.
_PSD_TOLERANCE = 1e-6


def _resolved(eigvals: np.ndarray) -> np.ndarray:
    """Eigenvalues below the numerical resolution (largest x dim x float64 eps, numpy's matrix_rank
    threshold) set to 0. They are rounding noise around the null space of a rank-deficient
    covariance, and the square root would amplify them: 1e-14 becomes 1e-7, times ~2000 of them."""
    cutoff = float(np.abs(eigvals).max(initial=0.0)) * eigvals.shape[0] * np.finfo(np.float64).eps
    return np.where(eigvals > cutoff, eigvals, 0.0)


def _sqrt_psd(matrix: np.ndarray, name: str) -> np.ndarray:
    eigvals, eigvecs = np.linalg.eigh(matrix)
    _check_psd(eigvals, name)
    return (eigvecs * np.sqrt(_resolved(eigvals))) @ eigvecs.T


def _check_psd(eigvals: np.ndarray, name: str) -> None:
    scale = max(float(np.abs(eigvals).max(initial=0.0)), 1e-300)
    if float(eigvals.min(initial=0.0)) < -_PSD_TOLERANCE * scale:
        raise ValueError(
            f"{name} is not positive semi-definite: smallest eigenvalue {eigvals.min():.3g}, largest {scale:.3g}"
        )


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2), computed without complex numbers.

    tr((S1 S2)^1/2) equals tr((A S2 A)^1/2) with A = S1^1/2, because S1 S2 = A (A S2 A) A^-1 is
    similar to A S2 A (also when S1 is singular, by continuity). A S2 A is symmetric PSD, so a
    symmetric eigensolver gives real eigenvalues: no sqrtm of a non-symmetric product, no imaginary
    parts to discard, no NaN from near-singular covariances (eigenvalues below numerical resolution,
    including tiny negative ones, count as 0; clearly negative ones are an error). float64 throughout.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"means must be 1-D of equal length, got {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"covariances must be {d} x {d}, got {sigma1.shape} and {sigma2.shape}")
    for name, value in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.isfinite(value).all():
            raise ValueError(f"{name} has non-finite entries")
    # Symmetrise: covariances read from files or summed across ranks can be asymmetric by rounding.
    sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
    root1 = _sqrt_psd(sigma1, "sigma1")
    product = root1 @ sigma2 @ root1
    eigvals = np.linalg.eigvalsh((product + product.T) / 2)
    _check_psd(eigvals, "sqrt(sigma1) @ sigma2 @ sqrt(sigma1)")
    tr_covmean = float(np.sqrt(_resolved(eigvals)).sum())
    diff = mu1 - mu2
    fid = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)
    # The exact value is >= 0; a tiny negative one is cancellation between nearly equal statistics.
    scale = float(np.trace(sigma1) + np.trace(sigma2) + diff @ diff)
    if fid < 0:
        if fid < -1e-9 * max(scale, 1.0):
            raise ValueError(
                f"Frechet distance came out negative ({fid:.3g}); the statistics are inconsistent"
            )
        fid = 0.0
    return fid


class FeatureStats:
    """Running float64 sum of features, sum of outer products and count; mergeable and all-reducible.

    float64 matters: the covariance is (sum xx^T - n mu mu^T) / (n - 1), a difference of two large
    nearly equal terms over 50k samples, which float32 would not resolve.
    """

    def __init__(self, dim: int = FEATURE_DIM, device: torch.device | str = "cpu") -> None:
        self.dim = dim
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self.count = 0

    def update(self, features: torch.Tensor) -> None:
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"expected features N x {self.dim}, got {tuple(features.shape)}")
        x = features.detach().to(device=self.sum.device, dtype=torch.float64)
        self.sum += x.sum(dim=0)
        self.outer += x.T @ x
        self.count += x.shape[0]

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add another shard's statistics into these (in place); returns self."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge {other.dim}-d statistics into {self.dim}-d statistics")
        self.sum += other.sum.to(self.sum.device)
        self.outer += other.outer.to(self.sum.device)
        self.count += other.count
        return self

    def all_reduce(self, group: dist.ProcessGroup | None = None) -> FeatureStats:
        """Sum the statistics over all ranks of ``group`` (in place); a no-op outside torch.distributed."""
        if not (dist.is_available() and dist.is_initialized()):
            return self
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=self.sum.device)
        for tensor in (self.sum, self.outer, count):
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
        self.count = round(float(count.item()))
        return self

    def mean(self) -> np.ndarray:
        if self.count < 1:
            raise ValueError("no samples accumulated")
        return (self.sum / self.count).cpu().numpy()

    def cov(self) -> np.ndarray:
        """Unbiased covariance (n - 1), as np.cov, torch-fidelity and ADM's evaluator compute it."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 samples, have {self.count}")
        mean = self.sum / self.count
        cov = (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)
        return cov.cpu().numpy()

    def frechet_distance(self, other: FeatureStats | tuple[np.ndarray, np.ndarray]) -> float:
        mu2, sigma2 = (other.mean(), other.cov()) if isinstance(other, FeatureStats) else other
        return frechet_distance(self.mean(), self.cov(), mu2, sigma2)


class FIDMetric:
    """Images in, Inception statistics out; one instance per image set (e.g. originals, reconstructions).

    ``update(images, valid=mask, index=idx)`` accepts uint8 or [0, 1] float B x 3 x H x W batches.
    Samples with ``valid == False`` are dropped before Inception runs; an ``index`` already seen on
    this rank is dropped too (counted in ``ledger.duplicates_dropped``). ``sync()`` all-reduces the
    statistics and, when indices were given, verifies no index was counted on two ranks.
    Several metrics can share one extractor.

    With ``inception_score=True`` the classifier logits of the same forward pass are kept (1008
    floats per sample) for :meth:`inception_score`; without a classifier in the weights, the score
    is None and :attr:`inception_score_reason` says why.
    """

    def __init__(
        self,
        extractor: InceptionFeatureExtractor | None = None,
        device: torch.device | str = "cpu",
        *,
        inception_score: bool = False,
    ) -> None:
        self._extractor = extractor
        self.device = torch.device(device)
        self.stats = FeatureStats(FEATURE_DIM, device=device)
        self.ledger = SampleLedger()
        self.inception_score_requested = inception_score
        self._logits: list[torch.Tensor] = []

    @property
    def extractor(self) -> InceptionFeatureExtractor:
        """Built on first use, so feature-only use (``update_features``) never loads Inception."""
        if self._extractor is None:
            self._extractor = InceptionFeatureExtractor().to(self.device)
        return self._extractor

    @property
    def inception_score_reason(self) -> str | None:
        """None when :meth:`inception_score` gives a number; otherwise why it gives None."""
        if not self.inception_score_requested:
            return "n/a: not requested"
        return self.extractor.inception_score_unavailable_reason()

    def update(
        self,
        images: torch.Tensor,
        *,
        valid: torch.Tensor | Sequence[bool] | None = None,
        index: torch.Tensor | Sequence[int] | None = None,
    ) -> int:
        """Add a batch of images; returns how many entered the statistics."""
        keep = self.ledger.accept(images.shape[0], valid, index)
        if not keep.any():
            return 0
        features, logits = self.extractor.forward_with_logits(images[keep.to(images.device)])
        self.stats.update(features)
        if self.inception_score_reason is None and logits is not None:
            self._logits.append(logits.cpu())
        return int(keep.sum())

    def update_features(
        self,
        features: torch.Tensor,
        *,
        valid: torch.Tensor | Sequence[bool] | None = None,
        index: torch.Tensor | Sequence[int] | None = None,
    ) -> int:
        """As :meth:`update`, for features already computed by the same extractor."""
        keep = self.ledger.accept(features.shape[0], valid, index)
        self.stats.update(features[keep.to(features.device)])
        return int(keep.sum())

    def sync(self, group: dist.ProcessGroup | None = None) -> FeatureStats:
        """All-reduce the statistics over ranks (once) and check exactly-once over the indices seen."""
        if self.ledger.synced:
            return self.stats
        self.ledger.check_across_ranks(group)
        if distributed_world(group) > 1:
            self.stats.all_reduce(group)
            if self.inception_score_reason is None:
                gathered: list[list[torch.Tensor]] = [[] for _ in range(distributed_world(group))]
                dist.all_gather_object(gathered, self._logits, group=group)
                self._logits = [t for rank_logits in gathered for t in rank_logits]
        return self.stats

    def inception_score(self, splits: int = 10) -> tuple[float, float] | None:
        """(mean, std) over ``splits`` as torch-fidelity computes it, or None (see inception_score_reason)."""
        if self.inception_score_reason is not None:
            return None
        if not self._logits:
            raise ValueError("no samples accumulated")
        result = isc_features_to_metric(torch.cat(self._logits), splits=splits)
        return result[KEY_METRIC_ISC_MEAN], result[KEY_METRIC_ISC_STD]

    def compute(self, reference: FIDMetric | FeatureStats | tuple[np.ndarray, np.ndarray]) -> float:
        """FID between these images and ``reference``: another metric, statistics, (mu, sigma), or any
        object with ``mu`` and ``sigma`` (e.g. :class:`uniflow.metrics.reference.ReferenceStats`).
        In distributed runs call :meth:`sync` first on every rank."""
        if isinstance(reference, FIDMetric):
            reference = reference.stats
        elif hasattr(reference, "mu") and hasattr(reference, "sigma"):
            reference = (reference.mu, reference.sigma)
        return self.stats.frechet_distance(reference)
