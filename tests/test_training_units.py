"""Training building blocks without a Trainer: schedule, EMA, atomic writes, the resumable stream, config checks."""

from __future__ import annotations

import math
import os

import pytest
import torch
from conftest import TINY_TOKENIZER
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from uniflow.config import load_config
from uniflow.io import PARTIAL_SUFFIX, remove_stale_partials
from uniflow.training import checkpoint_io
from uniflow.training.checkpoint_io import atomic_torch_save
from uniflow.training.cli import train_main
from uniflow.training.data import StepStream
from uniflow.training.ema import ema_decay_at, ema_update
from uniflow.training.schedule import warmup_cosine


def test_warmup_then_cosine_to_the_floor():
    f = warmup_cosine(max_steps=110, warmup_steps=10, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.55)
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    assert [f(s) for s in range(10, 111)] == sorted([f(s) for s in range(10, 111)], reverse=True)
    constant = warmup_cosine(100, 0, "constant")
    assert constant(0) == constant(99) == 1.0
    with pytest.raises(ValueError, match="schedule"):
        warmup_cosine(10, 1, "linear")


def test_ema_decay_warms_up_and_update_is_a_lerp():
    assert ema_decay_at(0, 0.999, True) == pytest.approx(0.1)
    assert ema_decay_at(10**6, 0.999, True) == 0.999 and ema_decay_at(0, 0.999, False) == 0.999
    avg, live = [torch.zeros(3)], [torch.ones(3)]
    ema_update(avg, live, 0.75)
    torch.testing.assert_close(avg[0], torch.full((3,), 0.25))


def test_a_crash_mid_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1, "w": torch.arange(4)}, path)

    def dying_save(obj, f):  # writes part of the file, then the process "dies"
        f.write(b"PK\x03\x04 partial checkpoint bytes")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_io.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_partials_of_a_killed_process_are_cleaned_and_files_are_not_private(tmp_path):
    atomic_torch_save({"x": 1}, tmp_path / "a.ckpt")
    (tmp_path / f".last.ckpt.abc{PARTIAL_SUFFIX}").write_bytes(b"junk")
    assert [p.name for p in remove_stale_partials(tmp_path)] == [f".last.ckpt.abc{PARTIAL_SUFFIX}"]
    assert sorted(os.listdir(tmp_path)) == ["a.ckpt"]
    assert (tmp_path / "a.ckpt").stat().st_mode & 0o044  # readable by group/others as a plain open() gives


@pytest.mark.parametrize("start", [0, 3, 5, 7, 12])
def test_step_stream_resumes_exactly_where_the_uninterrupted_stream_is(start):
    data = TensorDataset(torch.arange(22))
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=3, drop_last=True)

    def loader():
        return DataLoader(data, batch_size=4, sampler=sampler, drop_last=True)

    full = [b[0].tolist() for _, b in zip(range(15), StepStream(loader()))]
    resumed = [b[0].tolist() for _, b in zip(range(15 - start), StepStream(loader(), start=start))]
    assert resumed == full[start:]
    assert full[0] != full[5]  # epoch 1 is reshuffled (5 batches per epoch)
    assert len({i for batch in full[:5] for i in batch}) == 20  # one epoch: 5 batches of distinct samples


def test_step_stream_of_a_plain_iterable_reads_ahead():
    batches = [[i] for i in range(4)]
    assert [b for _, b in zip(range(6), StepStream(batches, start=2))] == [[2], [3], [0], [1], [2], [3]]
    with pytest.raises(ValueError, match="no batch"):
        StepStream([])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.max_steps=0"], "trainer.max_steps"),
        (["tokenizer.encoder.checkpoint=/nowhere/encoder.safetensors"], "tokenizer.encoder.checkpoint"),
        (["pretrain.enabled=true", "tokenizer.encoder.backend=hf"], "pretrain.enabled"),
        (["pretrain.enabled=true", "pretrain.attributes=[colour,size]"], "pretrain.attributes"),
        (["stage=nonsense"], "stage"),
        (["resume=/nowhere/last.ckpt"], "resume"),
        (["data.backend=folder"], "data.train_path"),
        (["trainer.strategy=fsdp", "trainer.devices=auto"], "trainer.devices"),
        (["trainer.precisoin=32-true"], "trainer.precisoin"),
        (["trainer.precision=bf16-true", "optim.ema_decay=0.999"], "optim.ema_decay"),
    ],
)
def test_config_errors_name_the_key_before_any_work(tiny_config_path, tmp_path, capsys, overrides, message):
    code = train_main([str(tiny_config_path), f"output_dir={tmp_path}", *overrides])
    assert code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing was started


