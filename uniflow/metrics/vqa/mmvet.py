"""MM-Vet: open answers graded by a judge with the official few-shot prompt (``mm-vet_evaluator.py``).

The judge is an interface because the official one (GPT-4) is not reachable offline:

- :class:`CachedGradesJudge` replays grades a previous run stored (MM-Vet's own grade file works);
- :class:`CallableJudge` wraps any function from prompt and temperature to reply, e.g. a local LM;
- :class:`RuleBasedJudge` grades by string matching, so its numbers are never called MM-Vet.

A grade is the first space-separated token of the reply read as a number in [0, 1]. When it does
not parse, the official evaluator asks again with a "(digit)" hint at rising temperature, five
times, then writes 0.0; here the sample is counted as a judge failure instead, left out of the
means and listed, because a silent 0 (or the -1 lmms-eval once wrote) changes the score unseen.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from uniflow.metrics.vqa.mmvet_prompt import MMVET_GRADING_PROMPT, MMVET_RETRY_SUFFIX

PARSER = "mmvet_first_token"
MAX_RETRIES = 5
# The evaluator raises the temperature by 0.5 after each retry, so the first retry is still greedy.
RETRY_TEMPERATURES = tuple(0.5 * attempt for attempt in range(MAX_RETRIES))
NOT_COMPARABLE_LABEL = "open-answer proxy (rule-based judge, not comparable)"


@dataclass(frozen=True)
class MMVetSample:
    """One graded question: ``answer`` is the ground truth, which may hold <AND> / <OR>."""

    question_id: str
    question: str
    answer: str
    prediction: str
    capabilities: tuple[str, ...]


@dataclass(frozen=True)
class Grade:
    """A judge's verdict: ``score`` in [0, 1], or None when the judge failed; ``raw`` says why."""

    score: float | None
    raw: str
    attempts: int


class Judge(Protocol):
    """Grades one sample; ``comparable`` is true only when its grades stand in for GPT-4's."""

    name: str
    comparable: bool

    def grade(self, sample: MMVetSample, prompt: str) -> Grade: ...


def grading_prompt(sample: MMVetSample) -> str:
    """The official prompt followed by the sample's row, last column left for the judge."""
    answer = sample.answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    row = " | ".join([sample.question, answer, sample.prediction, ""])
    return f"{MMVET_GRADING_PROMPT}\n{row}"


def parse_grade(reply: str) -> float | None:
    """The reply's first space-separated token as a grade in [0, 1], or None."""
    token = reply.split(" ")[0].strip()
    try:
        value = float(token)
    except ValueError:
        return None
    return value if math.isfinite(value) and 0.0 <= value <= 1.0 else None


class CallableJudge:
    """A judge around ``generate(prompt, temperature) -> reply``, with the official retry schedule."""

    def __init__(self, generate: Callable[[str, float], str], *, name: str, comparable: bool = False) -> None:
        self.generate = generate
        self.name = name
        self.comparable = comparable

    def grade(self, sample: MMVetSample, prompt: str) -> Grade:
        reply = self.generate(prompt, 0.0)
        score = parse_grade(reply)
        attempts = 1
        for temperature in RETRY_TEMPERATURES:
            if score is not None:
                break
            reply = self.generate(prompt + MMVET_RETRY_SUFFIX, temperature)
            score = parse_grade(reply)
            attempts += 1
        return Grade(score, reply, attempts)


