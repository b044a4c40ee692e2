"""Training runs end to end on a micro config: run directory, resume, non-finite stop, atomic checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from uniflow import UniFlowTokenizer, stages
from uniflow.config import load_config
from uniflow.training import checkpoint_io
from uniflow.training.cli import run, train_main
from uniflow.training.finite import NonFiniteLossError
from uniflow.training.run import run_stage


def train_tokenizer(cfg, callbacks=()):
    return run_stage(stages.get("tokenizer"), cfg, callbacks)


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[trainer.global_step] = outputs["loss"].item()


class CrashAt(L.Callback):
    """Raises as the given step starts: a process dying between checkpoints."""

    def __init__(self, step: int, error: BaseException) -> None:
        self.step, self.error = step, error

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise self.error


class Boom(RuntimeError):
    pass


def _scalars(directory):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory / "tensorboard")).Reload()
    return set(events.Tags()["scalars"]), set(events.Tags()["images"])


def test_micro_run_with_encoder_pretraining_writes_a_complete_run_directory(micro_run, capsys):
    path, overrides = micro_run
    cfg = load_config(path, [*overrides, "pretrain.enabled=true"])
    metrics = run(cfg)
    out = capsys.readouterr().out
    assert "PSNR" in out and "linear probe" in out and "teacher-head transfer" in out

    run_dir = Path(cfg.output_dir) / cfg.name
    encoder = Path(cfg.output_dir) / cfg.pretrain.name / "encoder.safetensors"
    assert encoder.is_file()
    for name in ("config.yaml", "checkpoints/last.ckpt", "reconstructions.png", "metrics.json"):
        assert (run_dir / name).is_file(), name
    assert load_config(run_dir / "config.yaml").tokenizer.encoder.checkpoint == str(encoder)

    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["steps"] == 6 and saved == json.loads(json.dumps(metrics))
    for key in ("psnr", "ssim"):
        assert saved["reconstruction"][key] > 0
    assert set(saved["linear_probe"]) >= {"teacher", "student"}
    assert set(saved["teacher_head"]) >= {"teacher", "student"}
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6

    tok = UniFlowTokenizer.from_pretrained(run_dir / "tokenizer")
    images = torch.rand(2, 3, 32, 32)
    assert tok.reconstruct(images).shape == images.shape
    assert tok.teacher is None

    scalars, images_logged = _scalars(run_dir)
    expected = {"train/loss", "train/flow", "train/distill", "train/grad_norm", "alpha/layer01",
                "weight/layer02", "weight/sum", "perf/images_per_s", "val/psnr", "val/ssim"}  # fmt: skip
    assert expected <= scalars, expected - scalars
    assert any(tag.startswith("lr-AdamW/encoder") for tag in scalars)
    assert any(tag.startswith("reconstruction/") for tag in images_logged)

    assert saved["stage"] == "tokenizer" and set(saved["timing_s"]) >= {"pretrain", "tokenizer", "summary"}
    assert saved["pretrain"]["steps"] == 3

    # A second run finds the pretrained encoder and does not train it again.
    assert (
        train_main([str(path), *overrides, "pretrain.enabled=true", "name=again", "summary.enabled=false"])
        == 0
    )
    assert "pretrained encoder: using" in capsys.readouterr().out


def test_resume_auto_continues_with_the_losses_of_the_uninterrupted_run(micro_run):
    path, overrides = micro_run
    whole = LossRecorder()
    train_tokenizer(load_config(path, [*overrides, "name=whole"]), callbacks=[whole])

    first = LossRecorder()
    with pytest.raises(Boom):  # dies during step 5; the checkpoint of step 3 is mid-epoch (5 steps/epoch)
        train_tokenizer(load_config(path, [*overrides, "name=cut"]), callbacks=[first, CrashAt(4, Boom())])
    assert sorted(first.losses) == [1, 2, 3, 4]
    second = LossRecorder()
    result = train_tokenizer(load_config(path, [*overrides, "name=cut", "resume=auto"]), callbacks=[second])

    assert sorted(second.losses) == [4, 5, 6]
    for step in (4, 5, 6):
        assert second.losses[step] == pytest.approx(whole.losses[step], rel=1e-6, abs=1e-7), step
    assert result.steps == 6


class Poison(L.Callback):
    """Turns the flow head's output layer into NaN before the given step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            pl_module.tokenizer.decoder.head.final.linear.weight.data.fill_(float("nan"))


