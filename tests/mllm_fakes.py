"""Tiny stand-ins for the MLLM tests: a tiny random Llama with SmolLM2's real tokenizer, an untrained MLLM
export for a tiny tokenizer, and the understanding benchmarks' files in their real layouts (LLaVA-1.5's
evaluation folders, a VLMEvalKit TSV), a few questions each."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import ROOT
from PIL import Image

MLLM_YAML = ROOT / "experiments" / "mllm" / "embedded.yaml"


def smollm2_tokenizer() -> Any:
    from uniflow.understanding.mllm import load_smollm2_tokenizer

    try:
        return load_smollm2_tokenizer()
    except FileNotFoundError as error:
        pytest.skip(str(error))


def tiny_llama(tokenizer: Any, **overrides: Any) -> Any:
    """A 2-layer random Llama of width 32 over ``tokenizer``'s vocabulary (``overrides``: LlamaConfig keys)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **overrides,
    )
    return LlamaForCausalLM(config)


def save_tiny_lm(directory: Path) -> Path:
    """:func:`tiny_llama` with SmolLM2's tokenizer, as a local Hugging Face directory."""
    tokenizer = smollm2_tokenizer()
    torch.manual_seed(0)
    tiny_llama(tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def mllm_overrides(tokenizer_run: Path, lm: Path, output_dir: Path, *extra: str) -> list[str]:
    """experiments/mllm/embedded.yaml shrunk to the tiny parts: a few steps on a few scenes."""
    return [
        f"output_dir={output_dir}",
        f"mllm.tokenizer={tokenizer_run}",
        f"mllm.language_model.path={lm}",
        "mllm.embedded.num_train=8",
        "mllm.embedded.num_test=2",
        "mllm.lora.r=4",
        "mllm.lora.alpha=8",
        "mllm.answer.batch_size=4",
        "mllm.answer.max_new_tokens=3",
        "data.batch_size=4",
        "data.num_workers=0",
        "trainer.max_steps=2",
        "trainer.log_every_n_steps=1",
        "trainer.checkpoint_every_n_steps=1",
        "trainer.num_threads=1",
        "trainer.precision=32-true",
        "trainer.accelerator=cpu",
        "optim.warmup_steps=1",
        *extra,
    ]


def save_untrained_mllm(root: Path) -> Path:
    """An MLLM run directory (its ``mllm/`` export, untrained) on the tiny tokenizer of the suite tests."""
    from evaluation_fakes import save_tiny_tokenizer

    from uniflow.config import load_config
    from uniflow.understanding.mllm.module import EXPORT_NAME, MLLMModule

    tokenizer_run = root / "tiny"
    save_tiny_tokenizer(tokenizer_run / "tokenizer")
    lm = save_tiny_lm(root / "lm")
    cfg = load_config(
        MLLM_YAML, mllm_overrides(tokenizer_run, lm, root / "runs", "mllm.compare_teacher=false")
    )
    torch.manual_seed(0)
    module = MLLMModule(cfg)
    run = root / "runs" / "tiny_mllm"
    module.export(run / EXPORT_NAME, module.export_state())
    return run


def _image(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path.name


def _jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


SHORT = "\nAnswer the question using a single word or phrase."


def pope_folder(root: Path) -> Path:
    questions = []
    for k, split in enumerate(("adversarial", "popular", "random")):
        labels = []
        for j, label in enumerate(("yes", "no")):
            qid = 10 * k + j
            image = _image(root / "val2014" / f"COCO_val2014_{qid:012d}.jpg", qid)
            text = f"Is there a {'dog' if j else 'cat'} in the image?" + SHORT
            questions.append({"question_id": qid, "image": image, "text": text, "category": split})
            labels.append({"question_id": qid, "image": image, "text": text, "label": label})
        _jsonl(root / "coco" / f"coco_pope_{split}.json", labels)
    _jsonl(root / "llava_pope_test.jsonl", questions)
    return root


def gqa_folder(root: Path) -> Path:
    answers = {"201": "yes", "202": "left"}
    questions = [
        {
            "question_id": qid,
            "image": _image(root / "data" / "images" / f"n{qid}.jpg", int(qid)),
            "text": "Is it?" + SHORT,
        }
        for qid in answers
    ]
    _jsonl(root / "llava_gqa_testdev_balanced.jsonl", questions)
    key = {qid: {"answer": answer, "question": "Is it?"} for qid, answer in answers.items()}
    (root / "data" / "testdev_balanced_questions.json").write_text(json.dumps(key))
    return root


def textvqa_folder(root: Path) -> Path:
    from uniflow.metrics.vqa import textvqa_prompt

    data = []
    questions = []
    for qid in (34602, 34603):
        image = _image(root / "train_images" / f"{qid:x}.jpg", qid)
        text = textvqa_prompt("what is written?", ["stop", "2"])
        questions.append({"question_id": qid, "image": image, "text": text})
        data.append({"question_id": qid, "image_id": image, "answers": ["stop"] * 7 + ["stop sign"] * 3})
    _jsonl(root / "llava_textvqa_val_v051_ocr.jsonl", questions)
    (root / "TextVQA_0.5.1_val.json").write_text(json.dumps({"dataset_name": "textvqa", "data": data}))
    return root


def mmvet_folder(root: Path) -> Path:
    questions, key = [], {}
    for qid in (0, 1):
        image = _image(root / "images" / f"v1_{qid}.png", qid)
        questions.append({"question_id": qid, "image": image, "text": "What is shown?"})
        key[f"v1_{qid}"] = {
            "imagename": image,
            "capability": ["rec", "ocr"],
            "question": "What is shown?",
            "answer": "a cat<OR>cat",
        }
    _jsonl(root / "llava-mm-vet.jsonl", questions)
    (root / "mm-vet.json").write_text(json.dumps(key))
    return root


def mmbench_folder(root: Path) -> Path:
    from test_vqa_formats import mmbench_tsv

    root.mkdir(parents=True, exist_ok=True)
    mmbench_tsv(root)
    return root


def mme_folder(root: Path) -> Path:
    release = root / "MME_Benchmark_release_version"
    questions = []
    for subtask, image_id in (("existence", 1), ("color", 2)):
        image = f"{subtask}/{image_id:012d}.png"
        _image(release / image, image_id)
        pair = [("Is there a cat in the image? Please answer yes or no.", "Yes"),
                ("Is there a dog in the image? Please answer yes or no.", "No")]  # fmt: skip
        (release / subtask / f"{image_id:012d}.txt").write_text("".join(f"{q}\t{a}\n" for q, a in pair))
        questions += [{"question_id": image, "image": image, "text": q, "category": subtask} for q, _ in pair]
    _jsonl(root / "llava_mme.jsonl", questions)
    return root


_FOLDERS: dict[str, Callable[[Path], Path]] = {
    "pope": pope_folder,
    "gqa": gqa_folder,
    "textvqa": textvqa_folder,
    "mmvet": mmvet_folder,
    "mmbench": mmbench_folder,
    "mme_p": mme_folder,
}
_RUN: dict[str, Path] = {}


def _mllm_run(root: Path) -> Path:
    """One untrained tiny MLLM run per test session (building it loads a tokenizer and an LM)."""
    if "run" not in _RUN or not _RUN["run"].is_dir():
        _RUN["run"] = save_untrained_mllm(root / "mllm_parts")
    return _RUN["run"]


def _paper(name: str) -> Callable[[Path], dict[str, Any]]:
    def fixture(root: Path) -> dict[str, Any]:
        return {"data": {name: str(_FOLDERS[name](root / name))}, "mllm": str(_mllm_run(root))}

    return fixture


def _embedded(root: Path) -> dict[str, Any]:
    return {"num_samples": {"embedded_vqa": 2}, "mllm": str(_mllm_run(root))}


MLLM_FIXTURES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "embedded_vqa": _embedded,
    **{name: _paper(name) for name in _FOLDERS},
}
