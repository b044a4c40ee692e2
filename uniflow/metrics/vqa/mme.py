"""MME, scored as MME's ``eval_tool/calculation.py`` scores it.

Every image carries two yes/no questions (one true, one false). Per subtask, acc is the share of
questions answered right and acc+ the share of images with both answers right; the subtask score
is acc + acc+ in percent (at most 200). Perception sums its 10 subtasks (at most 2000); cognition
sums its 4 and is reported apart, as the paper tables do.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence

PARSER = "mme"
PERCEPTION_SUBTASKS = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
COGNITION_SUBTASKS = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def parse_mme_answer(text: str) -> str:
    """``"yes"``, ``"no"`` or ``"other"`` (always wrong), by the official rule.

    Lower-cased; an exact "yes"/"no" is taken as is, otherwise "yes" within the first four
    characters means yes, else "no" within them means no ("Not sure" is therefore no).
    """
    answer = text.lower()
    if answer in ("yes", "no"):
        return answer
    head = answer[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def _subtask_score(pairs: dict[Hashable, list[tuple[str, str]]]) -> dict:
    questions = [item for pair in pairs.values() for item in pair]
    correct = sum(parse_mme_answer(prediction) == label for prediction, label in questions)
    both_right = sum(all(parse_mme_answer(p) == label for p, label in pair) for pair in pairs.values())
    acc = 100 * correct / len(questions)
    acc_plus = 100 * both_right / len(pairs)
    return {
        "questions": len(questions),
        "images": len(pairs),
        "other": sum(parse_mme_answer(prediction) == "other" for prediction, _ in questions),
        "acc": acc,
        "acc_plus": acc_plus,
        "score": acc + acc_plus,
    }


def score_mme(
    predictions: Sequence[str],
    labels: Sequence[str],
    subtasks: Sequence[str],
    images: Sequence[Hashable],
) -> dict:
    """Per-subtask acc / acc+ / score (percent) and the perception and cognition sums.

    ``score`` is the perception sum (MME-P, the paper's column).

    ``subtasks[i]`` and ``images[i]`` name the subtask and image of question ``i``; each image of a
    subtask must have exactly two questions. A sum is the published number only when its
    ``*_complete`` flag is true (all of its subtasks present).
    """
    if not len(predictions) == len(labels) == len(subtasks) == len(images):
        raise ValueError(
            "MME needs one label, subtask and image per prediction: "
            f"{len(predictions)} predictions, {len(labels)} labels, {len(subtasks)} subtasks, {len(images)} images"
        )
    if not predictions:
        raise ValueError("no MME questions to score")
    known = PERCEPTION_SUBTASKS + COGNITION_SUBTASKS
    grouped: dict[str, dict[Hashable, list[tuple[str, str]]]] = defaultdict(lambda: defaultdict(list))
    for position, (prediction, label, subtask, image) in enumerate(
        zip(predictions, labels, subtasks, images)
    ):
        if subtask not in known:
            raise ValueError(
                f"unknown MME subtask {subtask!r} at question {position}; expected one of {list(known)}"
            )
        gold = label.strip().lower()
        if gold not in ("yes", "no"):
            raise ValueError(f"MME label {position} must be 'yes' or 'no', got {label!r}")
        grouped[subtask][image].append((prediction, gold))
    for subtask, pairs in grouped.items():
        for image, pair in pairs.items():
            if len(pair) != 2:
                raise ValueError(
                    f"MME {subtask} image {image!r} has {len(pair)} questions; expected 2 (acc+ is per pair)"
                )
    per_subtask = {name: _subtask_score(grouped[name]) for name in known if name in grouped}
    perception = sum(per_subtask[name]["score"] for name in PERCEPTION_SUBTASKS if name in per_subtask)
    return {
        "benchmark": "MME",
        "parser": PARSER,
        "subtasks": per_subtask,
        "perception": perception,
        "perception_complete": all(name in per_subtask for name in PERCEPTION_SUBTASKS),
        "cognition": sum(per_subtask[name]["score"] for name in COGNITION_SUBTASKS if name in per_subtask),
        "cognition_complete": all(name in per_subtask for name in COGNITION_SUBTASKS),
        "score": perception,
    }
