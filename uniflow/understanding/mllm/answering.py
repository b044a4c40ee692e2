"""Answering a LLaVA question file with the MLLM probe, and scoring the answers against a key.

Questions are asked one per prompt (LLaVA's ``model_vqa_loader``: the image, then the question and
the optional prompt suffix), answered greedily in batches (answers do not depend on the batch, see
``generate.py``), and written as a LLaVA answer file (``question_id``, ``prompt``, ``text``,
``model_id``) so LLaVA's and the benchmarks' own scripts can read them too.

Scoring (:func:`score_answers`): ``pope`` parses every answer with POPE's official yes/no rule
(accuracy, precision, recall, F1, yes-ratio); ``gqa`` is exact match after LLaVA's GQA normalisation
(trailing period stripped, lower case); ``auto`` sends the questions whose key answer is yes/no to POPE
and the open ones to exact match, with a majority-answer baseline per question category.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from uniflow.data.vqa_formats import (
    LlavaQuestion,
    answers_in_question_order,
    read_llava_answers,
    read_llava_questions,
)
from uniflow.io import atomic_write_text
from uniflow.metrics.vqa.gqa import PARSER as GQA_PARSER
from uniflow.metrics.vqa.gqa import normalize_gqa_prediction, score_gqa
from uniflow.metrics.vqa.pope import PARSER as POPE_PARSER
from uniflow.metrics.vqa.pope import score_pope_split
from uniflow.understanding.mllm.conversation import Template, encode_conversation
from uniflow.understanding.mllm.data import load_square_image
from uniflow.understanding.mllm.generate import generate_answers
from uniflow.understanding.mllm.model import MLLMProbe

YES_NO = ("yes", "no")


def ask(
    probe: MLLMProbe,
    template: Template,
    questions: Sequence[LlavaQuestion],
    image_folder: str | Path,
    image_size: int,
    background: Sequence[float],
    *,
    prompt_suffix: str = "",
    batch_size: int = 16,
    max_new_tokens: int = 16,
    share_start: bool = True,
) -> tuple[list[str], list[str]]:
    """Greedy answers to ``questions`` and the prompts they were given (``share_start``: see
    :func:`uniflow.understanding.mllm.generate.greedy_generate`)."""
    folder = Path(image_folder)
    answers: list[str] = []
    prompts: list[str] = []
    for start in range(0, len(questions), batch_size):
        samples = []
        for q in questions[start : start + batch_size]:
            text = "<image>\n" + q.text + prompt_suffix
            encoded = encode_conversation(
                [{"role": "user", "content": text}],
                probe.tokenizer,
                template,
                str(q.question_id),
                for_generation=True,
            )
            prompts.append(q.text + prompt_suffix)
            samples.append(
                {
                    "id": q.question_id,
                    "input_ids": encoded.input_ids,
                    "image": load_square_image(folder / q.image, image_size, background),
                }
            )
        answers += generate_answers(
            probe, samples, len(samples), max_new_tokens, template.stop_strings, share_start
        )
    return answers, prompts


def write_answer_file(
    path: str | Path,
    questions: Sequence[LlavaQuestion],
    prompts: Sequence[str],
    answers: Sequence[str],
    model_id: str,
) -> None:
    """LLaVA's answer jsonl (``model_vqa``'s fields)."""
    lines = [
        json.dumps(
            {"question_id": q.question_id, "prompt": p, "text": a, "model_id": model_id, "metadata": {}}
        )
        for q, p, a in zip(questions, prompts, answers)
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _open_scores(predictions: list[str], answers: list[str], categories: list[str]) -> dict[str, Any]:
    """Exact match overall and per category, beside the majority answer of each category of the key
    (the best a model that ignores the image and answers by category could do)."""
    result = score_gqa(predictions, answers)
    per_category: dict[str, Any] = {}
    majority_correct = 0
    for category in sorted(set(categories)):
        members = [i for i, c in enumerate(categories) if c == category]
        key = [answers[i] for i in members]
        majority, count = Counter(key).most_common(1)[0]
        majority_correct += count
        correct = sum(normalize_gqa_prediction(predictions[i]) == answers[i] for i in members)
        per_category[category] = {
            "n": len(members),
            "accuracy": correct / len(members),
            "majority_answer": majority,
            "majority_accuracy": count / len(members),
        }
    return {
        **result,
        "majority_baseline": majority_correct / len(answers),
        "baseline": "majority answer of each question category in the answer key",
        "per_category": per_category,
    }


def score_answers(
    predictions: Sequence[str], answers: Sequence[str], categories: Sequence[str | None], scorer: str
) -> dict[str, Any]:
    """Scores of ``predictions`` against the key ``answers`` (see the module docstring)."""
    if not len(predictions) == len(answers) == len(categories):
        raise ValueError(
            f"{len(predictions)} predictions, {len(answers)} answers and {len(categories)} categories"
        )
    if scorer not in ("auto", "gqa", "pope"):
        raise ValueError(f"scorer must be auto, gqa or pope, got {scorer!r}")
    cats = [c or "all" for c in categories]
    if scorer == "gqa":
        yes_no: list[int] = []
    elif scorer == "pope":
        yes_no = list(range(len(answers)))
    else:
        yes_no = [i for i, a in enumerate(answers) if a.strip().lower() in YES_NO]
    chosen = set(yes_no)
    open_ = [i for i in range(len(answers)) if i not in chosen]
    result: dict[str, Any] = {"scorer": scorer, "n": len(answers)}
    if yes_no:
        result["yes/no"] = {
            **score_pope_split([predictions[i] for i in yes_no], [answers[i] for i in yes_no]),
            "parser": POPE_PARSER,
        }
    if open_:
        result["open"] = {
            **_open_scores(
                [predictions[i] for i in open_], [answers[i] for i in open_], [cats[i] for i in open_]
            ),
            "parser": GQA_PARSER,
        }
    return result


def answer_and_score(
    probe: MLLMProbe,
    template: Template,
    questions_file: str | Path,
    answers_file: str | Path,
    image_folder: str | Path,
    image_size: int,
    background: Sequence[float],
    *,
    scorer: str = "auto",
    prompt_suffix: str = "",
    batch_size: int = 16,
    max_new_tokens: int = 16,
    limit: int | None = None,
    output: str | Path | None = None,
    model_id: str = "uniflow-mllm",
) -> dict[str, Any]:
    """Answer a LLaVA question file, score it against its key, optionally write the answer file."""
    questions = read_llava_questions(questions_file)
    if limit is not None:
        questions = questions[:limit]
    key = answers_in_question_order(questions, read_llava_answers(answers_file))
    predictions, prompts = ask(
        probe,
        template,
        questions,
        image_folder,
        image_size,
        background,
        prompt_suffix=prompt_suffix,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
    )
    if output is not None:
        write_answer_file(output, questions, prompts, predictions, model_id)
    scores = score_answers(predictions, key, [q.category for q in questions], scorer)
    scores["prompt_suffix"] = prompt_suffix
    scores["questions"] = str(questions_file)
    return scores
