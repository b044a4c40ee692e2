"""The semantic drift report: a tokenizer against itself shows no drift on any block; perturbing the
student's last block moves only that block; the table, plot and TensorBoard entries are written."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from uniflow.data.datamodule import heldout_scenes
from uniflow.understanding.drift_report import DRIFT_MD, DRIFT_PNG, semantic_drift_report
from uniflow.understanding.features import FeatureSource


def _pair(tokenizer) -> tuple[FeatureSource, FeatureSource]:
    teacher = FeatureSource(tokenizer.teacher, tokenizer.stride, "teacher")
    return FeatureSource.of_tokenizer(tokenizer), teacher


def test_a_tokenizer_against_itself_has_cosine_and_cka_one_on_every_block(tiny_tokenizer, tmp_path):
    student, teacher = _pair(tiny_tokenizer)
    scenes = heldout_scenes(6, size=32, annotations=False)
    writer = SummaryWriter(str(tmp_path / "tb"))
    rows = semantic_drift_report(
        student, teacher, scenes, tmp_path, caption="self", batch_size=4, writer=writer
    )
    writer.close()

    assert [r["layer"] for r in rows] == list(range(1, student.depth + 1))
    for row in rows:
        assert row["cosine"] == pytest.approx(1.0, abs=1e-6) and row["cka"] == pytest.approx(1.0, abs=1e-6)
    table = (tmp_path / DRIFT_MD).read_text().splitlines()
    assert table[0] == "self" and table[2] == "| block | mean cosine | linear CKA |"
    assert table[4:] == ["| 1 | 1.0000 | 1.0000 |", "| 2 | 1.0000 | 1.0000 |"]
    with Image.open(tmp_path / DRIFT_PNG) as plot:
        assert plot.format == "PNG" and plot.width > 100 and plot.height > 100
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert not list(tmp_path.glob(".*.partial"))


def test_perturbing_the_last_block_makes_only_the_later_blocks_drift(tiny_tokenizer, tmp_path):
    student, teacher = _pair(tiny_tokenizer)
    with torch.no_grad():
        last = tiny_tokenizer.student.model.blocks[-1].mlp.fc2
        last.weight.add_(torch.randn(last.weight.shape, generator=torch.Generator().manual_seed(0)))
    scenes = heldout_scenes(6, size=32, annotations=False)
    first, second = semantic_drift_report(student, teacher, scenes, None, batch_size=4)
    assert first["cosine"] == pytest.approx(1.0, abs=1e-6) and first["cka"] == pytest.approx(1.0, abs=1e-6)
    assert second["cosine"] < 0.99 and second["cka"] < 0.99
    assert not list(tmp_path.iterdir())  # no directory: computed, not written


def test_the_student_and_teacher_must_have_the_same_blocks(tiny_tokenizer):
    student, teacher = _pair(tiny_tokenizer)
    teacher.encoder.depth = student.depth + 1
    with pytest.raises(ValueError, match="pairs them block by block"):
        semantic_drift_report(student, teacher, heldout_scenes(2, size=32), None)
