"""The MLLM probe's rows: held-out embedded visual questions, and the paper's six understanding benchmarks.

Every row answers with a trained MLLM run (``python -m uniflow train experiments/mllm/...``):
``eval.mllm`` names it, else the newest run under the tokenizer run's output directory whose vision
tokens are the evaluated tokenizer's (same model hash). Nothing is retrained here. The paper rows read
their data in LLaVA-1.5's evaluation layout (``eval.data.<name>``, see ``data=`` below) and score it
with the official rules (``uniflow/metrics/vqa``). Every value records the prompt suffix, the parser,
the judge, the OCR flag and the hashes of the vision tokens and the probe's weights.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from uniflow.config import ConfigError
from uniflow.evaluation import references
from uniflow.evaluation.config import EvalConfig, embedded_count
from uniflow.evaluation.context import EvalContext
from uniflow.evaluation.entry import Benchmark
from uniflow.evaluation.results import BenchmarkRun, MetricValue

EMBEDDED = "embedded_vqa"
EMBEDDED_METRICS = (
    "yes/no accuracy",
    "open exact match",
    "open majority baseline",
    "teacher yes/no accuracy",
    "teacher open exact match",
)
# LLaVA-1.5's answer-format instructions (its question files for GQA, POPE, TextVQA and MME hold them
# already; MMBench's prompt is built here, as model_vqa_mmbench.py builds it).
MMBENCH_SUFFIX = "Answer with the option's letter from the given choices directly."
ANSWER_FILE = "{name}_answers.jsonl"
EXPORT_MARKER = "config.json"


# ---------------------------------------------------------------------------------------- the probe
@dataclass
class LoadedProbe:
    probe: Any
    info: dict[str, Any]
    template: Any
    hashes: dict[str, str]


_LOADED: dict[tuple[str, str], LoadedProbe] = {}


def _file_hashes(directory: Path) -> dict[str, str]:
    return {
        f"{p.stem}_sha256": hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.glob("*.safetensors"))
    }


def _vision_hash(ctx: EvalContext, vision: str) -> str:
    from uniflow.understanding.features import FeatureSource

    if vision == "student":
        return FeatureSource.of_tokenizer(ctx.tokenizer).model_hash()
    return FeatureSource.baseline(ctx.tokenizer_dir).model_hash()


def _candidates(ctx: EvalContext) -> list[dict[str, Any]]:
    """Export configs of the MLLM runs to choose from: ``eval.mllm`` first, then, newest first, the
    runs beside it (or, without it, beside the tokenizer run: ``runs/<tokenizer run>/tokenizer`` ->
    ``runs/*/mllm``), where the teacher's run of ``make train-mllm`` sits too."""
    from uniflow.understanding.mllm.module import read_export_config

    named = [read_export_config(ctx.cfg.mllm)] if ctx.cfg.mllm is not None else []
    root = Path(named[0]["directory"]).parent.parent if named else ctx.tokenizer_dir.parent.parent
    found = sorted(root.glob(f"*/mllm/{EXPORT_MARKER}"), key=lambda p: p.stat().st_mtime, reverse=True)
    return named + [read_export_config(p.parent) for p in found]


def find_probe(ctx: EvalContext, vision: str = "student") -> LoadedProbe | str:
    """The MLLM run answering for the evaluated tokenizer's ``vision`` tokens, or why there is none."""
    from uniflow.understanding.mllm.build import template_for
    from uniflow.understanding.mllm.module import export_mllm_config, load_exported_probe

    wanted = _vision_hash(ctx, vision)
    where = f"{ctx.cfg.mllm} and beside it" if ctx.cfg.mllm else f"{ctx.tokenizer_dir.parent.parent}/*/mllm"
    matching = [
        info
        for info in _candidates(ctx)
        if info["mllm"]["vision"] == vision and info["vision_model_hash"] == wanted
    ]
    if not matching:
        return (
            f"no MLLM run on this tokenizer's {vision} tokens at {where} "
            "(train one: make train-mllm, or name it with eval.mllm)"
        )
    info = matching[0]
    key = (info["directory"], wanted)
    if key not in _LOADED:
        probe, info = load_exported_probe(info["directory"])
        probe.to(ctx.device)
        template = template_for(export_mllm_config(info), probe.tokenizer)
        _LOADED[key] = LoadedProbe(probe, info, template, _file_hashes(Path(info["directory"])))
    return _LOADED[key]


def _provenance(loaded: LoadedProbe, **extra: Any) -> dict[str, Any]:
    return {
        "mllm_run": loaded.info["directory"],
        "vision": loaded.info["vision_description"],
        "vision_model_hash": loaded.info["vision_model_hash"],
        **loaded.hashes,
        "template": loaded.info["settings"]["template"],
        "language_model": loaded.info["settings"]["language_model"],
        "decoding": "greedy, batched with left padding",
        **extra,
    }


def _background(loaded: LoadedProbe) -> tuple[float, ...]:
    return tuple(loaded.probe.vision.encoder.mean)


# ---------------------------------------------------------------------------------------- embedded
def _score_embedded(ctx: EvalContext, loaded: LoadedProbe, root: Path) -> dict[str, Any]:
    from uniflow.data.embedded_vqa import ANSWERS_FILE, IMAGE_DIR, QUESTIONS_FILE
    from uniflow.understanding.mllm.answering import answer_and_score

    return answer_and_score(
        loaded.probe,
        loaded.template,
        root / QUESTIONS_FILE,
        root / ANSWERS_FILE,
        root / IMAGE_DIR,
        loaded.info["image_size"],
        _background(loaded),
        batch_size=ctx.cfg.batch_size,
        output=ctx.output_dir / ANSWER_FILE.format(name=f"{EMBEDDED}_{loaded.info['mllm']['vision']}")
        if ctx.is_main
        else None,
    )


def _run_embedded(ctx: EvalContext) -> BenchmarkRun:
    from uniflow.data.embedded_vqa import write_llava_files
    from uniflow.metrics.inception import cache_dir

    count, seed, size = embedded_count(ctx.cfg, EMBEDDED, minimum=1), ctx.cfg.seed, ctx.tokenizer.image_size
    root = cache_dir() / "embedded_vqa" / f"test{count}-{size}px-seed{seed}"
    metrics: dict[str, MetricValue] = {}
    notes: list[str] = []
    provenance: dict[str, Any] = {
        "samples": count,
        "data": f"held-out embedded scenes (val split) with generated questions, {size} px, seed {seed}",
        "prompt_suffix": "",
        "judge": "none (rule-based parsers)",
        "ocr_tokens_in_prompt": False,
    }
    for vision, prefix in (("student", ""), ("teacher", "teacher ")):
        loaded = find_probe(ctx, vision)
        names = [f"{prefix}yes/no accuracy", f"{prefix}open exact match"]
        if vision != "teacher":
            names.append("open majority baseline")
        if isinstance(loaded, str):
            metrics.update({n: MetricValue(None, loaded) for n in names})
            continue
        scores = _score_embedded(ctx, loaded, write_llava_files(root, 0, count, size, seed))
        yes_no, open_ = scores["yes/no"], scores["open"]
        common = _provenance(
            loaded,
            parser_yes_no=f"POPE ({yes_no['parser']})",
            parser_open=f"GQA exact match ({open_['parser']})",
        )
        metrics[names[0]] = MetricValue(
            100 * yes_no["accuracy"], provenance={**common, "questions": yes_no["n"]}
        )
        metrics[names[1]] = MetricValue(
            100 * open_["accuracy"], provenance={**common, "questions": open_["n"]}
        )
        if vision == "student":
            metrics["open majority baseline"] = MetricValue(
                100 * open_["majority_baseline"], provenance={"definition": open_["baseline"]}
            )
        per = ", ".join(f"{c} {100 * v['accuracy']:.0f}%" for c, v in open_["per_category"].items())
        notes.append(
            f"{EMBEDDED} ({vision} tokens): yes/no F1 {100 * yes_no['f1']:.1f}, yes-ratio {yes_no['yes_ratio']:.2f}; open per category: {per}"
        )
    return BenchmarkRun(metrics, provenance, notes)


# ---------------------------------------------------------------------------------------- paper rows
# A scorer's result: its metric values (or the one value), provenance, and a note for the table.
Scored = tuple[float | dict[str, MetricValue] | None, dict[str, Any], str | None]
Scorer = Callable[[EvalContext, "LoadedProbe", Path], Scored]


@dataclass(frozen=True)
class Question:
    """One prompt to answer: its id, image (a path, or PIL-readable bytes) and text."""

    question_id: Any
    image: Path | bytes
    text: str


def _image(image: Path | bytes, size: int, background: Sequence[float]) -> torch.Tensor:
    from PIL import Image

    from uniflow.understanding.mllm.data import load_square_image, square_image

    if isinstance(image, Path):
        return load_square_image(image, size, background)
    with Image.open(io.BytesIO(image)) as opened:
        return square_image(opened, size, background)


def answer(ctx: EvalContext, loaded: LoadedProbe, questions: Sequence[Question], name: str) -> list[str]:
    """Greedy answers to ``questions``; rank 0 writes them as a LLaVA answer file beside the results."""
    from uniflow.understanding.mllm.conversation import encode_conversation
    from uniflow.understanding.mllm.generate import generate_answers

    size, background = loaded.info["image_size"], _background(loaded)
    answers: list[str] = []
    for start in range(0, len(questions), ctx.cfg.batch_size):
        samples = []
        for q in questions[start : start + ctx.cfg.batch_size]:
            encoded = encode_conversation(
                [{"role": "user", "content": "<image>\n" + q.text}],
                loaded.probe.tokenizer,
                loaded.template,
                str(q.question_id),
                for_generation=True,
            )
            samples.append(
                {
                    "id": q.question_id,
                    "input_ids": encoded.input_ids,
                    "image": _image(q.image, size, background),
                }
            )
        answers += generate_answers(loaded.probe, samples, len(samples), 128, loaded.template.stop_strings)
    if ctx.is_main:
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            json.dumps(
                {"question_id": q.question_id, "prompt": q.text, "text": a, "model_id": "uniflow-mllm"}
            )
            for q, a in zip(questions, answers)
        ]
        (ctx.output_dir / ANSWER_FILE.format(name=name)).write_text("\n".join(lines) + "\n")
    return answers


