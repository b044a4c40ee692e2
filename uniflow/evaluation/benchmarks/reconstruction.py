"""Reconstruction benchmarks: rFID, PSNR, SSIM (and LPIPS) of tokenizer reconstructions of held-out images.

rFID compares the reconstructions with the same images they reconstruct (centre-cropped the ADM way
for ImageNet and COCO), never with ADM's VIRTUAL reference batch, which gives 2-4x worse numbers
(docs/evaluation.md). The originals' statistics come from a ``data ref-stats`` file of those images when
one is given (``eval.fid_reference.<benchmark>``), from the cache for the embedded sets, or from the
originals streamed alongside the reconstructions.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uniflow.config import ConfigError
from uniflow.evaluation import reference_cache, references
from uniflow.evaluation.benchmarks.readers import (
    AdmFolderImages,
    Batch,
    MemoryImages,
    ffcv_batches,
    sharded_batches,
)
from uniflow.evaluation.config import EvalConfig, embedded_count
from uniflow.evaluation.context import EvalContext
from uniflow.evaluation.distributed import all_ranks_agree
from uniflow.evaluation.entry import Benchmark
from uniflow.evaluation.references import Reference
from uniflow.evaluation.results import BenchmarkRun, MetricValue
from uniflow.metrics import FIDMetric, ReconstructionMetrics, ReferenceStats, to_uint8

# Below this many samples the 2048 x 2048 covariance is rank-deficient and FID is strongly biased up.
FID_RELIABLE_COUNT = 10_000
LPIPS_PROVENANCE = "torchmetrics LPIPS, VGG16 backbone (lpips v0.1 linear layers)"


@dataclass
class ReconstructionAccumulator:
    """One rank's running metrics; ``originals`` is None when the reference statistics are known."""

    originals: FIDMetric | None
    reconstructions: FIDMetric
    pixels: ReconstructionMetrics

    def sync(self) -> None:
        for metric in (self.originals, self.reconstructions, self.pixels):
            if metric is not None:
                metric.sync()


