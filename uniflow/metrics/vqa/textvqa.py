"""TextVQA accuracy as LLaVA-1.5 scored it (``llava/eval/m4c_evaluator.py``, ``eval_textvqa.py``).

Answers are normalised by the EvalAI answer processor, whose quirks are reproduced on purpose
because the published numbers carry them:

- the period pattern was meant to spare periods that follow a digit but was written as a
  lookahead, so only periods *before* a digit survive ("3." -> "3", "1.5" stays);
- ``re.UNICODE`` was passed where ``re.sub`` expects its count, so at most 32 periods are removed;
- a punctuation mark is deleted when a space touches it anywhere in the answer, otherwise it is
  replaced by a space ("coca-cola" -> "coca cola", "a - b" -> "b" once the article goes);
- "none" becomes "0" with the number words, and "'s" is split off ("it's" -> "it 's").

Accuracy per question is the VQA soft score: for each of the 10 leave-one-out subsets of the
human answers, min(1, matches / 3), averaged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

PARSER = "evalai"
HUMAN_ANSWERS = 10
SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
OCR_PREFIX = "Reference OCR token: "

# Each mark is handled on its own against the original text, so their order does not matter.
_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_PERIOD_LIMIT = 32
_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
# The processor's contraction table, restricted to lower-case keys: answers are lower-cased before
# the lookup, so its capitalised entries ("Im", "Ive", ...) and identities never apply.
# "somebody'd" -> "somebodyd" is the table's own (reversed) entry.
_CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}


def _strip_punctuation(text: str) -> str:
    # The processor also deletes punctuation when a comma sits between digits, but commas are gone
    # by now (removed with "?" first), so that branch never fires and is left out.
    out = text
    for mark in _PUNCTUATION:
        touched_by_space = f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if touched_by_space else " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_PERIOD_LIMIT)


def normalize_textvqa_answer(text: str) -> str:
    """An answer as the EvalAI answer processor leaves it (prediction and human answers alike)."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    text = _strip_punctuation(text)
    words = [_NUMBER_WORDS.get(word, word) for word in text.split()]
    words = [_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES]
    return " ".join(words)


def vqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """Soft accuracy of one prediction against its 10 human answers, both normalised.

    With k of the 10 answers equal to the prediction: 0 -> 0, 1 -> 0.3, 2 -> 0.6, 3 -> 0.9, 4+ -> 1.
    """
    if len(human_answers) != HUMAN_ANSWERS:
        raise ValueError(
            f"TextVQA needs {HUMAN_ANSWERS} human answers per question, got {len(human_answers)}"
        )
    predicted = normalize_textvqa_answer(prediction)
    hits = [normalize_textvqa_answer(answer) == predicted for answer in human_answers]
    matches = sum(hits)
    # Leaving out answer i removes one match exactly when answer i was one.
    return sum(min(1.0, (matches - hit) / 3) for hit in hits) / len(hits)


def score_textvqa(
    predictions: Sequence[str], human_answers: Sequence[Sequence[str]], *, ocr_tokens_in_prompt: bool
) -> dict:
    """Mean VQA accuracy over questions; ``score`` is x 100.

    ``ocr_tokens_in_prompt`` says whether the prompts carried LLaVA-1.5's "Reference OCR token"
    line: it moves the number by several points, so it is part of the result.
    """
    if len(predictions) != len(human_answers):
        raise ValueError(f"{len(predictions)} TextVQA predictions for {len(human_answers)} questions")
    if not predictions:
        raise ValueError("no TextVQA questions to score")
    accuracy = sum(
        vqa_accuracy(prediction, answers) for prediction, answers in zip(predictions, human_answers)
    ) / len(predictions)
    return {
        "benchmark": "TextVQA",
        "parser": PARSER,
        "ocr_tokens_in_prompt": ocr_tokens_in_prompt,
        "n": len(predictions),
        "accuracy": accuracy,
        "score": 100 * accuracy,
    }


def textvqa_prompt(
    question: str, ocr_tokens: Sequence[str] | None = None, suffix: str = SHORT_ANSWER_PROMPT
) -> str:
    """The question text of LLaVA-1.5's TextVQA file, with the OCR reference line when tokens are given.

    Layout: question, then "Reference OCR token: t1, t2, ..." (only with tokens), then the suffix,
    one per line.
    """
    lines = [question]
    if ocr_tokens:
        lines.append(OCR_PREFIX + ", ".join(ocr_tokens))
    if suffix:
        lines.append(suffix)
    return "\n".join(lines)
