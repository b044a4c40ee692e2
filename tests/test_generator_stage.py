"""The generator stage end to end on a tiny config, its export, and the ``sample`` verb's ADM files."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY, TINY_TOKENIZER, train_two_processes
from omegaconf import OmegaConf

from uniflow import UniFlowTokenizer
from uniflow.config import ConfigError, load_config
from uniflow.generation.config import GeneratorConfig
from uniflow.generation.latent_stats import LatentNormalizer
from uniflow.generation.pretrained import LatentGenerator, TokenizerReference
from uniflow.generation.sampling import (
    SampleMaker,
    class_labels,
    join_chunks,
    parts_dir,
    write_chunks,
)
from uniflow.training.cli import check_config, run

EMBEDDED = ROOT / "experiments" / "generator" / "embedded.yaml"


@pytest.fixture(scope="module")
def tokenizer_run(tmp_path_factory) -> Path:
    """An untrained tiny tokenizer export (32 px, 4 x 4 x 8 latents): the stage needs its weights, not its quality."""
    root = tmp_path_factory.mktemp("tok") / "tok"
    torch.manual_seed(0)
    UniFlowTokenizer.from_config(TINY, TINY_TOKENIZER, for_training=False).save_pretrained(root / "tokenizer")
    return root


def tiny_overrides(tokenizer_run: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"output_dir={out}",
        "name=gen",
        f"generator.tokenizer={tokenizer_run}",
        "generator.tokenizer_config=null",
        "generator.source=embedded:24",
        "generator.kwargs={depth: 1, width: 32, heads: 2}",
        "generator.sampling.steps=2",
        "generator.sampling.batch_size=8",
        "data.batch_size=8",
        "trainer.max_steps=3",
        "trainer.image_every_n_steps=2",
        "trainer.checkpoint_every_n_steps=2",
        "trainer.precision=32-true",
        "trainer.num_threads=1",
        "trainer.log_every_n_steps=1",
        "summary.enabled=false",
        *extra,
    ]


@pytest.fixture(scope="module")
def generator_run(tokenizer_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gen")
    threads = torch.get_num_threads()
    try:
        cfg = load_config(EMBEDDED, tiny_overrides(tokenizer_run, out))
        check_config(cfg)
        metrics = run(cfg)
    finally:
        torch.set_num_threads(threads)
    assert metrics is not None and metrics["steps"] == 3
    return out / "gen"


def test_stage_trains_exports_and_logs_grids(generator_run, tokenizer_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cache = tokenizer_run / "latents" / "embedded_24"
    assert (cache / "manifest.json").is_file()  # prepare encoded the cache beside the tokenizer run
    export = generator_run / "generator"
    assert {p.name for p in export.iterdir()} >= {
        "config.yaml",
        "model.safetensors",
        "latent_stats.safetensors",
    }
    bundle = LatentGenerator.from_pretrained(generator_run)
    assert bundle.tokenizer_ref == TokenizerReference.of(tokenizer_run / "tokenizer")
    assert bundle.classes == ["circle", "square", "triangle", "star"]
    # The export carries the cache's statistics.
    cached = LatentNormalizer.load(cache / "latent_stats.safetensors")
    assert torch.equal(bundle.normalizer.mean, cached.mean) and torch.equal(bundle.normalizer.std, cached.std)
    events = EventAccumulator(str(generator_run / "tensorboard")).Reload()
    assert "train/loss" in events.Tags()["scalars"]
    assert {"samples/class_per_row_cfg_1", "samples/class_per_row_cfg_3"} <= set(events.Tags()["images"])


def test_resume_continues_the_run(generator_run, tokenizer_run):
    threads = torch.get_num_threads()
    try:
        out = generator_run.parent
        cfg = load_config(EMBEDDED, tiny_overrides(tokenizer_run, out, "trainer.max_steps=4", "resume=auto"))
        metrics = run(cfg)
    finally:
        torch.set_num_threads(threads)
    assert metrics is not None and metrics["steps"] == 4


def test_missing_tokenizer_without_a_config_to_train_it_is_a_config_error(tmp_path):
    cfg = load_config(
        EMBEDDED, [f"generator.tokenizer={tmp_path / 'none'}", "generator.tokenizer_config=null"]
    )
    with pytest.raises(ConfigError, match=r"generator\.tokenizer"):
        check_config(cfg)
    with pytest.raises(ConfigError, match=r"generator\.size"):
        check_config(load_config(EMBEDDED, ["generator.size=XXL"]))


def test_export_from_when_qk_norm_was_the_default_loads_with_it(tmp_path, tokenizer_run):
    """FlowDiT exports whose config leaves qk_norm unsaid but whose weights have it (the old default)."""
    reference = TokenizerReference.of(tokenizer_run / "tokenizer")
    normalizer = LatentNormalizer(8)
    normalizer.update(torch.randn(4, 8, 4, 4))
    normalizer.finalize()
    kwargs = {"depth": 1, "width": 32, "heads": 2}
    cfg = load_config({"kwargs": {**kwargs, "qk_norm": True}}, schema=GeneratorConfig)
    LatentGenerator(cfg, (8, 4, 4), 32, ["a", "b"], normalizer, reference).save_pretrained(
        tmp_path / "generator"
    )
    meta = OmegaConf.load(tmp_path / "generator" / "config.yaml")
    meta.generator.kwargs = kwargs
    OmegaConf.save(meta, tmp_path / "generator" / "config.yaml")
    loaded = LatentGenerator.from_pretrained(tmp_path)
    assert loaded.cfg.kwargs["qk_norm"] is True and loaded.model.blocks[0].attn.qk_norm
    LatentGenerator(  # and one without QK-norm loads without it
        load_config({"kwargs": kwargs}, schema=GeneratorConfig),
        (8, 4, 4),
        32,
        ["a", "b"],
        normalizer,
        reference,
    ).save_pretrained(tmp_path / "plain" / "generator")
    assert not LatentGenerator.from_pretrained(tmp_path / "plain").model.blocks[0].attn.qk_norm


def test_export_round_trip_un_normalises(tmp_path, tokenizer_run, one_thread):
    """Real latents, standardised with statistics fitted on them, come back out of the loaded export
    as the same latents (and decode to the same images): the inverse normalisation travels with it."""
    reference = TokenizerReference.of(tokenizer_run / "tokenizer")
    tokenizer = reference.load()
    z = tokenizer.encode(torch.rand(4, 3, 32, 32)) * 3 + 2  # off unit scale, as real latents are
    normalizer = LatentNormalizer(8)
    normalizer.update(z)
    normalizer.finalize()
    cfg = load_config({"kwargs": {"depth": 1, "width": 32, "heads": 2}}, schema=GeneratorConfig)
    bundle = LatentGenerator(cfg, (8, 4, 4), 32, ["a", "b"], normalizer, reference)
    bundle.save_pretrained(tmp_path / "generator")
    loaded = LatentGenerator.from_pretrained(tmp_path)
    for name, tensor in bundle.model.state_dict().items():
        assert torch.equal(tensor, loaded.model.state_dict()[name]), name
    # The model's samples are standardised latents; stand in for it with the standardised real ones.
    loaded.model.sample = lambda labels, *args, **kwargs: normalizer.normalize(z)
    out = loaded.sample_latents(torch.tensor([0, 1, 0, 1]))
    assert torch.allclose(out, z, atol=1e-5) and not torch.allclose(normalizer.normalize(z), z, atol=0.1)
    noise = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    images = loaded.decode(tokenizer, out, noise[0])
    assert images.shape == (4, 3, 32, 32)
    assert torch.allclose(images, tokenizer.decode(z, size=(32, 32), generator=noise[1]), atol=1e-5)
    with pytest.raises(ValueError, match="class indices"):
        loaded.sample_latents(torch.tensor([2]))


def test_a_retrained_tokenizer_is_refused(tmp_path, tokenizer_run):
    ref = TokenizerReference.of(tokenizer_run / "tokenizer")
    with pytest.raises(ValueError, match="not the one"):
        TokenizerReference(ref.path, "0" * 64).load()


def test_class_labels():
    assert class_labels(3, None, 2).tolist() == [0, 0, 1, 1, 2, 2]
    assert class_labels(3, 6, 2).tolist() == [0, 0, 1, 1, 2, 2]
    random = class_labels(3, 50, None, seed=1)
    assert random.shape == (50,) and torch.equal(random, class_labels(3, 50, None, seed=1))
    with pytest.raises(ValueError, match="--per-class"):
        class_labels(3, 7, 2)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as f:
        return f["arr_0"], f["arr_1"]


def test_sample_verb_writes_adm_npz(generator_run, tmp_path, one_thread):
    from uniflow.__main__ import main

    out = tmp_path / "samples.npz"
    argv = [
        "sample",
        str(generator_run),
        "--per-class",
        "2",
        "--steps",
        "1",
        "--chunk-size",
        "3",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    images, labels = _read_npz(out)
    assert images.dtype == np.uint8 and images.shape == (8, 32, 32, 3)
    assert labels.dtype == np.int64 and labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    with zipfile.ZipFile(out) as archive:
        assert archive.namelist() == ["arr_0.npy", "arr_1.npy"]
    assert not parts_dir(out).exists()
    assert main(argv) == 0  # complete: a rerun does nothing


def test_samples_do_not_depend_on_ranks_and_resume(generator_run, tmp_path, one_thread):
    """Each sample is made once at world sizes 1, 2 and 3, identically; a lost chunk is remade alone."""
    labels = class_labels(4, None, 2)
    maker = SampleMaker(generator_run, labels, "2 per class", seed=3, chunk_size=3)
    results = []
    for world in (1, 2, 3):
        out = tmp_path / f"w{world}.npz"
        made = [write_chunks(maker, out, rank, world) for rank in range(world)]
        assert sorted(k for chunks in made for k in chunks) == [0, 1, 2]
        if world == 3:  # a kill lost chunk 1: the rerun makes it and nothing else
            (parts_dir(out) / "chunk-000001.npz").unlink()
            assert [write_chunks(maker, out, rank, world) for rank in range(world)] == [[], [1], []]
        results.append(_read_npz(join_chunks(out, maker.num_chunks)))
    for images, got in results[1:]:
        assert np.array_equal(images, results[0][0]) and np.array_equal(got, results[0][1])
    other = SampleMaker(generator_run, labels, "2 per class", seed=4, chunk_size=3)
    write_chunks(maker, tmp_path / "mixed.npz", 0, 2)
    with pytest.raises(ValueError, match="other settings"):
        write_chunks(other, tmp_path / "mixed.npz", 1, 2)


def test_imagenet_gen_scores_a_generator_run_directly(generator_run, tokenizer_run, tmp_path):
    """The suite's gFID row samples the run itself (8 samples, 2 per class) and states how."""
    from evaluation_fakes import FakeExtractor
    from threadpoolctl import threadpool_limits

    from uniflow.evaluation import run_suite
    from uniflow.evaluation.config import EvalConfig
    from uniflow.metrics import FeatureStats, ReferenceStats

    stats = FeatureStats()
    stats.update(FakeExtractor()(torch.rand(6, 3, 32, 32)))
    ReferenceStats(stats.mean(), stats.cov(), {"source_name": "fake", "count": 6}).save(tmp_path / "ref.npz")
    cfg = EvalConfig(
        benchmarks=["imagenet_gen"],
        data={"imagenet_gen": str(generator_run)},
        fid_reference={"imagenet_gen": str(tmp_path / "ref.npz")},
        num_samples={"imagenet_gen": 8},
        batch_size=3,
        device="cpu",
    )
    with threadpool_limits(1):
        suite = run_suite(
            cfg, tokenizer_run / "tokenizer", tmp_path / "eval", run_name="g", extractor=FakeExtractor()
        )
    gen = suite.get("imagenet_gen")
    assert gen.status == "ok", gen
    prov = gen.metrics["gFID"].provenance
    assert prov["samples"] == 8 and prov["label_sampling"] == "2 per class"
    assert prov["guidance"] == {"scale": 3.0, "interval": None} and prov["steps"] == 2
    assert prov["sampler"] == "euler" and prov["precision"] == "32-true" and prov["seed"] == 0
    assert prov["tokenizer_sha256"] == TokenizerReference.of(tokenizer_run / "tokenizer").sha256
    assert len(prov["generator_sha256"]) == 64 and prov["weights"] == "EMA (decay 0.999)"