def accumulate(
    ctx: EvalContext, name: str, batches: Iterable[Batch], total: int, *, originals: bool, lpips: bool
) -> ReconstructionAccumulator:
    """Reconstruct this rank's batches and feed originals and reconstructions to the metrics (no sync)."""
    acc = ReconstructionAccumulator(
        originals=FIDMetric(ctx.inception(), ctx.device) if originals else None,
        reconstructions=FIDMetric(ctx.inception(), ctx.device),
        pixels=ReconstructionMetrics(lpips=lpips, vgg_weights=ctx.cfg.lpips_weights, device=ctx.device),
    )
    start, done, next_report = time.perf_counter(), 0, 0.0
    for images, index, valid in batches:
        # Quantised once, as a saved PNG would be; both metrics then take the uint8 pixels as they are.
        recon = to_uint8(ctx.reconstruct(images, index))
        acc.reconstructions.update(recon, valid=valid, index=index)
        if acc.originals is not None:
            acc.originals.update(images, valid=valid, index=index)
        acc.pixels.update(images, recon, valid=valid, index=index)
        done += int(valid.sum())
        elapsed = time.perf_counter() - start
        if elapsed >= next_report:
            ctx.info(
                "%s: %d/%d images on rank 0, %.1f images/s",
                name,
                done,
                -(-total // ctx.world_size),
                done / elapsed,
            )
            next_report = elapsed + 30.0
    return acc


def _checked_reference(path: str, total: int, preprocessing: str) -> ReferenceStats:
    stats = ReferenceStats.load(path)
    count, made = stats.meta.get("count"), stats.meta.get("preprocessing")
    if count != total or made != preprocessing:
        raise ConfigError(
            f"reference statistics {path} describe {count} images ({made}); this evaluation uses {total} "
            f"({preprocessing}). Build matching ones with `python -m uniflow data ref-stats`, or leave the "
            "reference unset to compute them from the originals"
        )
    return stats


def score_reconstructions(
    ctx: EvalContext,
    name: str,
    batches: Iterable[Batch],
    total: int,
    *,
    preprocessing: str,
    lpips: bool,
    reference: ReferenceStats | None = None,
    fingerprint: str | None = None,
    data: dict[str, Any] | None = None,
) -> BenchmarkRun:
    """rFID, PSNR, SSIM (and LPIPS) of ``total`` images arriving as sharded ``batches``.

    ``reference`` (statistics of the same images) or a cache hit on ``fingerprint`` skips the
    originals' Inception pass; otherwise it runs alongside, and the result is cached under the
    fingerprint when there is one.
    """
    origin = f"file {reference.meta.get('file')}" if reference is not None else ""
    cache_file = None
    if reference is None and fingerprint is not None:
        cache_file = reference_cache.cache_path(name, fingerprint, ctx.inception().weights.sha256)
        reference = reference_cache.load(cache_file)
        # Every rank must take the same branch: the originals' metric syncs across ranks.
        if not all_ranks_agree(reference is not None, ctx.device):
            reference = None
        origin = f"cache {cache_file}"
    acc = accumulate(ctx, name, batches, total, originals=reference is None, lpips=lpips)
    acc.sync()
    if acc.originals is not None:
        reference = ReferenceStats.from_feature_stats(
            acc.originals.stats, ctx.inception(), {"source_name": name, "preprocessing": preprocessing}
        )
        origin = "the originals, streamed in this run"
        if cache_file is not None and ctx.is_main:
            reference_cache.save(reference, cache_file)
    assert reference is not None  # set by the file, the cache or the originals' pass above
    count = acc.pixels.count
    if count != total:
        raise RuntimeError(f"{name}: {count} samples entered the metrics, expected exactly {total}")
    pixels = acc.pixels.compute()
    fid_provenance = {
        **ctx.inception_provenance(),
        "reference_stats": reference.id,
        "reference_stats_origin": origin,
        "reference_count": reference.meta.get("count"),
    }
    metrics = {
        "rFID": MetricValue(acc.reconstructions.compute(reference), provenance=fid_provenance),
        "PSNR": MetricValue(pixels["psnr"], provenance={"definition": "per-image PSNR on uint8, mean"}),
        "SSIM": MetricValue(
            pixels["ssim"], provenance={"definition": "Gaussian 11x11 sigma 1.5, uint8, mean"}
        ),
    }
    if lpips:
        metrics["LPIPS"] = MetricValue(pixels["lpips"], pixels["lpips_reason"], {"lpips": LPIPS_PROVENANCE})
    notes = []
    if count < FID_RELIABLE_COUNT:
        notes.append(
            f"{name}: rFID from {count} samples is noisy and biased upward (the paper uses 50k); "
            "compare it only with rFIDs from the same number of samples"
        )
    return BenchmarkRun(metrics, {"samples": count, "preprocessing": preprocessing, **(data or {})}, notes)


# ------------------------------------------------------------------------------------ embedded sets
def _run_embedded(ctx: EvalContext, name: str, kind: str) -> BenchmarkRun:
    # Imported here: the data package pulls in Lightning, which no other benchmark needs.
    from uniflow.data.datamodule import heldout_photo_crops, heldout_scenes

    size, seed, count = ctx.tokenizer.image_size, ctx.cfg.seed, embedded_count(ctx.cfg, name)
    if kind == "photos":
        source = heldout_photo_crops(count, size, seed)
        description = "held-out real-photo crops (val regions)"
    else:
        source = heldout_scenes(count, size, seed, annotations=False)
        description = "held-out embedded scenes (val split)"
    images = MemoryImages.render(source, f"{description}, {size} px, seed {seed}")
    batches = sharded_batches(images, ctx.rank, ctx.world_size, ctx.cfg.batch_size)
    fingerprint = images.fingerprint()
    return score_reconstructions(
        ctx,
        name,
        batches,
        len(images),
        preprocessing=images.description,
        lpips=True,
        fingerprint=fingerprint,
        data={"image_size": size, "pixels_sha256": fingerprint},
    )


EMBEDDED_METRICS = ("rFID", "PSNR", "SSIM", "LPIPS")


def _embedded(name: str, kind: str, title: str) -> Benchmark:
    def check(cfg: EvalConfig) -> None:
        embedded_count(cfg, name)

    return Benchmark(
        name=name,
        family="reconstruction",
        title=title,
        metrics=EMBEDDED_METRICS,
        references=references.embedded(EMBEDDED_METRICS),
        paper=False,
        hint=f"add {name} to eval.benchmarks",
        run=lambda ctx: _run_embedded(ctx, name, kind),
        check=check,
    )


# ------------------------------------------------------------------------------- ImageNet and COCO
def _path_check(cfg: EvalConfig, name: str) -> None:
    value = cfg.data.get(name)
    if value is None:
        raise ConfigError(f"benchmark {name} needs eval.data.{name}: an image folder or an FFCV .beton")
    if not Path(value).exists():
        raise ConfigError(f"eval.data.{name} not found: {value}")
    reference = cfg.fid_reference.get(name)
    if reference is not None and not Path(reference).is_file():
        raise ConfigError(f"eval.fid_reference.{name} not found: {reference}")


def _run_dataset(ctx: EvalContext, name: str, lpips: bool) -> BenchmarkRun:
    path = Path(ctx.cfg.data[name])
    num, size = ctx.cfg.num_samples.get(name), ctx.cfg.image_size
    workers, batch_size = ctx.cfg.num_workers, ctx.cfg.batch_size
    if path.suffix == ".beton":
        batches, total, available, preprocessing = ffcv_batches(
            path, ctx.rank, ctx.world_size, size=size, batch_size=batch_size, num=num, num_workers=workers
        )
    else:
        images = AdmFolderImages(path, size, num)
        batches = sharded_batches(images, ctx.rank, ctx.world_size, batch_size, workers)
        total, available, preprocessing = len(images), images.total_in_folder, images.description
    reference_path = ctx.cfg.fid_reference.get(name)
    reference = _checked_reference(reference_path, total, preprocessing) if reference_path else None
    data = {"dataset": str(path), "image_size": size}
    if total < available:
        data["subset"] = f"{total} of {available} images, evenly spread"
    return score_reconstructions(
        ctx, name, batches, total, preprocessing=preprocessing, lpips=lpips, reference=reference, data=data
    )


_FOLDER_OR_BETON = (
    "an image folder (searched recursively; ADM centre crop to eval.image_size) or an FFCV .beton "
    "(`python -m uniflow data write-ffcv`; FFCV's centre crop)"
)
_SAME_IMAGES = (
    "optional: `python -m uniflow data ref-stats` statistics of the same cropped images (count and "
    "preprocessing are checked); skips the originals' Inception pass"
)


def _dataset(
    name: str, title: str, metrics: tuple[str, ...], refs: tuple[Reference, ...], data: str, lpips: bool
) -> Benchmark:
    return Benchmark(
        name=name,
        family="reconstruction",
        title=title,
        metrics=metrics,
        references=refs,
        paper=True,
        data=f"{data}: {_FOLDER_OR_BETON}",
        fid_reference=_SAME_IMAGES,
        hint=f"set eval.data.{name} and add {name} to eval.benchmarks",
        run=lambda ctx: _run_dataset(ctx, name, lpips=lpips),
        check=lambda cfg: _path_check(cfg, name),
    )


BENCHMARKS: tuple[Benchmark, ...] = (
    _embedded("embedded_photos", "photos", "held-out real-photo crops (embedded), tokenizer resolution"),
    _embedded("embedded_scenes", "scenes", "held-out embedded scenes, tokenizer resolution"),
    _dataset(
        "imagenet_recon",
        "ImageNet-1K val 50k, 256 px",
        ("rFID", "PSNR", "SSIM", "LPIPS"),
        references.IMAGENET_RECONSTRUCTION,
        "the 50k ImageNet-1K validation images (val/, flat or in class folders)",
        lpips=True,
    ),
    _dataset(
        "coco_recon",
        "MS-COCO 2017 val, 256 px",
        ("rFID", "PSNR", "SSIM"),
        references.COCO_RECONSTRUCTION,
        "the 5k COCO 2017 validation images (val2017/*.jpg)",
        lpips=False,
    ),
)
