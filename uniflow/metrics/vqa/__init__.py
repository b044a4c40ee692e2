"""Scorers for the six MLLM benchmarks of the paper's understanding table, as pure functions.

Each follows its benchmark's official scoring code (named in its module) and returns a plain
dict that records the parser, and where it matters the judge or prompt option, it used.
"""

from uniflow.metrics.vqa.gqa import normalize_gqa_prediction, score_gqa
from uniflow.metrics.vqa.mmbench import MultipleChoiceQuestion, extract_choice, score_mmbench
from uniflow.metrics.vqa.mme import COGNITION_SUBTASKS, PERCEPTION_SUBTASKS, parse_mme_answer, score_mme
from uniflow.metrics.vqa.mmvet import (
    CachedGradesJudge,
    CallableJudge,
    Grade,
    Judge,
    MMVetSample,
    RuleBasedJudge,
    grading_prompt,
    parse_grade,
    score_mmvet,
)
from uniflow.metrics.vqa.pope import POPE_SPLITS, parse_pope_answer, score_pope, score_pope_split
from uniflow.metrics.vqa.textvqa import (
    SHORT_ANSWER_PROMPT,
    normalize_textvqa_answer,
    score_textvqa,
    textvqa_prompt,
    vqa_accuracy,
)

__all__ = [
    "COGNITION_SUBTASKS",
    "PERCEPTION_SUBTASKS",
    "POPE_SPLITS",
    "SHORT_ANSWER_PROMPT",
    "CachedGradesJudge",
    "CallableJudge",
    "Grade",
    "Judge",
    "MMVetSample",
    "MultipleChoiceQuestion",
    "RuleBasedJudge",
    "extract_choice",
    "grading_prompt",
    "normalize_gqa_prediction",
    "normalize_textvqa_answer",
    "parse_grade",
    "parse_mme_answer",
    "parse_pope_answer",
    "score_gqa",
    "score_mmbench",
    "score_mme",
    "score_mmvet",
    "score_pope",
    "score_pope_split",
    "score_textvqa",
    "textvqa_prompt",
    "vqa_accuracy",
]
