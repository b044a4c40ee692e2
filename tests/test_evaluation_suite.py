"""The evaluation suite end to end on a tiny random tokenizer: results files, provenance, caching, exactly-once.

A cheap fake stands in for Inception here (tests/evaluation_fakes.py); test_evaluation_cli.py runs
the real one.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from evaluation_fakes import FakeExtractor, photo_folder, quick_metrics, save_tiny_tokenizer
from threadpoolctl import threadpool_limits

from uniflow.config import ConfigError
from uniflow.evaluation import SuiteResults, run_suite
from uniflow.evaluation.benchmarks.readers import MemoryImages, sharded_batches, spread
from uniflow.evaluation.benchmarks.reconstruction import accumulate
from uniflow.evaluation.config import EvalConfig
from uniflow.evaluation.context import EvalContext
from uniflow.metrics import build_reference_stats
from uniflow.metrics.inception import sha256_file
from uniflow.tokenizer.model import UniFlowTokenizer

SMALL = {"embedded_photos": 6, "embedded_scenes": 5}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    with quick_metrics(tmp_path_factory.mktemp("cache")):
        yield


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return save_tiny_tokenizer(tmp_path_factory.mktemp("run") / "tiny" / "tokenizer")


def small_config(num_samples: dict[str, int] | None = None, **kwargs) -> EvalConfig:
    # The reconstruction benchmarks of the default list; the drift row has tests of its own.
    kwargs.setdefault("benchmarks", list(SMALL))
    counts = {**SMALL, **(num_samples or {})}
    return EvalConfig(num_samples=counts, batch_size=4, num_workers=0, device="cpu", **kwargs)


def run_small(tokenizer_dir: Path, out: Path, **kwargs) -> SuiteResults:
    return run_suite(small_config(**kwargs), tokenizer_dir, out, run_name="tiny", extractor=FakeExtractor())


@pytest.fixture(scope="module")
def default_run(quick, tokenizer_dir, tmp_path_factory) -> tuple[SuiteResults, Path]:
    out = tmp_path_factory.mktemp("eval")
    return run_small(tokenizer_dir, out), out


def test_suite_writes_results_with_provenance_beside_the_paper(default_run, tokenizer_dir):
    _, out = default_run
    data = json.loads((out / "results.json").read_text())
    table = (out / "results.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md"]  # no temporary files left

    by_name = {b["name"]: b for b in data["benchmarks"]}
    assert sum(b["paper"] for b in data["benchmarks"]) == 13
    assert data["run"]["tokenizer_sha256"] == sha256_file(tokenizer_dir / "model.safetensors")
    for name, count in SMALL.items():
        result = by_name[name]
        assert result["status"] == "ok"
        for metric in ("rFID", "PSNR", "SSIM"):
            entry = result["metrics"][metric]
            assert np.isfinite(entry["value"]), (name, metric)
            prov = entry["provenance"]
            assert prov["samples"] == count and prov["image_size"] == 32
            assert prov["tokenizer_sha256"] == data["run"]["tokenizer_sha256"]
            settings = (prov["sampler"], prov["steps"], prov["guidance"], prov["precision"])
            assert settings == ("euler", 1, "none", "32-true")
        fid = result["metrics"]["rFID"]["provenance"]
        assert fid["reference_stats"].startswith(f"{name}@") and fid["reference_count"] == count
        assert (fid["inception_weights_source"], fid["inception_weights_sha256"]) == ("test-fake", "f" * 64)
        lpips = result["metrics"]["LPIPS"]
        assert (lpips["value"] is None) == (lpips["reason"] is not None)
    assert 0 < by_name["embedded_photos"]["metrics"]["SSIM"]["value"] < 1

    gen = by_name["imagenet_gen"]
    assert gen["status"] == "not run" and "eval.data.imagenet_gen" in gen["reason"]
    assert by_name["pope"]["metrics"]["POPE"]["reason"].startswith("not run: not enabled: set eval.data.pope")
    assert by_name["imagenet_recon"]["metrics"]["rFID"]["value"] is None

    assert (
        "| family | benchmark | metric | ours | samples | UniFlow (paper) | anchors | provenance |" in table
    )
    assert "not run: not enabled: set eval.data.pope" in table
    assert "| 0.26 (" in table and "UniTok 0.38-0.41" in table  # the paper's rFID and an anchor's
    assert "reference_stats: embedded_photos@" in table
    assert "rFID from 6 samples is noisy" in table


def test_second_run_reuses_cached_reference_and_reproduces_the_numbers(default_run, tokenizer_dir, tmp_path):
    first = default_run[0].get("embedded_photos").metrics
    second = run_small(tokenizer_dir, tmp_path, benchmarks=["embedded_photos"]).get("embedded_photos").metrics
    assert first["rFID"].provenance["reference_stats_origin"] == "the originals, streamed in this run"
    assert second["rFID"].provenance["reference_stats_origin"].startswith("cache ")
    # Decoding noise is seeded per sample, so the reconstructions (and every metric) repeat exactly.
    for metric in ("rFID", "PSNR", "SSIM"):
        assert first[metric].value == pytest.approx(second[metric].value, rel=1e-9)


def test_every_sample_once_across_simulated_ranks_and_rank_independent(tokenizer_dir):
    tokenizer = UniFlowTokenizer.from_pretrained(tokenizer_dir)
    images = MemoryImages(torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8), "random")

    def shard(rank: int, world: int):
        cpu = torch.device("cpu")
        ctx = EvalContext(small_config(), tokenizer, tokenizer_dir, "x", cpu, Path("."), rank, world)
        ctx.extractor = FakeExtractor()
        return accumulate(ctx, "t", sharded_batches(images, rank, world, 2), 7, originals=True, lpips=False)

    single = shard(0, 1)
    ranks = [shard(r, 3) for r in range(3)]  # 3 + 3 + 3 positions, two of them padding
    seen = [acc.reconstructions.ledger.seen for acc in ranks]
    assert sorted(i for s in seen for i in s) == list(range(7))
    assert [acc.pixels.count for acc in ranks] == [3, 2, 2]
    merged = ranks[0].reconstructions.stats
    for acc in ranks[1:]:
        merged.merge(acc.reconstructions.stats)
    # Noise seeded by sample index: three ranks reconstruct exactly what one process does.
    torch.testing.assert_close(merged.sum, single.reconstructions.stats.sum, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(merged.outer, single.reconstructions.stats.outer, rtol=1e-9, atol=1e-9)
    psnr = sum(float(acc.pixels.sums[0]) for acc in ranks)
    assert psnr == pytest.approx(float(single.pixels.sums[0]), rel=1e-9)


def test_bf16_autocast_reconstructs_in_float32_close_to_full_precision(tokenizer_dir):
    tokenizer = UniFlowTokenizer.from_pretrained(tokenizer_dir)
    images, index = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8), torch.arange(3)
    out = {}
    for precision in ("32-true", "bf16-mixed"):
        cfg = small_config(precision=precision)
        ctx = EvalContext(cfg, tokenizer, tokenizer_dir, "x", torch.device("cpu"), Path("."))
        out[precision] = ctx.reconstruct(images, index)
    assert out["bf16-mixed"].dtype == torch.float32 and out["bf16-mixed"].shape == (3, 3, 32, 32)
    assert (out["bf16-mixed"] - out["32-true"]).abs().mean() < 0.02


def _suite_worker(rank: int, world: int, port: int, tokenizer_dir: Path, out: Path, cache: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), UNIFLOW_CACHE=str(cache))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        with threadpool_limits(1):
            run_small(tokenizer_dir, out, benchmarks=["embedded_photos"])
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_gloo_ranks_reproduce_the_single_process_numbers(default_run, tokenizer_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # A fresh cache, so both ranks stream the originals (6 samples: 3 each, no padding) and sync them.
    args = (2, port, tokenizer_dir, tmp_path / "eval", tmp_path / "cache")
    mp.spawn(_suite_worker, args=args, nprocs=2, join=True)
    data = json.loads((tmp_path / "eval" / "results.json").read_text())
    photos = next(b for b in data["benchmarks"] if b["name"] == "embedded_photos")["metrics"]
    single = default_run[0].get("embedded_photos").metrics
    assert photos["rFID"]["provenance"]["world_size"] == 2 and photos["rFID"]["provenance"]["samples"] == 6
    assert photos["rFID"]["provenance"]["reference_stats_origin"] == "the originals, streamed in this run"
    for metric in ("rFID", "PSNR", "SSIM"):
        assert photos[metric]["value"] == pytest.approx(single[metric].value, rel=1e-9), metric


def test_imagenet_folder_with_matching_reference_stats_equals_streaming_the_originals(
    quick, tokenizer_dir, tmp_path
):
    folder = photo_folder(tmp_path / "val", 5)
    reference = tmp_path / "ref.npz"
    build_reference_stats(folder, reference, extractor=FakeExtractor(), size=32)
    common = {"benchmarks": ["imagenet_recon"], "data": {"imagenet_recon": str(folder)}, "image_size": 32}
    streamed = run_small(tokenizer_dir, tmp_path / "a", **common).get("imagenet_recon").metrics["rFID"]
    by_file = {"imagenet_recon": str(reference)}
    with_file = run_small(tokenizer_dir, tmp_path / "b", **common, fid_reference=by_file)
    from_file = with_file.get("imagenet_recon").metrics["rFID"]
    assert streamed.provenance["samples"] == 5
    assert streamed.provenance["preprocessing"] == "adm_center_crop_arr(32) from image files"
    assert from_file.provenance["reference_stats_origin"] == f"file {reference}"
    assert streamed.value == pytest.approx(from_file.value, rel=1e-6)

    subset = {"imagenet_recon": 3}
    with pytest.raises(ConfigError, match=r"describe 5 images .* uses 3"):
        run_small(tokenizer_dir, tmp_path / "c", **common, fid_reference=by_file, num_samples=subset)


def test_subsets_are_spread_over_the_whole_set():
    assert spread(10, None) == list(range(10))
    assert spread(10, 4) == [0, 2, 5, 7]
    assert spread(3, 5) == [0, 1, 2]


@pytest.mark.slow  # FFCV's first use compiles its pipeline with numba: ~20-40 s on a busy 2-core machine
def test_coco_from_an_ffcv_file_visits_every_sample_once(quick, tokenizer_dir, tmp_path, requires_ffcv):
    from uniflow.data.ffcv import write_ffcv

    beton = write_ffcv(
        photo_folder(tmp_path / "val", 7), tmp_path / "val.beton", max_side=64, num_workers=1
    ).path
    config = {"benchmarks": ["coco_recon"], "data": {"coco_recon": str(beton)}, "image_size": 32}
    result = run_small(tokenizer_dir, tmp_path / "eval", **config, num_samples={"coco_recon": 5})
    fid = result.get("coco_recon").metrics["rFID"]
    assert (
        fid.value > 0
        and fid.provenance["samples"] == 5
        and fid.provenance["subset"] == "5 of 7 images, evenly spread"
    )
    assert fid.provenance["preprocessing"].startswith("FFCV CenterCropRGBImageDecoder(32")