def _data_dir(cfg: EvalConfig, name: str) -> Path:
    path = cfg.data.get(name)
    if path is None:
        raise ConfigError(
            f"eval.data.{name} must name the benchmark's data folder (see `python -m uniflow eval --list`)"
        )
    if not Path(path).is_dir():
        raise ConfigError(f"eval.data.{name}: folder not found: {path}")
    return Path(path)


def _limit(cfg: EvalConfig, name: str, items: list[Any]) -> list[Any]:
    count = cfg.num_samples.get(name)
    return items[:count] if count else items


def _llava_questions(
    cfg: EvalConfig, name: str, jsonl: Path, images: Path
) -> tuple[list[Any], list[Question]]:
    from uniflow.data.vqa_formats import read_llava_questions

    raw = _limit(cfg, name, read_llava_questions(jsonl))
    return raw, [Question(q.question_id, images / q.image, q.text) for q in raw]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"answer key not found: {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _pope(ctx: EvalContext, loaded: LoadedProbe, root: Path) -> Scored:
    from uniflow.metrics.vqa import POPE_SPLITS, score_pope

    raw, questions = _llava_questions(ctx.cfg, "pope", root / "llava_pope_test.jsonl", root / "val2014")
    labels: dict[Any, str] = {}
    for split in POPE_SPLITS:
        path = root / "coco" / f"coco_pope_{split}.json"
        if path.is_file():
            labels.update({r["question_id"]: r["label"] for r in _jsonl(path)})
    missing = [q.question_id for q in raw if q.question_id not in labels]
    if missing:
        raise ValueError(
            f"POPE: {len(missing)} questions have no label in {root / 'coco'}, e.g. {missing[:3]}"
        )
    predictions = answer(ctx, loaded, questions, "pope")
    result = score_pope(predictions, [labels[q.question_id] for q in raw], [q.category or "" for q in raw])
    note = None if result["complete"] else "not all three POPE splits present: not the published number"
    extra = {"parser": result["parser"], "splits": sorted(result["splits"]), "complete": result["complete"]}
    return result["score"], {**extra, "samples": len(raw)}, note


