"""GQA testdev-balanced accuracy as LLaVA-1.5 reported it.

LLaVA's ``scripts/convert_gqa_for_eval.py`` strips trailing periods and lower-cases the answer;
GQA's ``eval.py`` then counts exact matches with the gold answer. Nothing else is normalised
(no articles, no punctuation), so "a dog" against "dog" is wrong, as in the published numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

PARSER = "llava"


def normalize_gqa_prediction(text: str) -> str:
    """Trailing periods removed, then lower-cased (in that order, as the conversion script does)."""
    return text.rstrip(".").lower()


def score_gqa(predictions: Sequence[str], answers: Sequence[str]) -> dict:
    """Exact-match accuracy of normalised predictions against gold answers; ``score`` is x 100."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} GQA predictions for {len(answers)} answers")
    if not answers:
        raise ValueError("no GQA questions to score")
    correct = sum(
        normalize_gqa_prediction(prediction) == answer for prediction, answer in zip(predictions, answers)
    )
    accuracy = correct / len(answers)
    return {
        "benchmark": "GQA",
        "parser": PARSER,
        "n": len(answers),
        "correct": correct,
        "accuracy": accuracy,
        "score": 100 * accuracy,
    }
