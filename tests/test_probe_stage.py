"""The probe stage end to end on tiny configs: every task trains a head on cached frozen features and
writes its metrics with the protocol; the student and the teacher go through the same code path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from evaluation_fakes import save_tiny_tokenizer

from uniflow.config import ConfigError, load_config, read_yaml
from uniflow.training.cli import check_config, run
from uniflow.understanding import protocols
from uniflow.understanding.features import FeatureSource
from uniflow.understanding.probe_data import EmbeddedSceneTargets, ProbeSet, probe_splits
from uniflow.understanding.probe_stage import EXPORT_NAME, HEAD_FILE, RESULT_FILE

ROOT = Path(__file__).resolve().parents[1]

# A probe small enough for a second or two: 32 px scenes (the tiny tokenizer's size), 12 / 6 samples.
TINY_PROBE = [
    "probe.dataset=embedded",
    "probe.resolution=[32,32]",
    "probe.num_train=12",
    "probe.num_val=6",
    "probe.epochs=2",
    "probe.batch_size=6",
    "probe.extract_batch_size=6",
    "optim.warmup_steps=1",
    "trainer.precision=32-true",
    "trainer.log_every_n_steps=1",
    # The detection probe as narrow as torchvision's Faster R-CNN allows.
    "probe.anchor_sizes=[4,8,16,32,64]",
    "probe.pyramid_channels=8",
    "probe.representation_size=16",
    "probe.rpn_batch_size_per_image=16",
    "probe.box_batch_size_per_image=8",
    "probe.proposals=20",
]
EXPECTED = {
    "classification": {"top1"},
    "segmentation": {"miou", "pixel_accuracy", "classes_present"},
    "depth": {"abs_rel", "rmse", "log_rmse", "delta1", "delta2", "delta3"},
    "detection": {"map", "map_50", "map_75", "map_small", "map_medium", "map_large"},
}


@pytest.fixture(scope="module")
def tokenizer_run(tmp_path_factory) -> Path:
    """A run directory whose untrained tokenizer's student equals its teacher (both drawn from seed 0)."""
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    save_tiny_tokenizer(run_dir / "tokenizer")
    return run_dir


def _config(tokenizer_run: Path, tmp_path: Path, *overrides: str):
    return load_config(
        {"stage": "probe"},
        [
            *TINY_PROBE,
            f"probe.tokenizer={tokenizer_run}",
            f"probe.cache_dir={tmp_path / 'features'}",
            f"output_dir={tmp_path / 'runs'}",
            *overrides,
        ],
    )


@pytest.mark.parametrize("task", list(EXPECTED))
def test_each_task_trains_on_cached_features_and_records_its_protocol(
    task, tokenizer_run, tmp_path, one_thread
):
    cfg = _config(tokenizer_run, tmp_path, f"probe.task={task}", f"name={task}")
    check_config(cfg)
    metrics = run(cfg)
    assert metrics is not None
    export = tmp_path / "runs" / task / EXPORT_NAME
    result = json.loads((export / RESULT_FILE).read_text())
    assert result == metrics["probe"] and (export / HEAD_FILE).is_file()
    assert set(result["metrics"]) == EXPECTED[task]
    assert all(isinstance(v, float) for v in result["metrics"].values())
    assert result["samples"] == {"train": 12, "val": 6}
    protocol = result["protocol"]
    # Everything that decides the number: 2 epochs of 12 samples in batches of 6 are 4 steps.
    assert protocol["steps"] == metrics["steps"] == 4
    assert protocol["task"] == task and protocol["layer"] == -1 and protocol["resolution"] == [32, 32]
    assert protocol["epochs"] == 2 and protocol["lr"] == cfg.optim.lr and protocol["augmentation"] == "none"
    assert ("anchor_sizes" in protocol) == (task == "detection")
    assert ("max_depth" in protocol) == (task == "depth")
    assert result["source"]["kind"] == "student" and len(result["source"]["model_hash"]) == 64