def _gqa(ctx: EvalContext, loaded: LoadedProbe, root: Path) -> Scored:
    from uniflow.metrics.vqa import score_gqa

    raw, questions = _llava_questions(
        ctx.cfg, "gqa", root / "llava_gqa_testdev_balanced.jsonl", root / "data" / "images"
    )
    key = json.loads((root / "data" / "testdev_balanced_questions.json").read_text())
    predictions = answer(ctx, loaded, questions, "gqa")
    result = score_gqa(predictions, [key[str(q.question_id)]["answer"] for q in raw])
    return result["score"], {"parser": result["parser"], "samples": len(raw)}, None


def _textvqa(ctx: EvalContext, loaded: LoadedProbe, root: Path) -> Scored:
    from uniflow.metrics.vqa import score_textvqa
    from uniflow.metrics.vqa.textvqa import OCR_PREFIX

    raw, questions = _llava_questions(
        ctx.cfg, "textvqa", root / "llava_textvqa_val_v051_ocr.jsonl", root / "train_images"
    )
    data = json.loads((root / "TextVQA_0.5.1_val.json").read_text())["data"]
    key = {str(d["question_id"]): d["answers"] for d in data}
    ocr = any(OCR_PREFIX in q.text for q in raw)
    predictions = answer(ctx, loaded, questions, "textvqa")
    result = score_textvqa(predictions, [key[str(q.question_id)] for q in raw], ocr_tokens_in_prompt=ocr)
    return (
        result["score"],
        {"parser": result["parser"], "ocr_tokens_in_prompt": ocr, "samples": len(raw)},
        None,
    )