@pytest.mark.parametrize("order", ["random", "raster"])
def test_the_ar_model_through_the_config_switch(tokenizer_run, tmp_path, order):
    extra = ["generator.model=arflow", f"generator.kwargs.order={order}", "generator.kwargs.num_prefix=2"]
    extra += [
        "generator.kwargs.head_depth=1",
        "generator.kwargs.head_width=16",
        "generator.sampling.iterations=4",
    ]
    extra += ["trainer.max_steps=2", "optim.ema_decay=0", "trainer.image_every_n_steps=0"]
    threads = torch.get_num_threads()
    try:
        metrics = run(load_config(EMBEDDED, tiny_overrides(tokenizer_run, tmp_path, *extra)))
    finally:
        torch.set_num_threads(threads)
    assert metrics is not None and metrics["steps"] == 2
    bundle = LatentGenerator.from_pretrained(tmp_path / "gen")
    assert type(bundle.model).__name__ == "ARFlow" and bundle.model.order == order
    z = bundle.sample_latents(torch.tensor([0, 3]), generator=torch.Generator().manual_seed(0))
    assert z.shape == (2, 8, 4, 4) and torch.isfinite(z).all()


@pytest.mark.parametrize(
    "name, model, millions",
    [("imagenet256_flowdit_xl", "FlowDiT", 675.0), ("imagenet256_flowdit_xl_dh", "FlowDiT", 834.3),
     ("imagenet256_mar_l", "ARFlow", 476.8)],
)  # fmt: skip
def test_paper_configs_build_on_the_256px_latent_grid(name, model, millions):
    """The ImageNet-256 configs load and build their model for 19 x 19 x 64 latents and 1000 classes."""
    from uniflow.generation.pretrained import build_generator

    cfg = load_config(ROOT / "experiments" / "generator" / f"{name}.yaml")
    with torch.device("meta"):
        generator = build_generator(cfg.generator, (64, 19, 19), 1000)
    assert type(generator).__name__ == model
    assert sum(p.numel() for p in generator.parameters()) / 1e6 == pytest.approx(millions, abs=0.1)
    if model == "FlowDiT":
        assert generator.shift == pytest.approx(2.375)