def test_student_and_teacher_go_through_the_same_code_path(tokenizer_run, tmp_path, monkeypatch, one_thread):
    """The untrained tokenizer's student and teacher hold the same weights: through one path, every
    number must be equal, and both sources' images pass FeatureSource.blocks."""
    seen: list[str] = []
    blocks = FeatureSource.blocks

    def spy(self: FeatureSource, images: torch.Tensor):
        seen.append(self.description)
        return blocks(self, images)

    monkeypatch.setattr(FeatureSource, "blocks", spy)
    results = {}
    for source in ("student", "teacher"):
        cfg = _config(
            tokenizer_run, tmp_path, "probe.task=segmentation", f"probe.source={source}", f"name={source}"
        )
        results[source] = run(cfg)["probe"]  # type: ignore[index]
    student, teacher = results["student"], results["teacher"]
    assert student["metrics"] == teacher["metrics"]
    assert student["source"]["description"].startswith("student of")
    assert teacher["source"]["description"].startswith("raw encoder")
    assert {d.split()[0] for d in seen} == {"student", "raw"}


def test_features_are_extracted_once_and_reused(tokenizer_run, tmp_path, monkeypatch, one_thread):
    calls: list[int] = []
    blocks = FeatureSource.blocks

    def count(self: FeatureSource, images: torch.Tensor):
        calls.append(images.shape[0])
        return blocks(self, images)

    monkeypatch.setattr(FeatureSource, "blocks", count)
    run(_config(tokenizer_run, tmp_path, "probe.task=depth", "name=first"))
    assert sum(calls) == 12 + 6  # each training and evaluation image once
    run(_config(tokenizer_run, tmp_path, "probe.task=segmentation", "name=second"))  # same dense features
    assert sum(calls) == 12 + 6


def test_hflip_adds_a_mirrored_view_with_mirrored_targets():
    base = EmbeddedSceneTargets("train", 2, 32, seed=0)
    plain = ProbeSet(base, "detection", "embedded32x32", "train", (32, 32))
    mirrored = ProbeSet(base, "detection", "embedded32x32", "train", (32, 32), flip=True)
    assert mirrored.split == "train-hflip"
    a, b = plain[0], mirrored[0]
    torch.testing.assert_close(b["image"], a["image"].flip(-1))
    boxes = a["target"]["boxes"]
    flipped = torch.stack([32 - boxes[:, 2], boxes[:, 1], 32 - boxes[:, 0], boxes[:, 3]], 1)
    torch.testing.assert_close(b["target"]["boxes"], flipped)
    seg = ProbeSet(base, "segmentation", "embedded32x32", "train", (32, 32), flip=True)
    assert torch.equal(
        seg[1]["target"], ProbeSet(base, "segmentation", "e", "train", (32, 32))[1]["target"].flip(-1)
    )
    cfg = load_config(
        {"stage": "probe"}, ["probe.augmentation=hflip", "probe.num_train=3", "probe.num_val=2"]
    )
    splits = probe_splits(cfg.probe, seed=0)
    assert [v.split for v in splits["train"]] == ["train", "train-hflip"] and len(splits["val"]) == 1


def test_bad_probe_configs_are_refused_naming_the_key(tokenizer_run, tmp_path):
    with pytest.raises(ConfigError, match=r"'probe\.dataset' = 'ade20k' has no depth targets"):
        check_config(_config(tokenizer_run, tmp_path, "probe.task=depth", "probe.dataset=ade20k"))
    with pytest.raises(ConfigError, match=r"'probe\.data_path' must name the ade20k root"):
        check_config(_config(tokenizer_run, tmp_path, "probe.task=segmentation", "probe.dataset=ade20k"))
    with pytest.raises(ConfigError, match=r"'probe\.tokenizer': no 'tokenizer' export"):
        check_config(_config(tokenizer_run, tmp_path, f"probe.tokenizer={tmp_path / 'nothing'}"))
    with pytest.raises(ConfigError, match=r"'probe\.task'"):
        _config(tokenizer_run, tmp_path, "probe.task=captioning")
    with pytest.raises(
        ValueError, match=r"probe.resolution \[36, 36\] must be a multiple of the encoder's stride 8"
    ):
        run(_config(tokenizer_run, tmp_path, "probe.task=segmentation", "probe.resolution=[36,36]"))


@pytest.mark.parametrize("task", list(protocols.EMBEDDED))
def test_the_embedded_probe_files_are_the_suites_protocols(task):
    """experiments/probe/embedded_<task>.yaml is what the embedded_probe_* rows run."""
    from omegaconf import OmegaConf

    file = OmegaConf.to_container(read_yaml(ROOT / "experiments" / "probe" / f"embedded_{task}.yaml"))
    preset = protocols.EMBEDDED[task]
    assert file["stage"] == "probe"  # type: ignore[index]
    for section in ("probe", "optim"):
        for key, value in preset[section].items():
            assert file[section][key] == value, (task, section, key)  # type: ignore[index]
