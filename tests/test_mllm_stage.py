"""The MLLM stage end to end on tiny parts (a tiny tokenizer export, a tiny random Llama with SmolLM2's
real tokenizer): the embedded visual questions in LLaVA's formats, LLaVA data the project did not make,
both phases, export, reload, scoring, and the 7B configuration's FSDP2 layout on the meta device."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from mllm_fakes import MLLM_YAML, mllm_overrides, save_tiny_lm
from PIL import Image

from uniflow.config import load_config
from uniflow.data.embedded import SHAPES
from uniflow.data.embedded_vqa import CATEGORIES, embedded_questions, write_llava_files
from uniflow.data.vqa_formats import read_llava_answers, read_llava_questions, read_llava_training_json
from uniflow.understanding.mllm.answering import score_answers

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A tiny tokenizer run directory and a tiny random Llama directory."""
    from evaluation_fakes import save_tiny_tokenizer

    root = tmp_path_factory.mktemp("mllm_parts")
    save_tiny_tokenizer(root / "tok_run" / "tokenizer")
    save_tiny_lm(root / "lm")
    return root


def train(parts: Path, tmp_path: Path, config: Path, *extra: str) -> dict:
    from uniflow.training.cli import check_config, run

    cfg = load_config(config, mllm_overrides(parts / "tok_run", parts / "lm", tmp_path / "runs", *extra))
    check_config(cfg)
    return run(cfg)


# ---------------------------------------------------------------------------------------- data
def test_embedded_questions_are_deterministic_balanced_and_answered_by_the_scene():
    seen = Counter()
    for index in range(40):
        scene, questions = embedded_questions(0, "train", index, 64)
        again = embedded_questions(0, "train", index, 64)[1]
        assert questions == again
        by = {q.category: q for q in questions}
        assert by["shape"].answer == SHAPES[scene.label]
        assert by["colour"].answer == scene.objects[0].colour
        assert by["count"].answer == str(len(scene.objects))
        yes_no = [q.answer for q in questions if q.category == "yes/no"]
        assert sorted(yes_no) == ["no", "yes"]  # one present pair, one absent pair per scene
        seen.update(q.category for q in questions)
    assert set(seen) == set(CATEGORIES)
    # The held-out split is other scenes.
    assert (
        embedded_questions(0, "val", 0, 64)[0].image.tobytes()
        != embedded_questions(0, "train", 0, 64)[0].image.tobytes()
    )


def test_embedded_questions_are_written_in_llava_formats(tmp_path):
    root = write_llava_files(tmp_path / "vqa", num_train=3, num_test=2, size=32)
    train = read_llava_training_json(root / "train.json")
    assert len(train) == 3 and all((root / "images" / s.image).is_file() for s in train)
    first = train[0].conversations
    assert first[0].value.startswith("<image>\n") and sum("<image>" in t.value for t in first) == 1
    assert [t.role for t in first[:2]] == ["human", "gpt"]
    questions = read_llava_questions(root / "questions.jsonl")
    answers = read_llava_answers(root / "answers.jsonl")
    assert {q.question_id for q in questions} == set(answers) and all(
        q.category in CATEGORIES for q in questions
    )
    assert all(q.image.startswith("val/") for q in questions)
    before = (root / "train.json").stat().st_mtime_ns
    write_llava_files(root, num_train=3, num_test=2, size=32)  # complete: reused, not rewritten
    assert (root / "train.json").stat().st_mtime_ns == before
    # Single turns: every question of every scene once, each its own conversation with the image, and
    # the same held-out questions (another training rule rewrites the directory).
    held_out = (root / "questions.jsonl").read_text()
    write_llava_files(root, num_train=3, num_test=2, size=32, train_turns="single")
    single = read_llava_training_json(root / "train.json")
    expected = [(q.question, q.answer) for i in range(3) for q in embedded_questions(0, "train", i, 32)[1]]
    assert [
        (s.conversations[0].value.removeprefix("<image>\n"), s.conversations[1].value) for s in single
    ] == expected
    assert all(len(s.conversations) == 2 and s.conversations[0].value.startswith("<image>\n") for s in single)
    assert {s.image for s in single} == {s.image for s in train}
    assert (root / "questions.jsonl").read_text() == held_out
    with pytest.raises(ValueError, match="train_turns"):
        write_llava_files(root, num_train=3, num_test=2, size=32, train_turns="double")
    # Every shape type asked in training: yes exactly for the shapes in the scene; held-out unchanged.
    write_llava_files(root, num_train=3, num_test=2, size=32, train_turns="single", train_existence="every")
    every = read_llava_training_json(root / "train.json")
    for index in range(3):
        scene = embedded_questions(0, "train", index, 32)[0]
        present = {SHAPES[o.shape] for o in scene.objects}
        asked = {
            s.conversations[0].value.split("Is there a ")[1].split(" in")[0]: s.conversations[1].value
            for s in every
            if s.image == f"train/{index:06d}.png" and "Is there a" in s.conversations[0].value
        }
        assert asked == {shape: "yes" if shape in present else "no" for shape in SHAPES}
    assert (root / "questions.jsonl").read_text() == held_out
    # Two absent shapes: the pair's questions, then one more "no" about another absent shape.
    for index in range(20):
        scene, pair = embedded_questions(0, "train", index, 32)
        _, two = embedded_questions(0, "train", index, 32, existence="two_absent")
        assert two[: len(pair)] == pair and two[-1].answer == "no"
        asked = [q.question for q in two if q.category == "yes/no"]
        assert len(set(asked)) == 3 and SHAPES.index(two[-1].question.split()[3]) not in {
            o.shape for o in scene.objects
        }
    with pytest.raises(ValueError, match="train_existence"):
        write_llava_files(root, num_train=3, num_test=2, size=32, train_existence="some")