def _mme_labels(root: Path, category: str, image: str) -> dict[str, str]:
    stem = Path(image).stem
    for path in (
        root / category / "questions_answers_YN" / f"{stem}.txt",
        root / Path(image).with_suffix(".txt"),
    ):
        if path.is_file():
            lines = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
            return {parts[0].strip(): parts[1].strip() for parts in lines}
    raise FileNotFoundError(f"MME: no answer file for {image} in {root / category}")


def _mme_p(ctx: EvalContext, loaded: LoadedProbe, root: Path) -> Scored:
    from uniflow.metrics.vqa import PERCEPTION_SUBTASKS, score_mme

    images = root / "MME_Benchmark_release_version"
    raw, questions = _llava_questions(ctx.cfg, "mme_p", root / "llava_mme.jsonl", images)
    raw_questions = [(q, qq) for q, qq in zip(raw, questions) if q.category in PERCEPTION_SUBTASKS]
    labels = []
    for q, _ in raw_questions:
        table = _mme_labels(images, q.category or "", q.image)
        if q.text.strip() not in table:
            raise ValueError(f"MME: question {q.question_id!r} ({q.text!r}) is not in its answer file")
        labels.append(table[q.text.strip()])
    predictions = answer(ctx, loaded, [qq for _, qq in raw_questions], "mme_p")
    result = score_mme(
        predictions, labels, [q.category or "" for q, _ in raw_questions], [q.image for q, _ in raw_questions]
    )
    complete = result.get("perception_complete", False)
    note = None if complete else "not all 10 perception subtasks present: not the published MME-P"
    extra = {"parser": "llava (MME yes/no)", "complete": complete, "samples": len(labels)}
    return result["score"], extra, note


