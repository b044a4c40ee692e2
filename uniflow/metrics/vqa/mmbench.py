"""MMBench with circular evaluation and VLMEvalKit's rule-based choice extraction.

Sources: VLMEvalKit ``vlmeval/utils/matching_util.py`` (``can_infer``) and
``vlmeval/dataset/utils/multiple_choice.py`` (circular groups, ``report_acc``). MMBench stores each
question once per circular shift of its options at indices i, i + 1e6, i + 2e6, ...; a question
counts only when the choice extracted from every shift is right. VLMEvalKit hands answers its
rules cannot resolve to a GPT judge; offline (its ``exact_matching`` policy) they are wrong, and
so they are here, counted in ``unresolved``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Protocol

PARSER = "vlmevalkit_can_infer"
UNRESOLVED_POLICY = "wrong"
CIRCULAR_STRIDE = 1_000_000
REFUSED = "Z"

# Answers that say the model would not or could not answer: a refusal, never a resolved option.
_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_API_FAILURE = "Failed to obtain answer via API"
_SEPARATORS = ".()[],:;!*#{}"
# Case-insensitive and without a boundary after the letter, as in VLMEvalKit: "the answer is
# dog" reads as D when D is an option. It is only consulted when the letter rule fails.
_ANSWER_IS = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")


class MultipleChoiceQuestion(Protocol):
    """One row of an MMBench TSV: its index, gold letter, options and categories."""

    @property
    def index(self) -> int: ...

    @property
    def answer(self) -> str: ...

    @property
    def options(self) -> Mapping[str, str]: ...

    @property
    def category(self) -> str | None: ...

    @property
    def l2_category(self) -> str | None: ...


def _infer_option_letter(prediction: str, options: Mapping[str, str]) -> str | None:
    if _API_FAILURE in prediction:
        return None
    if any(refusal in prediction for refusal in _REFUSALS):
        return REFUSED
    words = prediction
    for separator in _SEPARATORS:
        words = words.replace(separator, " ")
    tokens = words.split()
    named = [letter for letter in options if letter in tokens]
    if len(named) == 1:
        # A lone letter far from the end ("A man is ... so the dog") is more likely a word than the pick.
        if tokens.index(named[0]) > len(tokens) - 5:
            return named[0]
    elif not named and REFUSED in tokens:
        return REFUSED
    match = _ANSWER_IS.search(prediction)
    if match and match.group(1).upper() in options:
        return match.group(1).upper()
    return None


def _infer_option_text(prediction: str, options: Mapping[str, str]) -> str | None:
    answer = prediction.lower()
    # A long answer mentions several things; matching option text inside it would be guessing.
    if len(answer) > 2 * sum(len(text) for text in options.values()):
        return None
    found = [letter for letter, text in options.items() if text.lower() in answer]
    return found[0] if len(found) == 1 else None


def extract_choice(prediction: str, options: Mapping[str, str]) -> str | None:
    """The option letter an answer picks, ``"Z"`` for a refusal, or None when unresolved.

    In order: refusal phrases -> Z; after replacing ``.()[],:;!*#{}`` by spaces, exactly one option
    letter among the words and among the last four -> it; no letter but a "Z" word -> Z; an
    "answer is X" phrase -> X; otherwise the one option whose text appears in the answer (answers
    longer than twice all options' text together are not matched).
    """
    return _infer_option_letter(prediction, options) or _infer_option_text(prediction, options)


def _percent(hits: Sequence[bool]) -> float:
    return 100 * sum(hits) / len(hits)


def _by_group(main_rows: Sequence[MultipleChoiceQuestion], hits: Mapping[int, bool], field: str) -> dict:
    members: dict[str, list[bool]] = defaultdict(list)
    for row in main_rows:
        name = getattr(row, field)
        if name is not None:
            members[name].append(hits[row.index])
    return {name: _percent(values) for name, values in sorted(members.items())}


def score_mmbench(questions: Sequence[MultipleChoiceQuestion], predictions: Sequence[str]) -> dict:
    """Circular accuracy overall and per category / l2-category, in percent, plus the plain one.

    ``predictions[i]`` answers ``questions[i]``; every circular shift of a question is a row of its
    own. ``plain`` scores the first shift alone (index < 1e6): a debugging number, not MMBench.
    Categories are read from the first shift, as VLMEvalKit reports them.
    """
    if len(questions) != len(predictions):
        raise ValueError(f"{len(predictions)} MMBench predictions for {len(questions)} rows")
    if not questions:
        raise ValueError("no MMBench rows to score")
    row_hits: dict[int, bool] = {}
    groups: dict[int, list[int]] = defaultdict(list)
    main_rows = []
    unresolved = refused = 0
    for question, prediction in zip(questions, predictions):
        if question.index in row_hits:
            raise ValueError(f"MMBench index {question.index} appears twice")
        if question.answer not in question.options:
            raise ValueError(
                f"MMBench row {question.index}: answer {question.answer!r} is not one of the options "
                f"{sorted(question.options)}"
            )
        choice = extract_choice(prediction, question.options)
        unresolved += choice is None
        refused += choice == REFUSED
        row_hits[question.index] = choice == question.answer
        groups[question.index % CIRCULAR_STRIDE].append(question.index)
        if question.index < CIRCULAR_STRIDE:
            main_rows.append(question)
    orphans = sorted(set(groups) - {row.index for row in main_rows})
    if orphans:
        raise ValueError(f"MMBench shifts without their first row (index mod 1e6): {orphans[:10]}")
    circular = {group: all(row_hits[index] for index in members) for group, members in groups.items()}
    overall = _percent(list(circular.values()))
    return {
        "benchmark": "MMBench",
        "parser": PARSER,
        "unresolved_policy": UNRESOLVED_POLICY,
        "questions": len(circular),
        "rows": len(questions),
        "unresolved": unresolved,
        "refused": refused,
        "overall": overall,
        "categories": _by_group(main_rows, circular, "category"),
        "l2_categories": _by_group(main_rows, circular, "l2_category"),
        "plain": _percent([row_hits[row.index] for row in main_rows]),
        "score": overall,
    }