def test_non_finite_loss_stops_naming_step_and_term_and_keeps_the_last_good_checkpoint(micro_run):
    path, overrides = micro_run
    cfg = load_config(path, overrides)
    with pytest.raises(NonFiniteLossError, match=r"step 5\b.*\bflow\b"):
        train_tokenizer(cfg, callbacks=[Poison(4)])
    last = torch.load(Path(cfg.output_dir) / cfg.name / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_last_ckpt(micro_run, monkeypatch):
    path, overrides = micro_run
    cfg = load_config(path, overrides)
    real_save = checkpoint_io.torch.save
    calls = []

    def save_then_die_on_the_second(obj, f):
        calls.append(1)
        if len(calls) == 2:  # the step-6 checkpoint: half written, then the process dies
            f.write(b"half a checkpoint")
            raise Boom("killed while saving")
        real_save(obj, f)

    monkeypatch.setattr(checkpoint_io.torch, "save", save_then_die_on_the_second)
    with pytest.raises(Boom):
        train_tokenizer(cfg)
    ckpt_dir = Path(cfg.output_dir) / cfg.name / "checkpoints"
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=False)["global_step"] == 3
    assert [p.name for p in ckpt_dir.iterdir()] == ["last.ckpt"]


def test_encoder_pretraining_of_an_fsdp_run_trains_with_plain_data_parallelism(micro_run):
    """FSDP2 is for the tokenizer; the small supervised encoder pretraining must still train under such a run."""
    from uniflow.training.pretrain import upstream_config

    path, overrides = micro_run
    cfg = load_config(
        path, [*overrides, "pretrain.enabled=true", "trainer.strategy=fsdp", "trainer.devices=1"]
    )
    upstream = upstream_config(cfg)
    assert upstream.trainer.strategy == "auto" and upstream.stage == "pretrain"
    result = run_stage(stages.get("pretrain"), upstream)
    assert result.directory.export("encoder.safetensors").is_file()


def test_encoder_pretraining_writes_where_tokenizer_encoder_checkpoint_points(micro_run, tmp_path):
    path, overrides = micro_run
    target = tmp_path / "elsewhere" / "encoder.safetensors"
    cfg = load_config(
        path,
        [
            *overrides,
            "pretrain.enabled=true",
            f"tokenizer.encoder.checkpoint={target}",
            "summary.enabled=false",
        ],
    )
    run(cfg)
    assert target.is_file()
    run_dir = Path(cfg.output_dir) / cfg.name
    assert load_config(run_dir / "config.yaml").tokenizer.encoder.checkpoint == str(target)


def test_encoder_pretraining_with_scene_attributes_exports_plain_timm_weights(micro_run):
    """The attribute heads train beside the classifier and report their accuracy; the export stays a
    timm state dict (a tokenizer loads it as pretrained weights), without them."""
    from safetensors.torch import load_file

    from uniflow.training.pretrain import upstream_config

    path, overrides = micro_run
    cfg = load_config(
        path, [*overrides, "pretrain.enabled=true", "pretrain.attributes=[colour,count,shapes]"]
    )
    result = run_stage(stages.get("pretrain"), upstream_config(cfg))
    names = {"val_accuracy", "val_colour_accuracy", "val_count_accuracy", "val_shapes_accuracy"}
    assert set(result.metrics) >= names and all(0 <= result.metrics[k] <= 1 for k in names)
    state = load_file(result.directory.export("encoder.safetensors"))
    assert "head.weight" in state and not any("attribute" in key for key in state)