def _mmbench(ctx: EvalContext, loaded: LoadedProbe, root: Path) -> Scored:
    from uniflow.data.vqa_formats import read_vlmeval_tsv
    from uniflow.metrics.vqa import score_mmbench

    tsv = sorted(root.glob("*.tsv"))
    if len(tsv) != 1:
        raise FileNotFoundError(f"MMBench: expected one VLMEvalKit .tsv in {root}, found {len(tsv)}")
    rows = _limit(ctx.cfg, "mmbench", read_vlmeval_tsv(tsv[0]))
    questions = []
    for row in rows:
        # LLaVA's model_vqa_mmbench.py: hint, question, then "A. option" lines, then the instruction.
        text = (row.hint + "\n" if row.hint else "") + row.question
        for letter, option in row.options.items():
            text += f"\n{letter}. {option}"
        questions.append(Question(row.index, row.image, text + "\n" + MMBENCH_SUFFIX))
    predictions = answer(ctx, loaded, questions, "mmbench")
    result = score_mmbench(rows, predictions)
    extra = {"parser": "VLMEvalKit can_infer (unresolved: wrong)", "prompt_suffix": MMBENCH_SUFFIX}
    return result["score"], {**extra, "samples": len(rows)}, None


MMVET_PROXY = "rule-based proxy (not MM-Vet)"
PROXY_REFERENCE = references.Reference(
    "UniFlow", MMVET_PROXY, None, "none: an offline stand-in for the GPT-4 grader, not MM-Vet", paper=True
)


def _mmvet(ctx: EvalContext, loaded: LoadedProbe, root: Path) -> Scored:
    """MM-Vet is graded by GPT-4 (mm-vet_evaluator.py); with ``grades.json`` in the data folder (the
    official grader's output for the answer file this row writes) those grades are used. The offline
    rule-based judge is reported beside it under its own name, never as MM-Vet."""
    from uniflow.metrics.vqa import CachedGradesJudge, MMVetSample, RuleBasedJudge, score_mmvet

    raw, questions = _llava_questions(ctx.cfg, "mmvet", root / "llava-mm-vet.jsonl", root / "images")
    key = json.loads((root / "mm-vet.json").read_text())
    predictions = answer(ctx, loaded, questions, "mmvet")
    samples = []
    for q, prediction in zip(raw, predictions):
        # LLaVA's convert_mmvet_for_eval.py keys MM-Vet's "v1_<n>" ids by the number alone.
        entry = key.get(str(q.question_id)) or key[f"v1_{q.question_id}"]
        samples.append(
            MMVetSample(str(q.question_id), q.text, entry["answer"], prediction, tuple(entry["capability"]))
        )
    proxy = score_mmvet(samples, RuleBasedJudge())
    grades = root / "grades.json"
    values: dict[str, MetricValue] = {
        MMVET_PROXY: MetricValue(
            proxy["score"], provenance={"judge": proxy["judge"], "judge_comparable": False}
        )
    }
    if grades.is_file():
        official = score_mmvet(
            samples, CachedGradesJudge(grades, name="GPT-4 grades (cached)", comparable=True)
        )
        failures = official["judge_failures"]
        values["MM-Vet"] = MetricValue(
            official["score"] if not failures else None,
            None if not failures else f"{failures} of {official['n']} answers have no grade in {grades}",
            provenance={"judge": official["judge"], "judge_comparable": True, "judge_failures": failures},
        )
    else:
        values["MM-Vet"] = MetricValue(
            None,
            "needs the official GPT-4 grader (mm-vet_evaluator.py), not available offline: grade "
            f"{ANSWER_FILE.format(name='mmvet')} and put its grades in {grades}",
        )
    return values, {"parser": proxy["parser"], "samples": len(raw)}, None


