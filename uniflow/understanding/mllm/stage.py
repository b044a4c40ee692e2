"""The ``mllm`` stage: LLaVA-1.5's two phases of the MLLM probe on a tokenizer run's tokens.

``mllm.phase: pretrain`` (stage 1) trains the connector on captions with the ``plain`` template;
``mllm.phase: instruct`` (stage 2) trains the connector and the LM (``full``) or LoRA adapters on
instruction data with the conversation template, optionally starting from a stage-1 connector
(``mllm.connector``). Data is a LLaVA training json plus an image folder; without one the embedded
visual questions (``uniflow/data/embedded_vqa.py``) are written in that format and used.

At the end the export is rebuilt from disk and answers the question file of ``mllm.answer`` (the
embedded held-out split by default), scored with the official parsers (yes/no: POPE's rule; open:
exact match after GQA's normalisation). With ``mllm.compare_teacher`` the same probe is first trained
on the teacher's tokens (run ``<name>_teacher``) and the two are printed side by side.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import lightning as L

from uniflow.config import ConfigError
from uniflow.run_dir import RunDirectory
from uniflow.stages import Stage
from uniflow.understanding.mllm.config import MLLMConfig
from uniflow.understanding.mllm.module import EXPORT_NAME, MLLMModule

ANSWER_FILE = "answers.jsonl"
TEACHER_SUFFIX = "_teacher"


def _background(cfg: Any) -> tuple[float, ...]:
    """LLaVA pads images to squares with the vision encoder's normalisation mean (the architecture is
    built on the meta device: only its preprocessing is read)."""
    import torch

    from uniflow.encoders import build_encoder
    from uniflow.tokenizer.config import load_tokenizer_config
    from uniflow.tokenizer.model import CONFIG_FILE
    from uniflow.understanding.mllm.build import tokenizer_export

    encoder = load_tokenizer_config(tokenizer_export(cfg.mllm.tokenizer) / CONFIG_FILE).encoder
    with torch.device("meta"):
        adapter = build_encoder(dataclasses.replace(encoder, pretrained=False, checkpoint=None))
    return tuple(adapter.mean)


def _data(cfg: Any) -> L.LightningDataModule:
    from uniflow.tokenizer.config import load_tokenizer_config
    from uniflow.tokenizer.model import CONFIG_FILE
    from uniflow.understanding.mllm.build import load_lm_tokenizer, template_for, tokenizer_export
    from uniflow.understanding.mllm.data import MLLMDataModule

    m: MLLMConfig = cfg.mllm
    tokenizer = load_lm_tokenizer(m.language_model)
    image_size = load_tokenizer_config(tokenizer_export(m.tokenizer) / CONFIG_FILE).image_size
    assert m.train_json is not None  # _prepare fills it
    return MLLMDataModule(
        m.train_json,
        m.image_folder,
        tokenizer,
        template_for(m, tokenizer),
        image_size,
        _background(cfg),
        cfg.data.batch_size,
        cfg.data.num_workers,
        cfg.seed,
        m.pack_by_image,
    )


def _export(module: MLLMModule, trainer: L.Trainer, path: Path) -> dict[str, Any]:
    state = module.export_state()  # a collective under FSDP2: every rank calls it
    if trainer.is_global_zero:
        module.export(path, state)
    return {"trainable_tensors": len(state), "trainable_parameters": sum(v.numel() for v in state.values())}


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the machine may be shared,
    so wall time alone says little)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _summary(cfg: Any, directory: RunDirectory) -> dict[str, Any]:
    from uniflow.understanding.mllm.answering import answer_and_score
    from uniflow.understanding.mllm.build import template_for
    from uniflow.understanding.mllm.module import load_exported_probe

    a = cfg.mllm.answer
    result: dict[str, Any] = {"cpu_time_s": _cpu_seconds(), "load_average": list(os.getloadavg())}
    if a.questions is None:
        return result
    start = time.perf_counter()
    probe, info = load_exported_probe(directory.export(EXPORT_NAME))
    vqa = answer_and_score(
        probe,
        template_for(cfg.mllm, probe.tokenizer),
        a.questions,
        a.answers,
        a.image_folder or cfg.mllm.image_folder,
        info["image_size"],
        _background(cfg),
        scorer=a.scorer,
        prompt_suffix=a.prompt_suffix,
        batch_size=a.batch_size,
        max_new_tokens=a.max_new_tokens,
        limit=a.limit,
        output=directory.root / ANSWER_FILE,
        model_id=cfg.name,
    )
    vqa["vision"] = info["vision_description"]
    vqa["vision_model_hash"] = info["vision_model_hash"]
    vqa["answer_s"] = time.perf_counter() - start
    result["vqa"] = vqa
    result["cpu_time_s"] = _cpu_seconds()
    return result


def _line(name: str, vqa: dict[str, Any]) -> str:
    parts = [f"{name:<8}"]
    if "yes/no" in vqa:
        y = vqa["yes/no"]
        parts.append(
            f"yes/no acc {100 * y['accuracy']:5.1f}% (F1 {100 * y['f1']:.1f}, yes-ratio {y['yes_ratio']:.2f}, n={y['n']})"
        )
    if "open" in vqa:
        o = vqa["open"]
        cats = ", ".join(f"{c} {100 * v['accuracy']:.0f}%" for c, v in o["per_category"].items())
        parts.append(
            f"open exact match {100 * o['accuracy']:5.1f}% vs majority {100 * o['majority_baseline']:.1f}% "
            f"(n={o['n']}; {cats})"
        )
    return "  ".join(parts)


def _format(metrics: dict[str, Any]) -> str:
    if "vqa" not in metrics:
        return ""
    lines = [
        "MLLM probe, held-out questions (yes/no: POPE's parser; open: exact match after GQA's normalisation)"
    ]
    teacher = metrics.get("teacher", {}).get("vqa")
    if teacher is not None:
        lines.append(_line("teacher", teacher))
    lines.append(_line(metrics["vqa_vision"], metrics["vqa"]))
    if teacher is not None:
        gaps = []
        for part in ("yes/no", "open"):
            if part in teacher and part in metrics["vqa"]:
                gaps.append(
                    f"{part} {100 * (metrics['vqa'][part]['accuracy'] - teacher[part]['accuracy']):+.1f}"
                )
        lines.append("student - teacher (points): " + ", ".join(gaps))
    cpu = metrics.get("cpu_time_s")
    if cpu is not None:
        load = ", ".join(f"{x:.2f}" for x in metrics.get("load_average", []))
        lines.append(f"CPU time (user + system, this process): {cpu:.0f} s; load average at the end: {load}")
    return "\n".join(lines)


def _embedded_files(cfg: Any) -> Any:
    """Write the embedded visual questions (once, under $UNIFLOW_CACHE) and point the config at them."""
    from uniflow.data.embedded_vqa import (
        ANSWERS_FILE,
        IMAGE_DIR,
        QUESTIONS_FILE,
        TRAIN_JSON,
        write_llava_files,
    )
    from uniflow.metrics.inception import cache_dir
    from uniflow.tokenizer.config import load_tokenizer_config
    from uniflow.tokenizer.model import CONFIG_FILE
    from uniflow.understanding.mllm.build import tokenizer_export

    m: MLLMConfig = cfg.mllm
    e = m.embedded
    size = load_tokenizer_config(tokenizer_export(m.tokenizer) / CONFIG_FILE).image_size
    name = f"train{e.num_train}-test{e.num_test}-{size}px-seed{e.seed}"
    if e.train_turns != "multi":
        name += f"-{e.train_turns}-turn"
    if e.train_existence != "pair":
        name += f"-{e.train_existence}-existence"
    root = cache_dir() / "embedded_vqa" / name
    write_llava_files(root, e.num_train, e.num_test, size, e.seed, e.train_turns, e.train_existence)
    answer = m.answer
    if answer.questions is None:
        answer = dataclasses.replace(
            answer, questions=str(root / QUESTIONS_FILE), answers=str(root / ANSWERS_FILE)
        )
    m = dataclasses.replace(
        m, train_json=str(root / TRAIN_JSON), image_folder=str(root / IMAGE_DIR), answer=answer
    )
    return dataclasses.replace(cfg, mllm=m)


def _prepare(cfg: Any, metrics: dict[str, Any]) -> Any:
    from uniflow.training.run import run_stage, timed

    if cfg.mllm.train_json is None:
        cfg, metrics["timing_s"]["embedded_vqa"] = timed(_embedded_files, cfg)
    metrics["vqa_vision"] = cfg.mllm.vision
    if cfg.mllm.compare_teacher:
        teacher = dataclasses.replace(
            cfg,
            name=cfg.name + TEACHER_SUFFIX,
            mllm=dataclasses.replace(cfg.mllm, vision="teacher", compare_teacher=False),
        )
        start = time.perf_counter()
        result = run_stage(STAGE, teacher)
        if result.is_global_zero:
            summary = _summary(teacher, result.directory)
            metrics["teacher"] = {
                **result.metrics,
                "steps": result.steps,
                **summary,
                "run": str(result.directory.root),
            }
        metrics["timing_s"]["teacher"] = time.perf_counter() - start
    return cfg


def _check(cfg: Any) -> None:
    from uniflow.understanding.mllm.build import tokenizer_export

    m: MLLMConfig = cfg.mllm
    try:
        tokenizer_export(m.tokenizer)
    except FileNotFoundError as error:
        raise ConfigError(
            f"config key 'mllm.tokenizer': {error} (train one first, e.g. `make train-tokenizer`)"
        ) from None
    if m.compare_teacher and m.vision != "student":
        raise ConfigError(
            "config key 'mllm.compare_teacher' needs mllm.vision=student (it trains the teacher's beside it)"
        )
    for key, value in (("mllm.train_json", m.train_json), ("mllm.connector", m.connector)):
        if value is not None and not Path(value).exists():
            raise ConfigError(f"config key '{key}': not found: {value}")
    if m.train_json is None and m.phase == "pretrain":
        raise ConfigError(
            "config key 'mllm.train_json' must name caption data (LLaVA-Pretrain json) for phase=pretrain"
        )
    a = m.answer
    if (a.questions is None) != (a.answers is None):
        raise ConfigError("config keys 'mllm.answer.questions' and 'mllm.answer.answers' go together")
    if m.language_model.path is not None and not Path(m.language_model.path).expanduser().is_dir():
        raise ConfigError(
            f"config key 'mllm.language_model.path': directory not found: {m.language_model.path}"
        )


STAGE = Stage(
    name="mllm",
    description="MLLM probe (LLaVA-1.5: connector + causal LM) on a tokenizer run's vision tokens",
    sections={"mllm": MLLMConfig},
    module=lambda cfg: MLLMModule(cfg),
    data=_data,
    export_name=EXPORT_NAME,
    export=_export,
    summary=_summary,
    format_summary=_format,
    prepare=_prepare,
    check=_check,
)
