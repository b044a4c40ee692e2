"""The latent cache (``python -m uniflow data encode-latents``): each sample exactly once whatever the
number of ranks, resume after a kill, statistics, and the normalisation round trip through decode.

Ranks are simulated by calling the per-rank function with an explicit rank and world size, which is
all a launcher changes: ranks share nothing but the output directory.
"""

from __future__ import annotations

import json
import stat
import threading

import pytest
import torch
from PIL import Image

from uniflow.__main__ import main
from uniflow.data.embedded import EmbeddedScenes
from uniflow.generation import latent_cache
from uniflow.generation.latent_cache import (
    MANIFEST_FILE,
    STATS_FILE,
    CacheMismatch,
    CacheSettings,
    ImageSource,
    IncompleteCache,
    LatentShards,
    encode_shards,
    finalize_cache,
    shard_name,
)
from uniflow.generation.latent_stats import LatentNormalizer
from uniflow.io import PARTIAL_SUFFIX

NUM, SHARD, SIZE = 10, 4, 32  # shards of 4, 4 and 2 samples


def _settings(source: ImageSource, **changes) -> CacheSettings:
    fields = dict(
        tokenizer_sha256="tiny",
        source=source.description,
        num_source=len(source),
        image_size=SIZE,
        shard_size=SHARD,
        dtype="float32",
        flip=True,
    )
    return CacheSettings(**{**fields, **changes})


def _encode(tokenizer, source, out, world_size: int, **changes) -> list[latent_cache.RankReport]:
    settings = _settings(source, **changes)
    reports = [
        encode_shards(tokenizer, source, out, settings, rank=rank, world_size=world_size, batch_size=3)
        for rank in range(world_size)
    ]
    finalize_cache(out)
    return reports


@pytest.fixture
def scenes() -> ImageSource:
    return ImageSource(f"embedded:{NUM}", SIZE)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_every_sample_is_encoded_once_whatever_the_world_size(tiny_tokenizer, scenes, tmp_path, world_size):
    reports = _encode(tiny_tokenizer, scenes, tmp_path, world_size)
    written = sorted(k for r in reports for k in r.written)
    assert written == [0, 1, 2]  # every shard by exactly one rank
    assert [r.written for r in reports] == [list(range(r.rank, 3, world_size)) for r in reports]

    cache = LatentShards(tmp_path)
    assert len(cache) == NUM and cache.indices.tolist() == list(range(NUM))
    truth = EmbeddedScenes("train", NUM, size=SIZE)
    assert cache.labels.tolist() == [truth[i]["label"] for i in range(NUM)]
    # Shard k holds the same samples at any world size, so the latents are those of a plain encode.
    images = torch.stack([truth[i]["image"] for i in range(NUM)])
    with torch.no_grad():
        expected = tiny_tokenizer.encode(images)
    got = torch.stack([cache[i]["latent"] for i in range(NUM)])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got.shape[1:] == cache.latent_shape == (8, 4, 4)

    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert manifest["count"] == NUM and manifest["flip"] is True and manifest["unreadable"] == 0
    assert [s["file"] for s in manifest["shards"]] == [shard_name(k) for k in range(3)]
    assert manifest["classes"] == ["circle", "square", "triangle", "star"]