class CachedGradesJudge:
    """Grades read from a file, by question id.

    Accepts MM-Vet's grade file (``{id: {"score": [run0, run1, ...], ...}}``, ``run`` picks the
    run), a json object ``{id: score}`` or ``{id: {"score": score}}``, or json lines with
    ``question_id`` (or ``id``) and ``score``. A question without a cached grade is a failure.
    """

    def __init__(
        self, path: str | Path, *, name: str = "cached", comparable: bool = False, run: int = 0
    ) -> None:
        self.path = Path(path)
        self.name = name
        self.comparable = comparable
        self.run = run
        self.grades = self._load()

    def _load(self) -> dict[str, float]:
        if not self.path.is_file():
            raise FileNotFoundError(f"MM-Vet grade file not found: {self.path}")
        text = self.path.read_text(encoding="utf-8")
        if self.path.suffix == ".jsonl":
            entries = {}
            for number, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    key = record["question_id"] if "question_id" in record else record["id"]
                    entries[str(key)] = record["score"]
                except (json.JSONDecodeError, KeyError, TypeError) as error:
                    raise ValueError(
                        f"{self.path}:{number}: expected a json object with 'question_id' (or 'id') and 'score'"
                    ) from error
        else:
            try:
                entries = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"{self.path}: not valid json ({error})") from error
            if not isinstance(entries, dict):
                raise ValueError(f"{self.path}: expected a json object mapping question ids to grades")
        grades = {}
        for key, entry in entries.items():
            score = entry["score"] if isinstance(entry, dict) and "score" in entry else entry
            if isinstance(score, list):
                if self.run >= len(score):
                    continue
                score = score[self.run]
            value = parse_grade(str(score)) if isinstance(score, int | float) else None
            if value is None:
                raise ValueError(f"{self.path}: grade of {key!r} must be a number in [0, 1], got {score!r}")
            grades[str(key)] = value
        return grades

    def grade(self, sample: MMVetSample, prompt: str) -> Grade:
        score = self.grades.get(sample.question_id)
        raw = (
            f"cached in {self.path}"
            if score is not None
            else f"no cached grade (run {self.run}) in {self.path}"
        )
        return Grade(score, raw, 0)


class RuleBasedJudge:
    """Offline string matching: <OR> parts, any present -> 1; <AND> parts, the share present.

    Plain ground truth scores 1 when it appears in the prediction (case-insensitive, whitespace
    collapsed), else 0. It cannot judge explanations, so it is never comparable with MM-Vet.
    """

    name = "rule-based"
    comparable = False

    @staticmethod
    def _norm(text: str) -> str:
        return re.sub(r"\s+", " ", text).strip().lower()

    def grade(self, sample: MMVetSample, prompt: str) -> Grade:
        prediction = self._norm(sample.prediction)
        if "<OR>" in sample.answer:
            parts = [self._norm(part) for part in sample.answer.split("<OR>")]
            score = float(any(part in prediction for part in parts if part))
        else:
            parts = [self._norm(part) for part in sample.answer.split("<AND>")]
            parts = [part for part in parts if part]
            score = round(sum(part in prediction for part in parts) / len(parts), 1) if parts else 0.0
        return Grade(score, "rule", 0)


def _mean_percent(values: Sequence[float]) -> float:
    return 100 * sum(values) / len(values)


def score_mmvet(samples: Sequence[MMVetSample], judge: Judge) -> dict:
    """Mean grade x 100 overall, per capability and per capability combination.

    Judge failures are counted, listed and left out of every mean: ``complete`` is true only
    without failures. ``benchmark`` says "MM-Vet" only for a judge marked comparable.
    """
    if not samples:
        raise ValueError("no MM-Vet samples to score")
    by_capability: dict[str, list[float]] = defaultdict(list)
    by_combination: dict[str, list[float]] = defaultdict(list)
    graded: list[float] = []
    failed: list[str] = []
    for sample in samples:
        if not sample.capabilities:
            raise ValueError(f"MM-Vet sample {sample.question_id!r} has no capabilities")
        grade = judge.grade(sample, grading_prompt(sample))
        if grade.score is None:
            failed.append(sample.question_id)
            continue
        graded.append(grade.score)
        for capability in set(sample.capabilities):
            by_capability[capability].append(grade.score)
        by_combination["_".join(sorted(set(sample.capabilities)))].append(grade.score)
    overall = _mean_percent(graded) if graded else None
    return {
        "benchmark": "MM-Vet" if judge.comparable else NOT_COMPARABLE_LABEL,
        "judge": judge.name,
        "comparable": judge.comparable,
        "parser": PARSER,
        "n": len(samples),
        "graded": len(graded),
        "judge_failures": len(failed),
        "failed_question_ids": failed,
        "complete": not failed,
        "overall": overall,
        "capabilities": {name: _mean_percent(v) for name, v in sorted(by_capability.items())},
        "capability_combinations": {name: _mean_percent(v) for name, v in sorted(by_combination.items())},
        "score": overall,
    }
