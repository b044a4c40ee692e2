"""Golden tests for the MLLM benchmark scorers: every expected value is worked out by hand from
the official rules (named in each scorer's module), including the parsers' odd corners."""

from dataclasses import dataclass, field

import pytest

from uniflow.metrics.vqa import (
    CachedGradesJudge,
    CallableJudge,
    MMVetSample,
    RuleBasedJudge,
    extract_choice,
    grading_prompt,
    normalize_gqa_prediction,
    normalize_textvqa_answer,
    parse_grade,
    parse_mme_answer,
    parse_pope_answer,
    score_gqa,
    score_mmbench,
    score_mme,
    score_mmvet,
    score_pope,
    score_pope_split,
    score_textvqa,
    textvqa_prompt,
    vqa_accuracy,
)
from uniflow.metrics.vqa.mmvet_prompt import MMVET_GRADING_PROMPT, MMVET_RETRY_SUFFIX

# ---------------------------------------------------------------- POPE


@pytest.mark.parametrize(
    ("answer", "parsed"),
    [
        ("Yes.", "yes"),
        ("No, there is not.", "no"),
        ("", "yes"),  # empty counts as yes
        ("no.", "no"),
        ("Yes. But not a big one", "yes"),  # only the first sentence counts
        ("There is not a dog", "no"),
        ("NO", "yes"),  # the word test is case-sensitive
        ("Not really", "yes"),  # "Not" is not one of No / no / not
        ("I don't think so", "yes"),
    ],
)
def test_pope_parser(answer, parsed):
    assert parse_pope_answer(answer) == parsed


def test_pope_per_split_and_mean():
    predictions = [
        "Yes.",
        "No, there is not.",
        "",
        "There is not a dog.",
        "Yes, there is a cat.",
        "No",
        "No",
        "yes",
    ]
    labels = ["yes", "no", "no", "yes", "yes", "yes", "no", "yes"]
    splits = ["random"] * 6 + ["popular"] * 2
    result = score_pope(predictions, labels, splits)

    random = result["splits"]["random"]  # TP 2, FP 1 (the empty answer), TN 1, FN 2
    assert (random["tp"], random["fp"], random["tn"], random["fn"]) == (2, 1, 1, 2)
    assert random["accuracy"] == pytest.approx(0.5)
    assert random["precision"] == pytest.approx(2 / 3)
    assert random["recall"] == pytest.approx(0.5)
    assert random["f1"] == pytest.approx(4 / 7)
    assert random["yes_ratio"] == pytest.approx(0.5)  # of predictions (3 of 6), not of labels (4 of 6)
    popular = result["splits"]["popular"]
    assert popular["accuracy"] == popular["f1"] == 1.0
    assert popular["yes_ratio"] == 0.5
    assert result["mean"]["f1"] == pytest.approx(11 / 14)
    assert result["score"] == pytest.approx(1100 / 14)
    assert result["parser"] == "llava"
    assert result["complete"] is False


def test_pope_never_yes_scores_zero_instead_of_dividing_by_zero():
    result = score_pope_split(["No", "no"], ["yes", "no"])
    assert (result["precision"], result["recall"], result["f1"], result["yes_ratio"]) == (0.0, 0.0, 0.0, 0.0)
    assert result["accuracy"] == 0.5


def test_pope_refuses_bad_input():
    with pytest.raises(ValueError, match="'yes' or 'no'"):
        score_pope_split(["yes"], ["maybe"])
    with pytest.raises(ValueError, match="unknown POPE split"):
        score_pope(["yes"], ["yes"], ["hard"])
    with pytest.raises(ValueError, match="2 POPE predictions for 1 labels"):
        score_pope_split(["yes", "no"], ["yes"])


# ---------------------------------------------------------------- GQA


def test_gqa_llava_normalisation_and_exact_match():
    assert normalize_gqa_prediction("Left..") == "left"
    assert normalize_gqa_prediction("The dog.") == "the dog"
    result = score_gqa(["Yes.", "The dog.", "Left..", " left"], ["yes", "dog", "left", "left"])
    # "the dog" != "dog" (no article stripping), " left" != "left" (no whitespace stripping)
    assert result["correct"] == 2
    assert result["score"] == 50.0
    assert result["parser"] == "llava"


