"""Evaluation metrics: FID/IS from the FID Inception (streaming, distributed, exactly-once),
reference statistics and ADM files, and PSNR/SSIM/LPIPS for reconstructions."""

from uniflow.metrics.fid import FeatureStats, FIDMetric, frechet_distance
from uniflow.metrics.inception import (
    InceptionFeatureExtractor,
    InceptionWeights,
    InceptionWeightsNotFound,
    resolve_inception_weights,
    to_uint8,
)
from uniflow.metrics.ledger import SampleLedger, shard_indices
from uniflow.metrics.reconstruction import ReconstructionMetrics, psnr, ssim
from uniflow.metrics.reference import (
    AdmNpzWriter,
    ReferenceStats,
    adm_center_crop,
    build_reference_stats,
    compute_reference_stats,
    write_adm_npz,
)

__all__ = [
    "AdmNpzWriter",
    "FIDMetric",
    "FeatureStats",
    "InceptionFeatureExtractor",
    "InceptionWeights",
    "InceptionWeightsNotFound",
    "ReconstructionMetrics",
    "ReferenceStats",
    "SampleLedger",
    "adm_center_crop",
    "build_reference_stats",
    "compute_reference_stats",
    "frechet_distance",
    "psnr",
    "resolve_inception_weights",
    "shard_indices",
    "ssim",
    "to_uint8",
    "write_adm_npz",
]