def test_summary_prints_the_reconstruction_ceiling_of_the_class_accuracy():
    """Samples decode through the tokenizer, so their class accuracy is bounded by its reconstructions':
    without that row a blurry decoder reads as a conditioning bug (it did once: 34% vs 90% on real)."""
    from uniflow.generation.evaluate import format_generator_summary

    sampling = {"model": "flowdit", "weights": "EMA", "steps": 25, "sampler": "euler", "decode_steps": 1}
    result = {
        "frechet_distance": {
            "data": "8 held-out scenes",
            **{name: 1.0 for name in ("unguided", "guided", "gaussian", "reconstruction")},
            "second_real": 52.25,
        },
        "sampling": {**sampling, "cfg_scale": 3.0, "guidance_interval": None},
        "classifier_accuracy": {
            "real": 0.9,
            "reconstruction": 0.367,
            "unguided": 0.3,
            "guided": 0.34,
            "guided_per_class": {"circle": 0.1, "square": 0.9},
        },
    }
    printed = format_generator_summary(result)
    assert "tokenizer's reconstructions of those scenes 36.7%" in printed
    assert "floor: as many other held-out scenes:    52.25" in printed


def test_summary_end_to_end_on_a_tiny_run(
    generator_run, tokenizer_run, tmp_path, inception_weights, one_thread
):
    """Every summary number on a few held-out scenes, including the latent probe, which is fitted on
    the run's own cache: it must read the class of the real latents it was fitted on."""
    from uniflow.generation.evaluate import (
        evaluate_embedded_generator,
        fit_latent_probe,
        format_generator_summary,
    )
    from uniflow.generation.latent_cache import LatentShards
    from uniflow.training.generator_stage import latents_path

    cfg = load_config(
        EMBEDDED, [*tiny_overrides(tokenizer_run, tmp_path), "summary.num_samples=8", "summary.batch_size=8"]
    )
    cfg.generator.latents = str(latents_path(cfg.generator))
    result = evaluate_embedded_generator(cfg, generator_run / "generator", tmp_path)
    distances = result["frechet_distance"]
    assert set(distances) >= {"unguided", "guided", "gaussian", "reconstruction", "second_real"}
    # The floor compares two disjoint sets of real scenes: a distance, never the zero of a set with itself.
    assert 0.0 < distances["second_real"] < float("inf")
    assert "classifier_accuracy" not in result  # the tiny tokenizer's encoder has no pretrained classifier
    probe = result["latent_probe_accuracy"]
    assert set(probe) == {"data", "real", "unguided", "guided"}
    assert all(0.0 <= probe[k] <= 1.0 for k in ("real", "unguided", "guided"))
    assert "linear probe on the latents" in format_generator_summary(result)
    # 24 training latents of 128 numbers each: a linear classifier separates them all.
    cache = LatentShards(cfg.generator.latents)
    bundle = LatentGenerator.from_pretrained(generator_run)
    fitted = fit_latent_probe(cfg.generator.latents, bundle.normalizer)
    z = torch.stack([cache[i]["latent"] for i in range(len(cache))])
    assert (fitted.predict(bundle.normalizer.normalize(z).flatten(1).numpy()) == cache.labels.numpy()).all()


@pytest.mark.distributed
def test_ddp_and_fsdp2_two_processes_agree(tokenizer_run, tmp_path):
    """Two CPU processes: both ranks end with the same weights, and FSDP2's sharded training (blocks,
    model and EMA sharded) computes what DDP computes from the same seeds and data shards."""
    overrides = [
        o for o in tiny_overrides(tokenizer_run, tmp_path) if not o.startswith(("output_dir=", "name="))
    ]
    runs = {
        strategy: train_two_processes(EMBEDDED, overrides, tmp_path, strategy, "generator/model.safetensors")
        for strategy in ("ddp", "fsdp")
    }
    for result in runs.values():
        fingerprints = result["metrics"]["weights_fingerprint_per_rank"]
        assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]
        assert result["metrics"]["steps"] == 3 and result["last"]["global_step"] == 3
    ddp, fsdp = runs["ddp"]["weights"], runs["fsdp"]["weights"]
    assert fsdp.keys() == ddp.keys()
    for name, value in fsdp.items():
        torch.testing.assert_close(value, ddp[name], rtol=1e-4, atol=1e-5, msg=name)