def test_usage_and_config_sections_round_trip(capsys):
    with pytest.raises(SystemExit) as exit_:
        train_main([])
    assert exit_.value.code == 2 and "usage" in capsys.readouterr().err
    cfg = load_config(None, ["pretrain.enabled=true", "summary.probe_test=10", "optim.ema_warmup=false"])
    assert cfg.pretrain.enabled and cfg.summary.probe_test == 10 and not cfg.optim.ema_warmup
    # The pretrain stage reuses OptimConfig, with its own defaults.
    assert math.isclose(cfg.pretrain.optim.lr, 1e-3) and cfg.pretrain.optim.ema_decay == 0


def test_module_switches_ema_and_parameter_groups(micro_run, monkeypatch):
    from uniflow.training.tokenizer_module import TokenizerModule

    path, overrides = micro_run
    module = TokenizerModule(
        load_config(path, [*overrides, "trainer.compile=true", "optim.weight_decay=0.1"])
    )
    live = dict(module.tokenizer.named_parameters())
    assert all(torch.equal(p, live[n]) for n, p in module.ema.named_parameters())  # the EMA starts equal
    assert not any(p.requires_grad for p in module.ema.parameters()) and module.ema.teacher is None
    compiled = []  # which modules configure_model hands to torch.compile (through Module.compile)
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *args, **kwargs: compiled.append(self))
    module.configure_model()
    tok = module.tokenizer
    assert [id(m) for m in compiled] == [id(tok.student), id(tok.decoder.gtb), id(tok.decoder.head)]
    optimizer = module.configure_optimizers()["optimizer"]
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["encoder"]["initial_lr"] == module.cfg.optim.encoder_lr
    assert groups["decoder"]["initial_lr"] == module.cfg.optim.lr
    assert groups["encoder_no_decay"]["weight_decay"] == 0.0 and groups["decoder"]["weight_decay"] == 0.1
    in_groups = {id(p) for g in optimizer.param_groups for p in g["params"]}
    trainable = {id(p) for p in module.tokenizer.parameters() if p.requires_grad}
    assert in_groups == trainable
    assert not module.train().ema.training  # the average is only ever evaluated


@pytest.mark.parametrize("merge", [False, True])
def test_reconstruct_with_fixed_noise_is_reproducible_with_and_without_token_merge(tiny_config_path, merge):
    from uniflow import UniFlowTokenizer

    tok = UniFlowTokenizer.from_config(
        tiny_config_path, [*TINY_TOKENIZER, f"tokenizer.decoder.token_merge={merge}"], for_training=False
    )
    images = torch.rand(2, 3, 32, 32)
    a = tok.reconstruct(images, 2, generator=torch.Generator().manual_seed(0))
    b = tok.reconstruct(images, 2, generator=torch.Generator().manual_seed(0))
    assert a.shape == images.shape and torch.equal(a, b)


def test_step_stream_resumes_an_ffcv_loader_in_the_same_order(tmp_path, requires_ffcv):
    from PIL import Image

    from uniflow.data.ffcv import FFCVLoader, write_ffcv

    for i in range(12):  # one image per class, so the labels spell out the visiting order
        (tmp_path / "tree" / f"c{i:02d}").mkdir(parents=True)
        Image.new("RGB", (40, 40), (20 * i, 0, 0)).save(tmp_path / "tree" / f"c{i:02d}" / "a.png")
    path = write_ffcv(
        tmp_path / "tree", tmp_path / "d.beton", max_side=40, jpeg_quality=90, num_workers=1
    ).path

    def labels(start: int, count: int) -> list[list[int]]:
        loader = FFCVLoader(path, image_size=32, batch_size=4, train=True, num_workers=1, seed=5)
        return [b["label"].tolist() for _, b in zip(range(count), StepStream(loader, start=start))]

    full = labels(0, 9)  # 3 batches per epoch: epochs 0, 1, 2
    assert labels(4, 5) == full[4:]
    assert full[:3] != full[3:6]


@pytest.mark.parametrize("scaler", [False, True])
def test_an_infinite_gradient_norm_stops_the_run_unless_a_grad_scaler_handles_it(
    micro_run, scaler, monkeypatch
):
    import lightning as L

    from uniflow.config import load_config
    from uniflow.training.finite import NonFiniteLossError
    from uniflow.training.tokenizer_module import TokenizerModule

    path, overrides = micro_run
    module = TokenizerModule(load_config(path, overrides))
    trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", logger=False, enable_checkpointing=False)
    # Lightning builds a GradScaler only for 16-mixed on CUDA; set one by hand here.
    trainer.precision_plugin.scaler = torch.amp.GradScaler("cpu") if scaler else None
    module.trainer = trainer
    monkeypatch.setattr(module, "log", lambda *args, **kwargs: None)
    weight = module.tokenizer.decoder.head.input.weight
    weight.grad = torch.full_like(weight, float("inf"))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    if scaler:
        module.configure_gradient_clipping(optimizer, 1.0)
    else:
        with pytest.raises(NonFiniteLossError, match="gradient norm"):
            module.configure_gradient_clipping(optimizer, 1.0)