def test_the_statistics_file_holds_the_mean_and_std_of_every_stored_latent(tiny_tokenizer, scenes, tmp_path):
    _encode(tiny_tokenizer, scenes, tmp_path, world_size=3)
    stats = LatentNormalizer.load(tmp_path / STATS_FILE)
    cache = LatentShards(tmp_path)
    flips = [cache._shard(k).get_tensor("latent_flip") for k in range(len(cache.files))]
    every = torch.cat([torch.stack([cache[i]["latent"] for i in range(NUM)]), *flips]).double()
    assert int(stats.count) == 2 * NUM * 4 * 4  # originals and flips, every grid position
    torch.testing.assert_close(stats.mean.flatten().double(), every.mean(dim=(0, 2, 3)), rtol=0, atol=1e-6)
    torch.testing.assert_close(
        stats.std.flatten().double(), every.std(dim=(0, 2, 3), unbiased=False), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(cache.normalizer().mean, stats.mean)
    # Readable like any file the user writes (safetensors alone would leave them private, 0600).
    plain = tmp_path / "plain.txt"
    plain.write_text("")
    for path in (tmp_path / STATS_FILE, tmp_path / shard_name(0)):
        assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_normalising_and_denormalising_round_trips_through_decode(tiny_tokenizer, scenes, tmp_path):
    # An untrained decoder ignores its latent (adaLN-zero starts at zero): give the zero-initialised
    # weights values, or decode(anything) would equal decode(z) and this test would prove nothing.
    with torch.no_grad():
        for weight in tiny_tokenizer.decoder.parameters():
            if not weight.any():
                weight.normal_(0.0, 0.1)
    _encode(tiny_tokenizer, scenes, tmp_path, world_size=1)
    normalizer = LatentShards(tmp_path).normalizer()
    z = torch.stack([scenes[i]["image"] for i in range(4)])
    with torch.no_grad():
        z = tiny_tokenizer.encode(z)
    normalized = normalizer.normalize(z)
    # The generator's space: roughly unit scale, so the statistics are not identity.
    assert not torch.allclose(normalized, z)
    restored = normalizer.denormalize(normalized)
    torch.testing.assert_close(restored, z, rtol=1e-6, atol=1e-6)
    decoded = tiny_tokenizer.decode(restored, generator=torch.Generator().manual_seed(1))
    reference = tiny_tokenizer.decode(z, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(decoded, reference, rtol=1e-5, atol=1e-5)
    # The mistake this guards against: decoding the generator's latents without the inverse.
    forgotten = tiny_tokenizer.decode(normalized, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(forgotten, reference, atol=1e-3)


def test_a_killed_run_resumes_keeping_complete_shards(tiny_tokenizer, scenes, tmp_path, monkeypatch):
    original, calls = latent_cache._write_shard, []

    def crash_on_second_shard(*args, **kwargs):
        calls.append(args[0].name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the kill, between two shards
        original(*args, **kwargs)

    monkeypatch.setattr(latent_cache, "_write_shard", crash_on_second_shard)
    settings = _settings(scenes)
    with pytest.raises(KeyboardInterrupt):
        encode_shards(tiny_tokenizer, scenes, tmp_path, settings, rank=0, world_size=1, batch_size=3)
    monkeypatch.setattr(latent_cache, "_write_shard", original)
    assert sorted(p.name for p in tmp_path.iterdir()) == [shard_name(0)]
    # What a SIGKILL inside the rename-protected write leaves: a hidden temporary file.
    partial = tmp_path / f".{shard_name(1)}.x1y2z3{PARTIAL_SUFFIX}"
    partial.write_bytes(b"half a shard")
    first = (tmp_path / shard_name(0)).stat()
    with pytest.raises(IncompleteCache, match="2 of 3 shards are missing"):
        finalize_cache(tmp_path)

    report = encode_shards(tiny_tokenizer, scenes, tmp_path, settings, rank=0, world_size=1, batch_size=3)
    assert report.skipped == [0] and report.written == [1, 2] and report.removed_partials == [partial]
    assert not partial.exists()
    assert (tmp_path / shard_name(0)).stat().st_mtime_ns == first.st_mtime_ns  # kept, not rewritten
    finalize_cache(tmp_path)
    assert LatentShards(tmp_path).indices.tolist() == list(range(NUM))
    # A shard lost after completion: the rerun takes the manifest away until the cache is whole again.
    (tmp_path / shard_name(2)).unlink()
    encode_shards(tiny_tokenizer, scenes, tmp_path, settings, rank=0, world_size=2, batch_size=3)
    assert not (tmp_path / MANIFEST_FILE).exists()

    with pytest.raises(CacheMismatch, match="dtype"):
        encode_shards(
            tiny_tokenizer, scenes, tmp_path, _settings(scenes, dtype="bfloat16"), rank=0, world_size=1
        )


def test_folder_labels_unreadable_images_bf16_and_random_flip(tiny_tokenizer, tmp_path):
    root = tmp_path / "images"
    for label, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 36), (80 * label + 20 * i, 60, 90)).save(root / name / f"{i}.png")
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    source = ImageSource(str(root), SIZE)
    out = tmp_path / "cache"
    settings = _settings(source, dtype="bfloat16", shard_size=3)
    encode_shards(tiny_tokenizer, source, out, settings, rank=0, world_size=1, batch_size=4)
    manifest = finalize_cache(out)
    assert manifest["count"] == 6 and manifest["unreadable"] == 1 and manifest["classes"] == ["cat", "dog"]

    cache = LatentShards(out, random_flip=True)
    assert cache.labels.tolist() == [0, 0, 0, 1, 1, 1]
    # dog/broken.png sorts last (index 6): dropped, not replaced by a neighbour, and its shard is empty.
    assert cache.indices.tolist() == list(range(6)) and manifest["shards"][-1]["count"] == 0
    item = cache[0]
    assert item["latent"].dtype == torch.float32
    stored = [cache._shard(0).get_tensor(key)[0] for key in ("latent", "latent_flip")]
    assert all(s.dtype == torch.bfloat16 for s in stored)
    assert any(torch.equal(item["latent"], s.float()) for s in stored)
    with pytest.raises(ValueError, match="--flip"):
        LatentShards(_write_no_flip_cache(tiny_tokenizer, tmp_path), random_flip=True)


def _write_no_flip_cache(tokenizer, tmp_path):
    source = ImageSource("embedded:2", SIZE)
    out = tmp_path / "no_flip"
    encode_shards(tokenizer, source, out, _settings(source, flip=False), rank=0, world_size=1)
    finalize_cache(out)
    return out


def test_the_command_writes_a_cache_and_names_a_missing_input(tiny_tokenizer, tmp_path, capsys):
    run = tmp_path / "run"
    tiny_tokenizer.save_pretrained(run / "tokenizer")
    out = tmp_path / "latents"
    args = ["data", "encode-latents", str(run), "embedded:5", str(out), "--flip", "--shard-size", "2"]
    assert main([*args, "--num-workers", "0", "--device", "cpu"]) == 0
    assert json.loads((out / MANIFEST_FILE).read_text())["count"] == 5
    assert "5 samples of 5" in capsys.readouterr().out

    assert main(["data", "encode-latents", str(tmp_path / "nowhere"), "embedded:5", str(out)]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert (
        main(["data", "encode-latents", str(run), str(tmp_path / "no_images"), str(out), "--device", "cpu"])
        == 2
    )
    assert "no_images" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["data", "encode-latents", str(run), "embedded:many", str(out)])
    assert exit_.value.code == 2


def test_help_names_the_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["data", "encode-latents", "--help"])
    out = capsys.readouterr().out
    for key in (
        "TOKENIZER SRC OUT",
        "embedded:N",
        "--flip",
        "--dtype",
        "--shard-size",
        "torchrun",
        "resumes",
    ):
        assert key in out


def test_the_rank_comes_from_torchrun_or_srun_not_from_a_bare_sbatch_script(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "8")  # the batch script itself: one process
    assert latent_cache.rank_and_world_from_env() == (0, 1)
    monkeypatch.setenv("SLURM_PROCID", "2")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")  # a task of `srun`
    assert latent_cache.rank_and_world_from_env() == (2, 4)
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "6")  # torchrun inside an allocation wins
    assert latent_cache.rank_and_world_from_env() == (5, 6)


def test_rank_zero_waits_for_the_shards_of_the_other_ranks(tiny_tokenizer, scenes, tmp_path):
    settings = _settings(scenes)
    encode_shards(tiny_tokenizer, scenes, tmp_path, settings, rank=0, world_size=2, batch_size=3)
    # The other rank, still encoding while rank 0 waits.
    late = threading.Timer(
        0.2,
        lambda: encode_shards(tiny_tokenizer, scenes, tmp_path, settings, rank=1, world_size=2, batch_size=3),
    )
    late.start()
    manifest = finalize_cache(tmp_path, timeout_s=30, poll_s=0.05)
    late.join()
    assert manifest["count"] == NUM
