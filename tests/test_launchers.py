"""Launchers start a stage: ``torchrun`` and ``fabric run`` each run the micro tokenizer training on two
CPU processes (gloo), and the replicas agree.

Under a launcher the processes exist before Lightning starts, so the Trainer must recognise the
launcher's environment instead of starting processes itself: a run that ignored it would train on
four processes, or on two unconnected ones, and record other than two equal fingerprints. The third
launcher, ``srun`` (experiments/slurm/train.sbatch), needs a SLURM cluster and is not run here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from safetensors.torch import load_file

pytestmark = pytest.mark.distributed

BIN = Path(sys.executable).parent  # torchrun and fabric are console scripts of torch and lightning


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _command(launcher: str) -> list[str]:
    """The launcher's command line up to the verb's arguments; both start `python -m uniflow train`."""
    if launcher == "torchrun":
        # --standalone: a rendezvous on a free local port, so concurrent test runs do not collide.
        return [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "uniflow", "train"]
    # fabric run takes a script path, not -m; a free port for the same reason as above.
    return [str(BIN / "fabric"), "run", "--accelerator", "cpu", "--devices", "2", "--main-port",
            str(_free_port()), str(ROOT / "uniflow" / "__main__.py"), "train"]  # fmt: skip


def _launch(launcher: str, base: tuple[Path, list[str]], output: Path) -> Path:
    config, overrides = base
    args = [*overrides, f"output_dir={output}", f"name={launcher}", "trainer.devices=2",
            "trainer.accelerator=cpu", "trainer.num_threads=1", "summary.enabled=false"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    # A file, not a pipe: a worker inherits the output and may outlive the launcher.
    log = output / f"{launcher}.log"
    with log.open("w") as out:
        code = subprocess.run(
            [*_command(launcher), str(config), *args],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=240,
        ).returncode  # fmt: skip
    assert code == 0, log.read_text()[-4000:]
    return output / launcher


@pytest.fixture(scope="module")
def launched(micro_run_base, tmp_path_factory):
    """``launched(name)``: the run directory of the micro run under that launcher, run once per module."""
    runs: dict[str, Path] = {}

    def run(launcher: str) -> Path:
        if launcher not in runs:
            runs[launcher] = _launch(launcher, micro_run_base, tmp_path_factory.mktemp(launcher))
        return runs[launcher]

    return run


@pytest.mark.timeout(300)
@pytest.mark.parametrize("launcher", ["torchrun", "fabric"])
def test_launcher_trains_a_stage_on_two_processes(launched, launcher):
    run_dir = launched(launcher)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "tokenizer" / "model.safetensors").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    fingerprints = metrics["weights_fingerprint_per_rank"]
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1], fingerprints
    assert metrics["stage"] == "tokenizer" and metrics["steps"] == 6


@pytest.mark.timeout(600)
def test_launchers_train_the_same_weights(launched):
    # Same seeds, shards and per-rank noise: who started the processes must not change the result.
    torchrun = load_file(str(launched("torchrun") / "tokenizer" / "model.safetensors"))
    fabric = load_file(str(launched("fabric") / "tokenizer" / "model.safetensors"))
    assert torchrun.keys() == fabric.keys()
    for name, value in torchrun.items():
        torch.testing.assert_close(fabric[name], value, msg=name)