# ---------------------------------------------------------------- TextVQA


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("1,000", "1000"),
        ("two", "2"),
        ("none", "0"),
        ("the cat", "cat"),
        ("cat.", "cat"),
        ("3.", "3"),  # the lookahead typo: a period after a digit is still removed
        ("1.5", "1.5"),
        ("Dont", "don't"),
        ("it's", "it 's"),
        ("coca-cola", "coca cola"),  # punctuation not touched by a space becomes a space
        ("a - b", "b"),  # touched by a space it is deleted, then the article goes
        ("somebody'd", "somebodyd"),  # the table's reversed entry
        ("." * 40, "." * 8),  # at most 32 periods are removed
    ],
)
def test_textvqa_normalisation_reproduces_the_evalai_processor(raw, normalised):
    assert normalize_textvqa_answer(raw) == normalised


@pytest.mark.parametrize(
    ("matches", "accuracy"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]
)
def test_vqa_accuracy_over_leave_one_out_subsets(matches, accuracy):
    answers = ["cat"] * matches + ["dog"] * (10 - matches)
    assert vqa_accuracy("Cat.", answers) == pytest.approx(accuracy)


def test_textvqa_score_matches_after_normalisation_and_records_ocr():
    questions = [
        ("1,000", ["1000"] * 2 + ["one thousand"] * 8),  # 2 matches -> 0.6
        ("Two", ["2"] * 4 + ["3"] * 6),  # 4 matches -> 1.0
        ("The cat", ["a cat", "cat", "cat.", "kitten"] + ["dog"] * 6),  # 3 -> 0.9
        ("sign", ["stop"] * 10),  # 0
    ]
    result = score_textvqa([p for p, _ in questions], [a for _, a in questions], ocr_tokens_in_prompt=True)
    assert result["accuracy"] == pytest.approx((0.6 + 1.0 + 0.9 + 0.0) / 4)
    assert result["score"] == pytest.approx(62.5)
    assert result["ocr_tokens_in_prompt"] is True
    assert result["parser"] == "evalai"
    with pytest.raises(ValueError, match="10 human answers"):
        vqa_accuracy("cat", ["cat"] * 9)


def test_textvqa_prompt_with_and_without_ocr_tokens():
    suffix = "Answer the question using a single word or phrase."
    assert textvqa_prompt("what is written?", ["STOP", "sign"]) == (
        f"what is written?\nReference OCR token: STOP, sign\n{suffix}"
    )
    assert textvqa_prompt("what is written?") == f"what is written?\n{suffix}"


# ---------------------------------------------------------------- MME


@pytest.mark.parametrize(
    ("answer", "parsed"),
    [
        ("Yes", "yes"),
        ("no", "no"),
        ("YES.", "yes"),
        ("Not sure", "no"),  # "no" within the first four characters
        ("I think yes", "other"),  # nothing in "i th"
        ("maybe", "other"),
    ],
)
def test_mme_parser(answer, parsed):
    assert parse_mme_answer(answer) == parsed


def test_mme_image_pair_with_one_wrong_answer():
    predictions = ["Yes", "No", "Yes", "Yes, there is", "yes", "no"]
    labels = ["yes", "no", "yes", "no", "Yes", "No"]
    subtasks = ["existence"] * 4 + ["code_reasoning"] * 2
    images = ["a.jpg", "a.jpg", "b.jpg", "b.jpg", "c.png", "c.png"]
    result = score_mme(predictions, labels, subtasks, images)
    existence = result["subtasks"]["existence"]
    assert existence["acc"] == 75.0  # 3 of 4 questions
    assert existence["acc_plus"] == 50.0  # 1 of 2 images with both right
    assert existence["score"] == 125.0
    assert result["perception"] == result["score"] == 125.0
    assert result["perception_complete"] is False
    assert result["cognition"] == 200.0
    assert result["parser"] == "mme"


def test_mme_other_answers_are_wrong_and_counted():
    result = score_mme(["maybe", "no"], ["yes", "no"], ["OCR", "OCR"], [1, 1])
    assert result["subtasks"]["OCR"]["other"] == 1
    assert result["subtasks"]["OCR"]["score"] == 50.0  # acc 50, acc+ 0