@pytest.mark.parametrize(("normalization", "expected"), [("paper", 1.0), ("figure", 0.75)])
def test_the_sum_of_the_distillation_weights_is_logged(micro_run, monkeypatch, normalization, expected):
    """The figure's normalisation (w^base * softmax) sums to (L + 1) / 2L at alpha = 0, not 1: it
    scales lambda_d, and the log must show it."""
    import lightning as L

    from uniflow.training.tokenizer_module import TokenizerModule

    path, overrides = micro_run  # a 2-block encoder: (2 + 1) / 4 = 0.75
    module = TokenizerModule(
        load_config(path, [*overrides, f"tokenizer.distill.normalization={normalization}"])
    )
    module.trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    logged = {}
    monkeypatch.setattr(module, "log", lambda name, value, **kwargs: logged.__setitem__(name, value))
    module.training_step({"image": torch.rand(2, 3, 32, 32)}, 0)
    assert logged["weight/sum"].item() == pytest.approx(expected, abs=1e-4)
    torch.testing.assert_close(logged["weight/sum"], logged["weight/layer01"] + logged["weight/layer02"])


def test_encoder_pretraining_loss_adds_each_attribute_term_and_trains_every_head(monkeypatch):
    import lightning as L
    import torch.nn.functional as F

    from uniflow.data.embedded import ATTRIBUTES

    cfg = load_config(
        None,
        [*TINY_TOKENIZER, "pretrain.attributes=[colour,count,shapes]", "pretrain.attribute_weight=0.5"],
    )
    from uniflow.training.pretrain import EncoderPretrainModule

    torch.manual_seed(0)
    module = EncoderPretrainModule(cfg.tokenizer.encoder, cfg.pretrain, cfg.pretrain.optim, 10, 4)
    module.trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    logged = {}
    monkeypatch.setattr(module, "log", lambda name, value, **kwargs: logged.__setitem__(name, value))
    images = torch.rand(3, 3, 32, 32)
    attributes = {
        "colour": torch.tensor([0, 7, 3]),
        "count": torch.tensor([0, 3, 1]),
        "shapes": torch.tensor([[1.0, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 1], [1, 0, 0, 1, 0, 0]]),
    }
    batch = {"image": images, "label": torch.tensor([0, 1, 3]), "attributes": attributes}
    loss = module.training_step(batch, 0)

    logits, heads = module._logits(images)
    classifier = module.model((images - module.mean) / module.std).float()
    assert torch.allclose(logits, classifier, atol=1e-5)  # one pass, the classifier's own
    expected = F.cross_entropy(logits, batch["label"]) + 0.5 * (
        F.cross_entropy(heads["colour"], attributes["colour"])
        + F.cross_entropy(heads["count"], attributes["count"])
        + F.binary_cross_entropy_with_logits(heads["shapes"], attributes["shapes"])
    )
    assert torch.allclose(loss, expected, atol=1e-5)
    assert {"train/colour_accuracy", "train/count_accuracy", "train/shapes_accuracy"} <= set(logged)
    loss.backward()
    for name, head in module.attribute_heads.items():
        assert head.out_features == ATTRIBUTES[name] and head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="no scene attributes"):
        module.training_step({"image": images, "label": batch["label"]}, 0)


def test_a_changed_pretrain_recipe_is_not_silently_served_an_old_encoder(micro_run, capsys):
    """An existing export of the pretrain run is reused only while the recipe that made it still holds."""
    from uniflow.config import to_yaml
    from uniflow.run_dir import RunDirectory
    from uniflow.training.pretrain import recipe_changes, upstream_config

    path, overrides = micro_run
    cfg = load_config(path, [*overrides, "pretrain.enabled=true"])
    run_dir = RunDirectory.of(cfg.output_dir, cfg.pretrain.name)
    run_dir.config.parent.mkdir(parents=True)
    run_dir.config.write_text(to_yaml(upstream_config(cfg)))
    run_dir.export("encoder.safetensors").write_bytes(b"")  # never read: the check comes first
    assert recipe_changes(cfg) == []
    changed = load_config(path, [*overrides, "pretrain.enabled=true", "pretrain.attributes=[colour]"])
    assert recipe_changes(changed) == ["pretrain.attributes"]
    code = train_main([str(path), *overrides, "pretrain.enabled=true", "pretrain.attributes=[colour]"])
    err = capsys.readouterr().err
    assert code == 2 and "pretrain.attributes" in err and str(run_dir.root) in err
