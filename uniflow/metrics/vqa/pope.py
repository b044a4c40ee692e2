"""POPE: yes/no object-hallucination probing, scored as POPE's ``evaluate.py`` and LLaVA's
``llava/eval/eval_pope.py`` score it.

The answer rule is deliberately crude (a word test on the first sentence) because that is what the
published numbers used; a smarter parser would move them. Yes is the positive class.
"""

from __future__ import annotations

from collections.abc import Sequence

POPE_SPLITS = ("random", "popular", "adversarial")
PARSER = "llava"

# Exact, case-sensitive words: "NO" or "Nope" count as yes in the official rule.
_NEGATIVE_WORDS = frozenset({"No", "no", "not"})


def parse_pope_answer(text: str) -> str:
    """``"yes"`` or ``"no"`` for a model's answer, by the official word rule.

    Only the text before the first period counts, commas are dropped and words are split on single
    spaces; the answer is no when one of the words is ``No``, ``no`` or ``not``, and yes otherwise,
    so an empty or unrelated answer counts as yes.
    """
    first_sentence = text.split(".", 1)[0]
    words = first_sentence.replace(",", "").split(" ")
    return "no" if _NEGATIVE_WORDS.intersection(words) else "yes"


def _label(value: str, position: int) -> str:
    label = value.strip().lower()
    if label not in ("yes", "no"):
        raise ValueError(f"POPE label {position} must be 'yes' or 'no', got {value!r}")
    return label


def _ratio(numerator: int, denominator: int) -> float:
    # The official script divides by zero when a model never says yes; 0.0 keeps a run reportable.
    return numerator / denominator if denominator else 0.0


def score_pope_split(predictions: Sequence[str], labels: Sequence[str]) -> dict:
    """Accuracy, precision, recall, F1 (yes = positive) and yes-ratio of the predictions, as fractions.

    The yes-ratio is the share of *predicted* yes (lmms-eval once computed it from the labels).
    """
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} POPE predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("no POPE questions to score")
    tp = fp = tn = fn = 0
    for position, (prediction, label) in enumerate(zip(predictions, labels)):
        said_yes = parse_pope_answer(prediction) == "yes"
        is_yes = _label(label, position) == "yes"
        tp += said_yes and is_yes
        fp += said_yes and not is_yes
        tn += not said_yes and not is_yes
        fn += not said_yes and is_yes
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    return {
        "n": len(labels),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "accuracy": (tp + tn) / len(labels),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall) if precision + recall else 0.0,
        "yes_ratio": (tp + fp) / len(labels),
    }


def score_pope(predictions: Sequence[str], labels: Sequence[str], splits: Sequence[str]) -> dict:
    """POPE per split and averaged over the splits present.

    ``splits[i]`` names the split of question ``i`` (LLaVA's ``category``: random, popular or
    adversarial). ``score`` is the single number of LLaVA-style tables: mean F1 x 100; it is only
    the published POPE number when ``complete`` (all three splits present).
    """
    if not len(predictions) == len(labels) == len(splits):
        raise ValueError(
            f"POPE needs one label and split per prediction: {len(predictions)} predictions, "
            f"{len(labels)} labels, {len(splits)} splits"
        )
    unknown = sorted(set(splits) - set(POPE_SPLITS))
    if unknown:
        raise ValueError(f"unknown POPE split(s) {unknown}; expected some of {list(POPE_SPLITS)}")
    per_split = {}
    for split in POPE_SPLITS:
        members = [i for i, name in enumerate(splits) if name == split]
        if members:
            per_split[split] = score_pope_split(
                [predictions[i] for i in members], [labels[i] for i in members]
            )
    if not per_split:
        raise ValueError("no POPE questions to score")
    keys = ("accuracy", "precision", "recall", "f1", "yes_ratio")
    mean = {key: sum(result[key] for result in per_split.values()) / len(per_split) for key in keys}
    return {
        "benchmark": "POPE",
        "parser": PARSER,
        "splits": per_split,
        "mean": mean,
        "complete": set(per_split) == set(POPE_SPLITS),
        "score": 100 * mean["f1"],
    }