def test_mme_refuses_unpaired_images_and_unknown_subtasks():
    with pytest.raises(ValueError, match="expected 2"):
        score_mme(["yes"], ["yes"], ["color"], ["x.jpg"])
    with pytest.raises(ValueError, match="unknown MME subtask"):
        score_mme(["yes", "no"], ["yes", "no"], ["colour", "colour"], [1, 1])


# ---------------------------------------------------------------- MMBench

FOUR = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}


@pytest.mark.parametrize(
    ("answer", "choice"),
    [
        ("B", "B"),
        ("The answer is B", "B"),
        ("(C) bird", "C"),
        ("The answer is B, not A", "B"),  # two letters: the "answer is" phrase decides
        ("Sorry, I can't help with images of people yet.", "Z"),  # refusal
        ("Z", "Z"),
        ("I think it is a dog", "B"),  # exactly one option's text
        ("a cat or a dog", None),  # two options' text: unresolved
        ("I am not sure", None),
        ("A big grey animal sits near the bowl", None),  # a lone letter far from the end is a word
        ("The answer is dog", "D"),  # VLMEvalKit's pattern has no boundary after the letter
    ],
)
def test_mmbench_choice_extraction(answer, choice):
    assert extract_choice(answer, FOUR) == choice


@dataclass(frozen=True)
class Row:
    index: int
    answer: str
    category: str
    l2_category: str
    options: dict = field(default_factory=lambda: dict(FOUR))


def test_mmbench_circular_groups():
    reasoning = ("attribute_reasoning", "reasoning")
    ocr = ("ocr", "perception")
    rows_and_predictions = [
        # question 1: right in all four shifts
        (Row(1, "B", *reasoning), "B"),
        (Row(1_000_001, "C", *reasoning), "The answer is C"),
        (Row(2_000_001, "D", *reasoning), "(D)"),
        (Row(3_000_001, "A", *reasoning), "A."),
        # question 2: one wrong shift sinks it
        (Row(2, "A", *ocr), "A"),
        (Row(1_000_002, "B", *ocr), "B"),
        (Row(2_000_002, "C", *ocr), "C"),
        (Row(3_000_002, "D", *ocr), "A"),
        # question 3: a refusal in its second shift
        (Row(3, "C", *ocr), "C"),
        (Row(1_000_003, "D", *ocr), "Sorry, I can't help with images of people yet."),
        # question 4: unresolved, wrong offline
        (Row(4, "A", *reasoning), "I am not sure"),
    ]
    result = score_mmbench([r for r, _ in rows_and_predictions], [p for _, p in rows_and_predictions])
    assert result["questions"] == 4
    assert result["rows"] == 11
    assert result["overall"] == result["score"] == 25.0
    assert result["categories"] == {"attribute_reasoning": 50.0, "ocr": 0.0}
    assert result["l2_categories"] == {"perception": 0.0, "reasoning": 50.0}
    assert result["plain"] == 75.0  # first shifts: right, right, right, unresolved
    assert (result["unresolved"], result["refused"]) == (1, 1)
    assert result["parser"] == "vlmevalkit_can_infer"
    assert result["unresolved_policy"] == "wrong"


def test_mmbench_refuses_orphan_shifts_and_bad_answers():
    with pytest.raises(ValueError, match="without their first row"):
        score_mmbench([Row(1_000_005, "A", "c", "l")], ["A"])
    with pytest.raises(ValueError, match="not one of the options"):
        score_mmbench([Row(5, "E", "c", "l")], ["A"])


# ---------------------------------------------------------------- MM-Vet


def _samples():
    return [
        MMVetSample("v1_0", "What is x?", "-1<AND>-5", "x = -1", ("math",)),
        MMVetSample("v1_1", "What animal?", "cat<OR>kitten", "a kitten", ("rec",)),
        MMVetSample("v1_2", "What does it say?", "stop", "It says go", ("ocr", "rec")),
    ]


def test_mmvet_grading_prompt_is_the_official_one_plus_the_row():
    prompt = grading_prompt(_samples()[0])
    assert prompt.startswith("Compare the ground truth and prediction from AI models")
    assert prompt == MMVET_GRADING_PROMPT + "\nWhat is x? | -1 <AND> -5 | x = -1 | "
    assert "| 1.0\n\nWhat is x?" in prompt  # the prompt's own newline, then the separator