def test_scores_route_yes_no_to_pope_and_open_answers_to_exact_match():
    predictions = ["Yes.", "No, there is not.", "yes", "Circle.", "red", "3"]
    answers = ["yes", "no", "no", "circle", "blue", "3"]
    categories = ["yes/no", "yes/no", "yes/no", "shape", "colour", "count"]
    scores = score_answers(predictions, answers, categories, "auto")
    assert scores["yes/no"]["n"] == 3 and scores["yes/no"]["accuracy"] == pytest.approx(2 / 3)
    assert scores["open"]["n"] == 3 and scores["open"]["accuracy"] == pytest.approx(
        2 / 3
    )  # "Circle." matches
    assert scores["open"]["majority_baseline"] == 1.0  # one question per category: its answer is the majority
    assert "open" not in score_answers(predictions[:3], answers[:3], categories[:3], "pope")
    with pytest.raises(ValueError, match="POPE label 3 must be 'yes' or 'no'"):
        score_answers(predictions, answers, categories, "pope")
    assert "yes/no" not in score_answers(predictions, answers, categories, "gqa")


# ---------------------------------------------------------------------------------------- stage
def test_embedded_probe_trains_exports_reloads_and_scores(parts, tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("UNIFLOW_CACHE", str(tmp_path / "cache"))
    metrics = train(parts, tmp_path, MLLM_YAML, "name=probe", "mllm.compare_teacher=false")
    run_dir = tmp_path / "runs" / "probe"
    export = run_dir / "mllm"
    assert {p.name for p in export.iterdir()} == {
        "config.json",
        "connector.safetensors",
        "language_model.safetensors",
    }
    info = json.loads((export / "config.json").read_text())
    assert info["settings"]["trainable"] == "lora" and info["vision_model_hash"]
    vqa = metrics["vqa"]
    assert vqa["yes/no"]["parser"] == "llava" and vqa["yes/no"]["n"] == 4  # 2 scenes x (yes, no)
    assert 0.0 <= vqa["open"]["accuracy"] <= 1.0 and vqa["open"]["majority_baseline"] > 0
    answers = [json.loads(line) for line in (run_dir / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == vqa["n"] and {"question_id", "prompt", "text", "model_id"} <= set(answers[0])
    # Checkpoints hold the trainable tensors only.
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert state and all(".lora_" in k or k.startswith("probe.connector.") for k in state)
    # The shared gradient clipping ran: its norm (checked for NaN/inf every step) is logged.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = EventAccumulator(str(run_dir / "tensorboard")).Reload().Tags()["scalars"]
    assert {"train/loss", "train/grad_norm"} <= set(scalars)


@pytest.mark.slow
def test_student_and_teacher_probes_side_by_side(parts, tmp_path, monkeypatch, one_thread, capsys):
    monkeypatch.setenv("UNIFLOW_CACHE", str(tmp_path / "cache"))
    metrics = train(parts, tmp_path, MLLM_YAML, "name=probe")
    assert metrics["teacher"]["vqa"]["vision_model_hash"] != metrics["vqa"]["vision_model_hash"]
    assert (tmp_path / "runs" / "probe_teacher" / "mllm" / "connector.safetensors").is_file()
    printed = capsys.readouterr().out
    assert "teacher " in printed and "student - teacher (points)" in printed and "CPU time" in printed
    # The suite row reads both runs (no retraining): student and teacher values side by side.
    from uniflow.evaluation import run_suite
    from uniflow.evaluation.config import EvalConfig

    cfg = EvalConfig(
        benchmarks=["embedded_vqa"],
        num_samples={"embedded_vqa": 2},
        mllm=str(tmp_path / "runs" / "probe"),
        batch_size=4,
        device="cpu",
    )
    result = run_suite(cfg, parts / "tok_run" / "tokenizer", tmp_path / "eval", run_name="t")
    row = result.get("embedded_vqa").metrics
    assert all(row[m].value is not None for m in ("yes/no accuracy", "teacher yes/no accuracy"))
    assert row["yes/no accuracy"].provenance["vision_model_hash"] == metrics["vqa"]["vision_model_hash"]


def _llava_folder(root: Path) -> Path:
    """LLaVA data as a user has it: non-square JPEGs in nested folders, a training json (multi-turn,
    one text-only sample), a question jsonl with GQA-style suffixes and an answer key."""
    rng = np.random.default_rng(0)
    for name, size in (("coco/train2017/000001.jpg", (48, 32)), ("gqa/images/n2.jpg", (20, 40))):
        path = root / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    train = [
        {"id": "000001", "image": "coco/train2017/000001.jpg", "conversations": [
            {"from": "human", "value": "What is in the picture?\n<image>"},
            {"from": "gpt", "value": "A bus."},
            {"from": "human", "value": "Is it red?"},
            {"from": "gpt", "value": "Yes"}]},
        {"id": "n2", "image": "gqa/images/n2.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhich side is the cup on?\nAnswer the question using a single word or phrase."},
            {"from": "gpt", "value": "left"}]},
        {"id": "text-only", "conversations": [
            {"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi."}]},
    ]  # fmt: skip
    (root / "mix.json").write_text(json.dumps(train))
    suffix = "\nAnswer the question using a single word or phrase."
    questions = [
        {"question_id": "q1", "image": "gqa/images/n2.jpg", "text": "Which side is the cup on?" + suffix},
        {
            "question_id": "q2",
            "image": "coco/train2017/000001.jpg",
            "text": "Is there a bus in the image?" + suffix,
        },
    ]
    (root / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    key = [{"question_id": "q1", "text": "left"}, {"question_id": "q2", "text": "yes"}]
    (root / "answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in key))
    pope = [{"question_id": 7, "image": "gqa/images/n2.jpg", "text": "Is there a cup in the image?" + suffix,
             "category": "adversarial"}, {**questions[1], "question_id": 8, "category": "random"}]  # fmt: skip
    (root / "pope_questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in pope))
    labels = [{"question_id": 7, "text": "no"}, {"question_id": 8, "text": "yes"}]
    (root / "pope_answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in labels))
    captions = [
        {"id": "c1", "image": "coco/train2017/000001.jpg", "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image briefly."},
            {"from": "gpt", "value": "a red bus on a street"}]},
    ]  # fmt: skip
    (root / "captions.json").write_text(json.dumps(captions))
    return root


def test_llava_format_path_trains_both_phases_and_scores_with_gqa_and_pope(parts, tmp_path, one_thread):
    """The documented commands (docs/understanding.md), on LLaVA files the project did not make."""
    data = _llava_folder(tmp_path / "llava")
    stage1 = MLLM_YAML.parent / "vicuna7b_stage1.yaml"
    stage2 = MLLM_YAML.parent / "vicuna7b_stage2.yaml"
    tiny = ["trainer.strategy=auto", "trainer.devices=1", "data.batch_size=1", "mllm.language_model.template=chat",
            "mllm.language_model.add_prefix_space=null", "mllm.language_model.activation_checkpointing=false"]  # fmt: skip
    train(parts, tmp_path, stage1, "name=s1", *tiny, f"mllm.train_json={data / 'captions.json'}",
          f"mllm.image_folder={data / 'images'}")  # fmt: skip
    assert (tmp_path / "runs" / "s1" / "mllm" / "connector.safetensors").is_file()
    assert not (tmp_path / "runs" / "s1" / "mllm" / "language_model.safetensors").exists()  # LM frozen
    common = [*tiny, f"mllm.train_json={data / 'mix.json'}", f"mllm.image_folder={data / 'images'}",
              f"mllm.connector={tmp_path / 'runs' / 's1'}", "mllm.answer.max_new_tokens=2"]  # fmt: skip
    gqa = train(parts, tmp_path, stage2, "name=s2", *common, "mllm.answer.scorer=gqa",
                f"mllm.answer.questions={data / 'questions.jsonl'}", f"mllm.answer.answers={data / 'answers.jsonl'}")["vqa"]  # fmt: skip
    assert gqa["open"]["n"] == 2 and gqa["open"]["parser"] == "llava" and "yes/no" not in gqa
    assert gqa["prompt_suffix"] == ""  # the question file carries LLaVA's suffix itself
    pope = train(parts, tmp_path, stage2, "name=s2", *common, "mllm.answer.scorer=pope", "resume=auto",
                 f"mllm.answer.questions={data / 'pope_questions.jsonl'}",
                 f"mllm.answer.answers={data / 'pope_answers.jsonl'}")["vqa"]  # fmt: skip
    assert pope["yes/no"]["n"] == 2 and "open" not in pope
    info = json.loads((tmp_path / "runs" / "s2" / "mllm" / "config.json").read_text())
    assert info["settings"]["trainable"] == "full" and info["mllm"]["phase"] == "instruct"


def test_a_missing_tokenizer_run_is_a_config_error(tmp_path):
    from uniflow.config import ConfigError
    from uniflow.training.cli import check_config

    cfg = load_config(MLLM_YAML, [f"mllm.tokenizer={tmp_path / 'absent'}"])
    with pytest.raises(ConfigError, match=r"mllm.tokenizer.*make train-tokenizer"):
        check_config(cfg)


# ---------------------------------------------------------------------------------------- 7B
def test_vicuna7b_config_builds_on_meta_and_shards_with_fsdp2(tmp_path):
    """A 7B-shaped Llama (Vicuna-7B's config) under the MLLM probe, built on the meta device and wrapped
    with FSDP2 as the stage does, without allocating its weights."""
    import torch.distributed as dist
    from mllm_fakes import smollm2_tokenizer
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule
    from transformers import LlamaConfig, LlamaForCausalLM

    from uniflow.understanding.mllm.build import build_probe
    from uniflow.understanding.mllm.module import decoder_layers, shard_probe

    cfg = load_config(MLLM_YAML.parent / "vicuna7b_stage2.yaml")
    assert cfg.trainer.strategy == "fsdp" and cfg.mllm.language_model.activation_checkpointing
    vicuna = LlamaConfig(  # lmsys/vicuna-7b-v1.5's config.json
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5,
    )  # fmt: skip
    with torch.device("meta"):
        lm = LlamaForCausalLM(vicuna)
        probe = build_probe(cfg.mllm, lm, smollm2_tokenizer(), None, vision_dim=1152)
    assert 6.7e9 < sum(p.numel() for p in probe.parameters()) < 6.8e9
    assert all(p.is_meta for p in probe.parameters())
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        shard_probe(probe, init_device_mesh("cpu", (1,)))
    finally:
        dist.destroy_process_group()
    assert isinstance(probe, FSDPModule) and isinstance(probe.causal_lm, FSDPModule)
    assert all(isinstance(layer, FSDPModule) for layer in decoder_layers(probe.causal_lm))
    assert all(p.is_meta for p in probe.parameters())  # nothing was allocated
    assert probe.causal_lm.is_gradient_checkpointing
