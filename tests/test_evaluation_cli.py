"""The registry and the ``python -m uniflow eval`` command: config errors, run discovery, a real-Inception run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from evaluation_fakes import TINY, save_tiny_tokenizer
from threadpoolctl import threadpool_limits

from uniflow.config import ConfigError, load_config
from uniflow.evaluation import all_benchmarks, enabled_benchmarks
from uniflow.evaluation.cli import _resolve, eval_main
from uniflow.evaluation.config import EvalConfig
from uniflow.evaluation.registry import FAMILIES
from uniflow.metrics.inception import WEIGHTS_ENV


def test_registry_holds_the_papers_13_benchmarks_with_families_and_references():
    entries = all_benchmarks()
    paper = [b for b in entries if b.paper]
    assert len(paper) == 13 and len({b.name for b in entries}) == len(entries)
    assert {b.family for b in paper} == set(FAMILIES)
    assert [b.family for b in paper].count("understanding") == 6
    for bench in entries:
        assert bench.title and bench.metrics and bench.family in FAMILIES
        for metric in bench.metrics:
            # UniFlow's own number for every metric: a value, or an explicit note that none exists.
            own = [r for r in bench.references if r.metric == metric and r.paper]
            assert len(own) == 1 and (own[0].value or own[0].note), (bench.name, metric)
        assert (bench.run is None) == bool(bench.pending), bench.name
    runnable = {b.name for b in entries if b.run}
    assert runnable == {
        "embedded_photos",
        "embedded_scenes",
        "embedded_drift",
        "embedded_vqa",
        "embedded_probe_cls",
        "embedded_probe_seg",
        "embedded_probe_depth",
        "embedded_probe_det",
        "imagenet_linear",
        "ade20k_seg",
        "nyu_depth",
        "coco_det",
        "pope",
        "gqa",
        "textvqa",
        "mmvet",
        "mmbench",
        "mme_p",
        "imagenet_recon",
        "coco_recon",
        "imagenet_gen",
    }


def test_config_mistakes_are_config_errors_naming_the_key_or_the_valid_names(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown benchmark 'nope'.*'embedded_photos'.*'imagenet_recon'"):
        enabled_benchmarks(EvalConfig(benchmarks=["embedded_photos", "nope"]))
    with pytest.raises(ConfigError, match=r"eval.num_samples has unknown benchmarks \['imagenet'\]"):
        enabled_benchmarks(EvalConfig(num_samples={"imagenet": 10}))
    with pytest.raises(ConfigError, match=r"eval.data.pope must name the benchmark's data folder"):
        enabled_benchmarks(EvalConfig(benchmarks=["pope"]))
    with pytest.raises(ConfigError, match=r"imagenet_recon needs eval.data.imagenet_recon: an image folder"):
        enabled_benchmarks(EvalConfig(benchmarks=["imagenet_recon"]))
    with pytest.raises(ConfigError, match=f"eval.data.coco_recon not found: {tmp_path / 'coco'}"):
        enabled_benchmarks(EvalConfig(benchmarks=["coco_recon"], data={"coco_recon": str(tmp_path / "coco")}))
    with pytest.raises(ConfigError, match=f"eval.fid_reference.coco_recon not found: {tmp_path / 'ref.npz'}"):
        enabled_benchmarks(
            EvalConfig(
                benchmarks=["coco_recon"],
                data={"coco_recon": str(tmp_path)},
                fid_reference={"coco_recon": str(tmp_path / "ref.npz")},
            )
        )
    with pytest.raises(ConfigError, match=r"eval.num_samples.embedded_scenes must be set"):
        enabled_benchmarks(EvalConfig(num_samples={"embedded_photos": 4}))


def test_data_paths_are_keyed_by_registered_benchmarks_that_read_them(tmp_path):
    cfg = load_config(None, [f"eval.data.imagenet_recon={tmp_path}", "eval.benchmarks=[imagenet_recon]"])
    assert cfg.eval.data == {"imagenet_recon": str(tmp_path)}
    assert enabled_benchmarks(cfg.eval)[0].name == "imagenet_recon"
    # A misspelt name fails before any work, listing the valid ones (pending benchmarks included).
    with pytest.raises(
        ConfigError, match=r"eval.data has unknown benchmarks \['imagenet'\]; valid names: .*'ade20k_seg'"
    ):
        enabled_benchmarks(EvalConfig(data={"imagenet": str(tmp_path)}))
    with pytest.raises(ConfigError, match=r"eval.fid_reference has unknown benchmarks \['coco'\]"):
        enabled_benchmarks(EvalConfig(fid_reference={"coco": str(tmp_path)}))
    # A path for a benchmark that reads none would be silently ignored: refused, naming those that read one.
    with pytest.raises(
        ConfigError, match=r"eval.data sets \['embedded_photos'\], which take none; .*'coco_recon'"
    ):
        enabled_benchmarks(EvalConfig(data={"embedded_photos": str(tmp_path)}))


def test_command_reports_config_errors_before_looking_for_a_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert eval_main(["eval.benchmarks=[embedded_photos,nope]"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
    assert eval_main(["eval.data.imagenet_val=/data/imagenet/val"]) == 2
    assert "eval.data has unknown benchmarks ['imagenet_val']; valid names: [" in capsys.readouterr().err


def test_without_a_run_the_error_names_the_path_tried(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert eval_main([]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "runs" / "*" / "tokenizer" / "model.safetensors") in err
    assert "make train-tokenizer" in err
    assert eval_main([str(TINY), f"output_dir={tmp_path / 'elsewhere'}"]) == 2
    assert str(tmp_path / "elsewhere" / "tiny" / "tokenizer" / "model.safetensors") in capsys.readouterr().err


def test_without_arguments_the_newest_run_is_evaluated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old = save_tiny_tokenizer(tmp_path / "runs" / "old" / "tokenizer")
    new = save_tiny_tokenizer(tmp_path / "runs" / "new" / "tokenizer")
    os.utime(old / "model.safetensors", (2e9, 2e9))
    os.utime(new / "model.safetensors", (1e9, 1e9))
    cfg, tokenizer_dir, name = _resolve([])
    assert (tokenizer_dir, name) == (Path("runs/old/tokenizer"), "old")
    assert cfg.eval.benchmarks == [
        "embedded_photos",
        "embedded_scenes",
        "embedded_drift",
        "embedded_vqa",
        *(f"embedded_probe_{task}" for task in ("cls", "seg", "depth", "det")),
    ]


def test_command_end_to_end_with_the_real_inception(tmp_path, monkeypatch, capsys, inception_weights):
    weights = inception_weights
    monkeypatch.setenv(WEIGHTS_ENV, str(weights.path))
    monkeypatch.setenv("UNIFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    save_tiny_tokenizer(tmp_path / "runs" / "embedded" / "tokenizer")  # where `make train-tokenizer` exports
    overrides = [
        "eval.benchmarks=[embedded_photos]",
        "eval.num_samples.embedded_photos=4",
        "eval.batch_size=4",
    ]
    with threadpool_limits(1):  # see test_evaluation_suite.quick
        assert eval_main(overrides) == 0
    out = capsys.readouterr().out
    assert "| rFID |" in out and "wrote runs/embedded/eval/results.json" in out
    data = json.loads((tmp_path / "runs" / "embedded" / "eval" / "results.json").read_text())
    photos = next(b for b in data["benchmarks"] if b["name"] == "embedded_photos")
    fid = photos["metrics"]["rFID"]
    assert fid["value"] > 0 and fid["provenance"]["samples"] == 4
    assert fid["provenance"]["inception_weights_sha256"] == weights.sha256