@pytest.mark.parametrize(
    ("reply", "grade"),
    [
        ("0.7", 0.7),
        ("1.0 totally right", 1.0),
        ("0", 0.0),
        ("1.5", None),
        ("nan", None),
        (" 0.5", None),
        ("x", None),
    ],
)
def test_mmvet_first_token_parser(reply, grade):
    assert parse_grade(reply) == grade


def test_mmvet_callable_judge_retries_with_rising_temperature_then_fails():
    calls = []

    def never_a_number(prompt, temperature):
        calls.append((prompt, temperature))
        return "I cannot grade this"

    judge = CallableJudge(never_a_number, name="stubborn")
    sample = _samples()[0]
    grade = judge.grade(sample, grading_prompt(sample))
    assert grade.score is None
    assert grade.attempts == 6
    assert [t for _, t in calls] == [0.0, 0.0, 0.5, 1.0, 1.5, 2.0]
    assert not calls[0][0].endswith(MMVET_RETRY_SUFFIX)
    assert all(prompt.endswith(MMVET_RETRY_SUFFIX) for prompt, _ in calls[1:])


def test_mmvet_failures_are_counted_not_filled_in():
    replies = {"v1_0": ["0.5"], "v1_1": ["oops", "1.0"], "v1_2": ["?"] * 6}

    def judge_fn(prompt, temperature):
        for question_id, answers in replies.items():
            if {"v1_0": "What is x?", "v1_1": "What animal?", "v1_2": "What does it say?"}[
                question_id
            ] in prompt:
                return answers.pop(0)
        raise AssertionError("unknown prompt")

    result = score_mmvet(_samples(), CallableJudge(judge_fn, name="local-lm", comparable=True))
    assert result["judge_failures"] == 1
    assert result["failed_question_ids"] == ["v1_2"]
    assert result["complete"] is False
    assert result["graded"] == 2
    assert result["score"] == pytest.approx(75.0)  # (0.5 + 1.0) / 2, the failure left out
    assert result["capabilities"] == {"math": 50.0, "rec": 100.0}
    assert result["benchmark"] == "MM-Vet"
    assert result["judge"] == "local-lm"


def test_mmvet_rule_judge_is_never_labelled_mmvet():
    result = score_mmvet(_samples(), RuleBasedJudge())
    assert result["comparable"] is False
    assert "MM-Vet" not in result["benchmark"]
    # -1 <AND> -5 with only -1 present -> 0.5; an <OR> part present -> 1; "stop" absent -> 0
    assert result["score"] == pytest.approx(50.0)
    assert result["capabilities"] == {"math": 50.0, "ocr": 0.0, "rec": 50.0}
    assert result["capability_combinations"] == {"math": 50.0, "ocr_rec": 0.0, "rec": 100.0}


def test_mmvet_cached_grades_from_the_official_grade_file(tmp_path):
    grade_file = tmp_path / "model_gpt-4-0613-grade-1runs.json"
    grade_file.write_text(
        '{"v1_0": {"model": ["gpt-4-0613"], "content": ["0.8"], "score": [0.8]},'
        ' "v1_1": {"model": ["gpt-4-0613"], "content": ["0.2"], "score": [0.2]}}'
    )
    result = score_mmvet(_samples(), CachedGradesJudge(grade_file, comparable=True))
    assert result["score"] == pytest.approx(50.0)
    assert result["failed_question_ids"] == ["v1_2"]  # no cached grade: a failure, not a zero

    lines = tmp_path / "grades.jsonl"
    lines.write_text('{"question_id": "v1_0", "score": 1.0}\n{"id": "v1_1", "score": 0.0}\n')
    assert CachedGradesJudge(lines).grades == {"v1_0": 1.0, "v1_1": 0.0}
    lines.write_text('{"question_id": "v1_0", "score": 1.0}\n{"score": 0.0}\n')
    with pytest.raises(ValueError, match=r"grades\.jsonl:2"):
        CachedGradesJudge(lines)
    grade_file.write_text('{"v1_0": 1.2}')
    with pytest.raises(ValueError, match="number in"):
        CachedGradesJudge(grade_file)
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        CachedGradesJudge(tmp_path / "missing.json")
