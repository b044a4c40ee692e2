"""The embedded default end to end (`make train-tokenizer`): about ten minutes on two CPU cores."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest

from uniflow.config import load_config
from uniflow.training.cli import run

EMBEDDED = Path(__file__).resolve().parents[1] / "experiments" / "tokenizer" / "embedded.yaml"


@pytest.mark.slow
def test_embedded_default_meets_its_targets(tmp_path):
    start = time.perf_counter()
    metrics = run(load_config(EMBEDDED, [f"output_dir={tmp_path}"]))
    minutes = (time.perf_counter() - start) / 60
    assert metrics is not None
    teacher, student = metrics["linear_probe"]["teacher"], metrics["linear_probe"]["student"]
    assert teacher >= 0.85, metrics["linear_probe"]
    assert student >= teacher - 0.02, metrics["linear_probe"]
    assert metrics["reconstruction"]["psnr"] >= 20.0, metrics["reconstruction"]
    # The budget is 10 minutes on an otherwise idle 2-core machine; other load on the cores stretches
    # the run without changing its numbers, so time is reported rather than asserted.
    if minutes > 10.0:
        warnings.warn(
            f"targets met, but the run took {minutes:.1f} min (other load on the CPUs?)", stacklevel=1
        )
