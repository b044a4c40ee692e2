"""The stage seam: a stage defined here, in the test, trains, resumes and exports through the shared
machinery with no edit to any core file; the table refuses a second definition of a name."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, TensorDataset

from uniflow import stages
from uniflow.config import ConfigError, load_config
from uniflow.run_dir import RunDirectory
from uniflow.training.cli import train_main
from uniflow.training.finite import check_finite
from uniflow.training.schedule import adamw_warmup_cosine


@dataclass
class ToyConfig:
    """The toy stage's own section: a linear map to fit."""

    features: int = 4
    samples: int = 64


class ToyModule(L.LightningModule):
    def __init__(self, cfg: Any):
        super().__init__()
        self.cfg = cfg
        self.net = torch.nn.Linear(cfg.toy.features, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.mean((self.net(x) - y) ** 2)
        check_finite(self, {"mse": loss.detach()}, "loss")  # the shared non-finite stop
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.cfg.optim
        groups = [{"params": list(self.net.parameters()), "lr": o.lr, "weight_decay": 0.0, "name": "net"}]
        return adamw_warmup_cosine(groups, o, self.cfg.trainer.max_steps)


class ToyData(L.LightningDataModule):
    def __init__(self, cfg: Any):
        super().__init__()
        g = torch.Generator().manual_seed(cfg.seed)
        x = torch.randn(cfg.toy.samples, cfg.toy.features, generator=g)
        self.dataset = TensorDataset(x, x.sum(dim=1, keepdim=True))
        self.batch_size = cfg.data.batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False)


def _export(module: ToyModule, trainer: L.Trainer, path: Path) -> dict[str, Any]:
    if trainer.is_global_zero:
        save_file({k: v.detach().contiguous() for k, v in module.net.state_dict().items()}, str(path))
    return {"exported": path.name}


TOY = stages.Stage(
    name="toy",
    description="a linear regression (test only)",
    sections={"toy": ToyConfig},
    module=ToyModule,
    data=ToyData,
    export_name="toy.safetensors",
    export=_export,
    summary=lambda cfg, directory: {"weights": len(load_file(str(directory.export("toy.safetensors"))))},
    format_summary=lambda metrics: f"toy weights exported: {metrics['weights']}",
)


@pytest.fixture
def toy_stage():
    stages.register(TOY)
    yield TOY
    stages.unregister(TOY.name)


def _toy_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(
        "stage: toy\nname: toyrun\n"
        f"output_dir: {tmp_path / 'runs'}\n"
        "toy: {features: 3}\n"
        "data: {batch_size: 8}\n"
        "optim: {lr: 0.05, warmup_steps: 1, ema_decay: 0}\n"
        "trainer: {max_steps: 4, precision: 32-true, accelerator: cpu, devices: 1, num_threads: 1,\n"
        "          checkpoint_every_n_steps: 2, val_every_n_steps: 2, log_every_n_steps: 1}\n"
    )
    return path


def test_a_stage_defined_in_a_test_trains_resumes_and_exports(toy_stage, tmp_path, capsys):
    config = _toy_yaml(tmp_path)
    cfg = load_config(config)
    assert cfg.stage == "toy" and cfg.toy.features == 3 and not hasattr(cfg, "tokenizer")

    assert train_main([str(config)]) == 0
    out = capsys.readouterr().out
    assert "toy weights exported: 2" in out
    run = RunDirectory.of(tmp_path / "runs", "toyrun")
    for path in (run.config, run.last_checkpoint, run.export("toy.safetensors"), run.metrics):
        assert path.is_file(), path
    assert load_config(run.config).toy.features == 3  # the resolved config reloads as the same stage
    metrics = json.loads(run.metrics.read_text())
    assert metrics["stage"] == "toy" and metrics["steps"] == 4 and metrics["exported"] == "toy.safetensors"
    first = load_file(str(run.export("toy.safetensors")))

    # Resume: a longer run continues from last.ckpt (step 4), it does not start again.
    assert train_main([str(config), "resume=auto", "trainer.max_steps=6"]) == 0
    assert json.loads(run.metrics.read_text())["steps"] == 6
    assert torch.load(run.last_checkpoint, weights_only=False)["global_step"] == 6
    second = load_file(str(run.export("toy.safetensors")))
    assert not torch.equal(first["weight"], second["weight"])  # trained on, exported again


def test_a_stage_name_is_registered_once(toy_stage):
    with pytest.raises(ValueError, match="already registered"):
        stages.register(TOY)
    with pytest.raises(ValueError, match="already registered"):
        stages.register(stages.Stage(**{**TOY.__dict__, "name": "tokenizer"}))


def test_unknown_stage_and_unknown_section_keys_are_named(toy_stage, tmp_path):
    with pytest.raises(ConfigError, match=r"'stage' = 'nope'.*\[.*'pretrain', 'probe', 'tokenizer', 'toy'\]"):
        load_config(None, ["stage=nope"])
    with pytest.raises(ConfigError, match=r"unknown config key 'toy.width'.*features"):
        load_config(_toy_yaml(tmp_path), ["toy.width=3"])
    with pytest.raises(ConfigError, match="unknown config key 'tokenizer"):
        load_config(_toy_yaml(tmp_path), ["tokenizer.image_size=32"])  # not a section of this stage


def test_builtin_stages_compose_their_sections():
    tokenizer = load_config(None)
    assert (
        tokenizer.stage == "tokenizer" and hasattr(tokenizer, "tokenizer") and hasattr(tokenizer, "summary")
    )
    pretrain = load_config(None, ["stage=pretrain"])
    assert hasattr(pretrain, "pretrain") and not hasattr(pretrain, "summary")


def test_run_directory_finds_an_export_from_the_run_or_itself(tmp_path):
    run = RunDirectory.of(tmp_path, "r")
    export = run.export("tokenizer")
    export.mkdir(parents=True)
    (export / "model.safetensors").write_bytes(b"x")
    assert RunDirectory.find_export(run.root, "tokenizer", "model.safetensors") == export
    assert RunDirectory.find_export(export, "tokenizer", "model.safetensors") == export
    assert RunDirectory.latest_with(tmp_path, "tokenizer", "model.safetensors") == export
    with pytest.raises(FileNotFoundError, match=r"no 'tokenizer' export for .*tried"):
        RunDirectory.find_export(tmp_path / "elsewhere", "tokenizer", "model.safetensors")
