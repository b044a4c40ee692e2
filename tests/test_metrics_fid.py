"""FID machinery: the Frechet distance, streaming statistics across ranks, exactly-once, reference files."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from torch_fidelity.metric_fid import fid_statistics_to_metric

from uniflow.metrics import (
    AdmNpzWriter,
    FeatureStats,
    FIDMetric,
    ReconstructionMetrics,
    ReferenceStats,
    adm_center_crop,
    build_reference_stats,
    frechet_distance,
    shard_indices,
    write_adm_npz,
)
from uniflow.metrics.cli import fid_main, ref_stats_main
from uniflow.metrics.inception import (
    InceptionFeatureExtractor,
    real_photo_batch,
)
from uniflow.metrics.reference import FolderBatches


def _random_cov(rng: np.random.Generator, d: int, rank: int | None = None) -> np.ndarray:
    a = rng.normal(size=(d, rank or 2 * d))
    return a @ a.T / a.shape[1]


# --- the distance ---------------------------------------------------------------------------------
def test_frechet_distance_closed_form_diagonal():
    rng = np.random.default_rng(0)
    d = 64
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_closed_form_scaled_full_covariance():
    # sigma2 = c sigma1 => tr((S1 S2)^1/2) = sqrt(c) tr(S1), for any full covariance.
    rng = np.random.default_rng(1)
    sigma, c = _random_cov(rng, 50), 2.5
    mu1, mu2 = rng.normal(size=50), rng.normal(size=50)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma) * (1 + c - 2 * np.sqrt(c))
    assert frechet_distance(mu1, sigma, mu2, c * sigma) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_agrees_with_torch_fidelity_formula():
    rng = np.random.default_rng(2)
    stats = [{"mu": rng.normal(size=80), "sigma": _random_cov(rng, 80)} for _ in range(2)]
    theirs = fid_statistics_to_metric(stats[0], stats[1], verbose=False)["frechet_inception_distance"]
    ours = frechet_distance(stats[0]["mu"], stats[0]["sigma"], stats[1]["mu"], stats[1]["sigma"])
    assert ours == pytest.approx(theirs, rel=1e-9)


def test_frechet_distance_near_singular_is_finite_and_zero_for_equal_stats():
    rng = np.random.default_rng(3)
    # 128-d covariances from 20 samples: rank 19, the situation that makes sqrtm return NaN/complex.
    f1, f2 = rng.normal(size=(20, 128)), rng.normal(size=(20, 128)) + 0.1
    mu1, s1, mu2, s2 = f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False)
    value = frechet_distance(mu1, s1, mu2, s2)
    # Reference: tr(s1) + tr(s2) - 2 tr sqrt(s1^1/2 s2 s1^1/2) from symmetric eigendecompositions,
    # which stay real and exact for rank-deficient covariances.
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)).sum()
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross
    assert value == pytest.approx(expected, rel=1e-6)  # measured 2e-8
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(mu1, np.zeros_like(s1), mu1, np.zeros_like(s1)) == 0.0


def test_frechet_distance_rejects_bad_inputs():
    eye = np.eye(3)
    with pytest.raises(ValueError, match="not positive semi-definite"):
        frechet_distance(np.zeros(3), -eye, np.zeros(3), eye)
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(np.array([0, np.nan, 0]), eye, np.zeros(3), eye)
    with pytest.raises(ValueError, match="3 x 3"):
        frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), eye)


# --- streaming statistics ---------------------------------------------------------------------------
def test_streaming_stats_equal_batch_stats_and_merge():
    rng = np.random.default_rng(4)
    # Offset mean: the cancellation in sum(xx^T) - n mu mu^T is what float64 accumulation must survive.
    features = (rng.normal(size=(301, 32)) * 0.3 + 5.0).astype(np.float32)
    streamed = FeatureStats(32)
    for chunk in np.array_split(features, 7):
        streamed.update(torch.from_numpy(chunk))
    np.testing.assert_allclose(streamed.mean(), features.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(streamed.cov(), np.cov(features.astype(np.float64), rowvar=False), atol=1e-12)

    shard_a, shard_b = FeatureStats(32), FeatureStats(32)
    shard_a.update(torch.from_numpy(features[:100]))
    shard_b.update(torch.from_numpy(features[100:]))
    merged = shard_a.merge(shard_b)
    assert merged.count == 301
    np.testing.assert_allclose(merged.cov(), streamed.cov(), atol=1e-12)


def test_shard_indices_cover_every_sample_exactly_once():
    n, world = 10, 4
    valid_ids = []
    for rank in range(world):
        ids, valid = shard_indices(n, rank, world)
        assert len(ids) == 3  # ceil(10 / 4): equal work per rank
        sampler = list(torch.utils.data.DistributedSampler(range(n), world, rank, shuffle=False))
        assert ids.tolist() == sampler
        valid_ids += ids[valid].tolist()
    assert sorted(valid_ids) == list(range(n))


def test_rank_padding_duplicate_cannot_enter_statistics():
    rng = np.random.default_rng(5)
    features = torch.from_numpy(rng.normal(size=(6, 2048)).astype(np.float32))
    reference = FeatureStats()
    reference.update(features)

    by_mask = FIDMetric()
    # A padded batch: positions 6, 7 repeat samples 0, 1 and are marked invalid.
    padded = torch.cat([features, features[:2]])
    assert by_mask.update_features(padded, valid=[True] * 6 + [False] * 2) == 6

    by_index = FIDMetric()
    by_index.update_features(features[:4], index=[0, 1, 2, 3])
    # A repeated index (a padding duplicate the mask missed) is dropped, a new one accepted.
    assert by_index.update_features(features[[0, 4, 5]], index=[0, 4, 5]) == 2
    assert by_index.ledger.duplicates_dropped == 1
    for metric in (by_mask, by_index):
        assert metric.stats.count == 6
        np.testing.assert_allclose(metric.stats.cov(), reference.cov(), atol=1e-12)
    assert by_mask._extractor is None  # feature-only use never built Inception


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_rank_worker(rank: int, world: int, port: int, features: np.ndarray, images: np.ndarray, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ids, valid = shard_indices(len(features), rank, world)
        fid = FIDMetric()
        recon = ReconstructionMetrics(lpips=False)
        for start in range(0, len(ids), 2):  # batches of 2, as a DataLoader would deliver them
            sl = slice(start, start + 2)
            fid.update_features(torch.from_numpy(features[ids[sl]]), valid=valid[sl], index=ids[sl])
            pairs = torch.from_numpy(images[ids[sl]])
            recon.update(pairs[:, 0], pairs[:, 1], valid=valid[sl], index=ids[sl])
        stats = fid.sync()
        recon.sync()
        # A second metric where both ranks (wrongly) count sample 0: sync must refuse.
        clash = FIDMetric()
        clash.update_features(torch.from_numpy(features[:1]), index=[0])
        try:
            clash.sync()
            clash_error = ""
        except RuntimeError as err:
            clash_error = str(err)
        if rank == 0:
            recon_result = recon.compute()
            np.savez(
                out,
                mean=stats.mean(),
                cov=stats.cov(),
                count=stats.count,
                clash=clash_error,
                **{f"recon_{k}": recon_result[k] for k in ("psnr", "ssim", "count")},
            )
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_rank_gloo_sync_equals_single_process(tmp_path):
    rng = np.random.default_rng(6)
    n = 7  # odd: the sampler pads one rank with a duplicate of sample 0
    features = rng.normal(size=(n, 2048)).astype(np.float32)
    photos = real_photo_batch(size=32).numpy()
    originals = photos[np.arange(n) % len(photos)]
    noisy = np.clip(originals.astype(int) + rng.integers(-20, 21, originals.shape), 0, 255).astype(np.uint8)
    images = np.stack([originals, noisy], axis=1)  # n x 2 x 3 x H x W
    out = tmp_path / "rank0.npz"
    mp.spawn(_two_rank_worker, args=(2, _free_port(), features, images, str(out)), nprocs=2, join=True)
    result = np.load(out)
    assert int(result["count"]) == n
    np.testing.assert_allclose(result["mean"], features.astype(np.float64).mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(result["cov"], np.cov(features.astype(np.float64), rowvar=False), atol=1e-10)
    single = ReconstructionMetrics(lpips=False)
    single.update(torch.from_numpy(originals), torch.from_numpy(noisy))
    expected = single.compute()
    assert int(result["recon_count"]) == expected["count"] == n
    assert float(result["recon_psnr"]) == pytest.approx(expected["psnr"], rel=1e-12)
    assert float(result["recon_ssim"]) == pytest.approx(expected["ssim"], rel=1e-12)
    assert "counted on more than one rank" in str(result["clash"])


# --- Inception end to end: our FID vs torch-fidelity on image folders -------------------------------
def _photo_folders(root) -> tuple:
    """Two folders of real photos: crops, and noise-perturbed crops at another size."""
    rng = np.random.default_rng(7)
    a, b = root / "a", root / "b"
    a.mkdir()
    b.mkdir()
    photos = real_photo_batch(size=128).permute(0, 2, 3, 1).numpy()
    for i, photo in enumerate(photos):
        Image.fromarray(photo[:112, 8:120]).save(a / f"{i}.png")
        noisy = np.clip(photo[8:104, :96].astype(int) + rng.normal(0, 25, (96, 96, 3)).round(), 0, 255)
        Image.fromarray(noisy.astype(np.uint8)).save(b / f"{i}.png")
    return a, b


def test_fid_command_agrees_with_torch_fidelity(tmp_path, inception_weights, capsys):
    import torch_fidelity

    a, b = _photo_folders(tmp_path)
    assert (
        fid_main(
            [str(a), str(b), "--weights", str(inception_weights.path), "--batch-size", "3", "--device", "cpu"]
        )
        == 0
    )
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    ours = float(last_line.split()[-1])
    theirs = torch_fidelity.calculate_metrics(
        input1=str(a),
        input2=str(b),
        fid=True,
        feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(inception_weights.path),
        cuda=False,
        cache=False,
        verbose=False,
        save_cpu_ram=True,  # no DataLoader worker processes
        batch_size=5,
    )["frechet_inception_distance"]
    print(f"FID ours {ours:.6f} torch-fidelity {theirs:.6f} rel diff {abs(ours - theirs) / theirs:.2e}")
    assert ours > 1.0
    assert abs(ours - theirs) / theirs < 1e-5  # measured 1.4e-6


def test_streaming_float_batches_equal_uint8_batches(inception_weights):
    extractor = InceptionFeatureExtractor(inception_weights)
    images = real_photo_batch(size=64)[:2]
    as_uint8, as_float = FIDMetric(extractor), FIDMetric(extractor)
    as_uint8.update(images)
    as_float.update(images.float() / 255)
    np.testing.assert_array_equal(as_uint8.stats.sum.numpy(), as_float.stats.sum.numpy())


# --- reference statistics and ADM files -------------------------------------------------------------
def test_folder_batches_split_where_sizes_change(tmp_path):
    photo = real_photo_batch(size=64)[0].permute(1, 2, 0).numpy()
    for name, (h, w) in {"a.png": (64, 64), "b.png": (64, 64), "c.jpg": (40, 50), "d.png": (64, 64)}.items():
        Image.fromarray(np.ascontiguousarray(photo[:h, :w])).save(tmp_path / name)
    shapes = [tuple(batch.shape) for batch in FolderBatches(tmp_path, batch_size=3)]
    assert shapes == [(2, 3, 64, 64), (1, 3, 40, 50), (1, 3, 64, 64)]
    cropped = [tuple(batch.shape) for batch in FolderBatches(tmp_path, batch_size=3, crop_size=32)]
    assert cropped == [(3, 3, 32, 32), (1, 3, 32, 32)]


def test_adm_center_crop_steps():
    image = Image.fromarray(real_photo_batch(size=128)[0].permute(1, 2, 0).numpy()).resize((700, 530))
    crop = adm_center_crop(image, 128)
    assert crop.shape == (128, 128, 3) and crop.dtype == np.uint8
    # 530 >= 2 * 128 twice: box-halved to 350 x 265, then 175 x 132, then bicubic to 170 x 128.
    halved = image.resize((350, 265), Image.BOX).resize((175, 132), Image.BOX)
    expected = np.asarray(halved.resize((170, 128), Image.BICUBIC))[:, 21:149]
    np.testing.assert_array_equal(crop, expected)


class _PixelFeatures(torch.nn.Module):
    """Stand-in for the Inception extractor: 2048 fixed pixel values per image, order-independent."""

    weights = SimpleNamespace(sha256="stand-in", source="test")

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)[:, :2048].double() / 255


def test_adm_npz_writer_shuffles_and_reference_loads(tmp_path):
    images = real_photo_batch(size=32)
    path = write_adm_npz(tmp_path / "samples.npz", images, seed=0)
    arr = np.load(path)["arr_0"]
    assert arr.dtype == np.uint8 and arr.shape == (4, 32, 32, 3)
    nhwc = images.permute(0, 2, 3, 1).numpy()
    order = [next(j for j in range(4) if np.array_equal(arr[i], nhwc[j])) for i in range(4)]
    assert sorted(order) == [0, 1, 2, 3] and order != [0, 1, 2, 3]

    writer = AdmNpzWriter(tmp_path / "short.npz", total=5, size=32)
    writer.add(images)
    with pytest.raises(ValueError, match="4 images written, 5 announced"):
        writer.close()

    # An ADM reference batch (mu/sigma) loads as is; a bare arr_0 file is turned into statistics.
    rng = np.random.default_rng(8)
    np.savez(tmp_path / "adm_ref.npz", mu=rng.normal(size=2048), sigma=np.eye(2048), arr_0=arr)
    ref = ReferenceStats.load(tmp_path / "adm_ref.npz")
    assert ref.mu.shape == (2048,) and ref.meta["origin"] == "ADM reference batch"

    # Statistics from a bare arr_0 file, read in batches of 3, equal those of the images themselves
    # (a cheap stand-in extractor: this checks the file plumbing; Inception is tested elsewhere).
    extractor = _PixelFeatures()
    from_samples = ReferenceStats.load(path, extractor, batch_size=3)
    direct = FeatureStats()
    direct.update(extractor(images))
    assert from_samples.meta["count"] == 4 and from_samples.meta["extractor_weights_sha256"] == "stand-in"
    np.testing.assert_allclose(from_samples.mu, direct.mean(), atol=1e-12)
    np.testing.assert_allclose(from_samples.sigma, direct.cov(), atol=1e-12)


def test_ref_stats_command_records_provenance(tmp_path, inception_weights, capsys):
    src = tmp_path / "src" / "nested"
    src.mkdir(parents=True)
    for i, photo in enumerate(real_photo_batch(size=96)[:2].permute(0, 2, 3, 1).numpy()):
        Image.fromarray(photo).resize((120, 96)).save(src / f"{i}.jpg")
    out = tmp_path / "ref.npz"
    argv = [
        str(tmp_path / "src"),
        str(out),
        "--size",
        "64",
        "--weights",
        str(inception_weights.path),
        "--device",
        "cpu",
    ]
    assert ref_stats_main(argv) == 0
    stats = ReferenceStats.load(out)
    assert stats.meta["count"] == 2
    assert stats.meta["extractor_weights_sha256"] == inception_weights.sha256
    assert stats.meta["preprocessing"] == "adm_center_crop_arr(64) from image files"
    assert stats.sigma.shape == (2048, 2048) and "created" in stats.meta
    assert (
        ref_stats_main([str(tmp_path / "missing"), str(out), "--weights", str(inception_weights.path)]) == 2
    )
    assert "input not found" in capsys.readouterr().err


# --- inputs with unreadable files ------------------------------------------------------------------
def _folder_with_bad_files(root) -> tuple:
    """Three good photos, a truncated JPEG and a text file named .png: what PIL raises on."""
    root.mkdir(parents=True)
    for i, photo in enumerate(real_photo_batch(size=48)[:3].permute(0, 2, 3, 1).numpy()):
        Image.fromarray(photo).save(root / f"{i}.jpg", quality=95)
    data = (root / "0.jpg").read_bytes()
    (root / "3_truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "4_not_an_image.png").write_text("not an image")
    return root, {root / "3_truncated.jpg", root / "4_not_an_image.png"}


class _StandInExtractor(_PixelFeatures):
    """What the commands build instead of the Inception network in these tests."""

    def __init__(self, weights=None) -> None:
        super().__init__()
        self.weights = SimpleNamespace(sha256="stand-in", source="test", path="stand-in.pth")


def test_folder_statistics_skip_and_count_unreadable_files(tmp_path):
    folder, bad = _folder_with_bad_files(tmp_path / "imgs")
    stats = build_reference_stats(folder, tmp_path / "ref.npz", extractor=_PixelFeatures(), size=32)
    assert stats.meta["count"] == 3 and stats.meta["unreadable_skipped"] == 2
    assert set(map(Path, stats.meta["unreadable_files"])) == bad
    assert ReferenceStats.load(tmp_path / "ref.npz").meta["unreadable_skipped"] == 2  # saved with it
    for path in (folder / "0.jpg", folder / "1.jpg", folder / "2.jpg"):
        path.unlink()
    with pytest.raises(ValueError, match="no readable image"):
        list(FolderBatches(folder))


def test_fid_and_ref_stats_commands_skip_unreadable_files_and_say_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("uniflow.metrics.cli.InceptionFeatureExtractor", _StandInExtractor)
    a, _ = _folder_with_bad_files(tmp_path / "a")
    b, _ = _folder_with_bad_files(tmp_path / "b")
    assert fid_main([str(a), str(b), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"{a}: 3 images (2 unreadable files skipped)" in out and out.strip().endswith("FID: 0.000000")
    out_file = tmp_path / "new_dir" / "ref.npz"  # the output directory is made up front
    assert ref_stats_main([str(a), str(out_file), "--size", "32", "--device", "cpu"]) == 0
    assert "3 images (2 unreadable files skipped)" in capsys.readouterr().out
    assert ReferenceStats.load(out_file).meta["unreadable_skipped"] == 2


@pytest.mark.parametrize("command", ["fid", "data ref-stats"])
def test_missing_inputs_stop_the_commands_before_any_work(tmp_path, monkeypatch, capsys, command):
    def no_work(*args, **kwargs):
        raise AssertionError("the Inception network was built before the inputs were checked")

    monkeypatch.setattr("uniflow.metrics.cli.InceptionFeatureExtractor", no_work)
    present, missing = tmp_path / "present", tmp_path / "missing"
    present.mkdir()
    if command == "fid":
        code = fid_main([str(present), str(missing)])
    else:
        code = ref_stats_main([str(missing), str(tmp_path / "out.npz")])
    assert code == 2
    assert f"error: input not found: {missing}" in capsys.readouterr().err
    assert fid_main([str(present), str(present), "--weights", str(missing)]) == 2
    assert f"Inception weights not found: {missing}" in capsys.readouterr().err