def _paper_runner(
    name: str, metrics: tuple[str, ...], score: Scorer
) -> Callable[[EvalContext], BenchmarkRun]:
    metric = metrics[0]

    def run(ctx: EvalContext) -> BenchmarkRun:
        root = _data_dir(ctx.cfg, name)
        loaded = find_probe(ctx)
        provenance: dict[str, Any] = {
            "data": str(root),
            "judge": "none (rule-based parser)",
            "prompt_suffix": "",
        }
        if isinstance(loaded, str):
            return BenchmarkRun({m: MetricValue(None, loaded) for m in metrics}, {**provenance, "samples": 0})
        value, extra, note = score(ctx, loaded, root)
        provenance = {**provenance, "ocr_tokens_in_prompt": False, **_provenance(loaded), **extra}
        values = value if isinstance(value, dict) else {metric: MetricValue(value)}
        return BenchmarkRun({m: values[m] for m in metrics}, provenance, [f"{name}: {note}"] if note else [])

    return run


def _check_paper(name: str) -> Callable[[EvalConfig], None]:
    def check(cfg: EvalConfig) -> None:
        _data_dir(cfg, name)

    return check


_PAPER: tuple[tuple[str, str, tuple[references.Reference, ...], str, Scorer], ...] = (
    ("pope", "POPE", references.POPE,
     "LLaVA-1.5's eval/pope/: llava_pope_test.jsonl, coco/coco_pope_{adversarial,popular,random}.json "
     "(labels), val2014/*.jpg", _pope),
    ("gqa", "GQA", references.GQA,
     "LLaVA-1.5's eval/gqa/: llava_gqa_testdev_balanced.jsonl, data/testdev_balanced_questions.json "
     "(answers), data/images/*.jpg", _gqa),
    ("textvqa", "TextVQA", references.TEXTVQA,
     "LLaVA-1.5's eval/textvqa/: llava_textvqa_val_v051_ocr.jsonl, TextVQA_0.5.1_val.json (answers), "
     "train_images/*.jpg (the val images ship there)", _textvqa),
    ("mmvet", "MM-Vet", references.MMVET,
     "LLaVA-1.5's eval/mm-vet/: llava-mm-vet.jsonl, mm-vet.json (answers, capabilities), images/ "
     "(scored by the official GPT-4 grader; offline only a labelled proxy)", _mmvet),
    ("mmbench", "MMBench", references.MMBENCH,
     "a folder with one VLMEvalKit TSV, e.g. mmbench_dev_20230712.tsv (images embedded as base64)", _mmbench),
    ("mme_p", "MME-P", references.MME_P,
     "LLaVA-1.5's eval/MME/: llava_mme.jsonl, MME_Benchmark_release_version/ (its 10 perception subtasks)",
     _mme_p),
)  # fmt: skip

BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        name=EMBEDDED,
        family="understanding",
        title="MLLM probe (SmolLM2) on held-out embedded visual questions, student and teacher tokens",
        metrics=EMBEDDED_METRICS,
        references=references.embedded(EMBEDDED_METRICS),
        paper=False,
        hint=f"train the probe (make train-mllm), add {EMBEDDED} to eval.benchmarks and set eval.num_samples.{EMBEDDED}",
        run=_run_embedded,
        check=lambda cfg: embedded_count(cfg, EMBEDDED, minimum=1) and None,
    ),
    *(
        Benchmark(
            name=name,
            family="understanding",
            title=f"{metric} (official score)",
            metrics=(metric, MMVET_PROXY) if name == "mmvet" else (metric,),
            references=(*refs, PROXY_REFERENCE) if name == "mmvet" else refs,
            paper=True,
            data=data,
            hint=f"set eval.data.{name} and add {name} to eval.benchmarks (an MLLM run: eval.mllm)",
            run=_paper_runner(name, (metric, MMVET_PROXY) if name == "mmvet" else (metric,), score),
            check=_check_paper(name),
        )
        for name, metric, refs, data, score in _PAPER
    ),
)
