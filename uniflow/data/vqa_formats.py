"""Readers for the benchmark and instruction files people already have on disk.

- LLaVA question files (jsonl: ``question_id``, ``image``, ``text``, optional ``category``) and
  the answer files its ``model_vqa*.py`` scripts write (jsonl: ``question_id``, ``text``, ...);
- LLaVA training data (a json list of ``{id, image, conversations}``, e.g. LLaVA-Pretrain or
  ``llava_v1_5_mix665k.json``; text-only samples have no ``image``);
- VLMEvalKit TSV files (MMBench and friends), whose base64 ``image`` cell may instead hold the
  index of another row with the same image (any cell of 64 characters or fewer, as in
  VLMEvalKit's ``ImageBaseDataset``);
- lmms-eval's Hugging Face parquet rows, images stored as ``{bytes, path}`` structs.

Every problem is reported with the path, the line or row, and what was expected there: these
files are large and hand-edited, and "KeyError: 'text'" does not say which of 665k samples broke.
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import string
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

QuestionId = int | str

# VLMEvalKit treats an image cell this short as a reference to another row, never as an image.
IMAGE_REFERENCE_MAX_CHARS = 64
_OPTION_LETTERS = tuple(string.ascii_uppercase)


@dataclass(frozen=True)
class LlavaQuestion:
    question_id: QuestionId
    image: str
    text: str
    category: str | None = None


@dataclass(frozen=True)
class LlavaAnswer:
    question_id: QuestionId
    text: str
    prompt: str | None = None
    model_id: str | None = None


@dataclass(frozen=True)
class LlavaTurn:
    role: str  # "human" or "gpt", LLaVA's ``from``
    value: str


@dataclass(frozen=True)
class LlavaConversation:
    id: str
    image: str | None
    conversations: tuple[LlavaTurn, ...]


@dataclass(frozen=True)
class VLMEvalRow:
    """One TSV row with its image decoded and its references resolved."""

    index: int
    image: bytes
    question: str
    answer: str | None
    hint: str | None
    options: Mapping[str, str]
    category: str | None
    l2_category: str | None
    split: str | None


def _existing(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def _jsonl_records(path: Path, expected: str) -> Iterator[tuple[int, dict]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{path}:{number}: expected one json object per line, {expected} ({error})"
                ) from error
            if not isinstance(record, dict):
                raise ValueError(
                    f"{path}:{number}: expected a json object with {expected}, got {type(record).__name__}"
                )
            yield number, record


def _field(
    record: Mapping[str, Any], key: str, types: type | tuple[type, ...], where: str, expected: str
) -> Any:
    if key not in record:
        raise ValueError(f"{where}: missing {key!r}; expected {expected}")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, types):
        raise ValueError(f"{where}: {key!r} is {value!r}; expected {expected}")
    return value


def read_llava_questions(path: str | Path) -> list[LlavaQuestion]:
    """A LLaVA question file, in file order."""
    path = _existing(path, "LLaVA question file")
    expected = "'question_id' (int or str), 'image' (str), 'text' (str), optional 'category' (str)"
    questions = []
    for number, record in _jsonl_records(path, expected):
        where = f"{path}:{number}"
        category = record.get("category")
        if category is not None and not isinstance(category, str):
            raise ValueError(f"{where}: 'category' is {category!r}; expected {expected}")
        questions.append(
            LlavaQuestion(
                question_id=_field(record, "question_id", (int, str), where, expected),
                image=_field(record, "image", str, where, expected),
                text=_field(record, "text", str, where, expected),
                category=category,
            )
        )
    if not questions:
        raise ValueError(f"{path}: no questions; expected one json object per line with {expected}")
    return questions


def read_llava_answers(path: str | Path) -> dict[QuestionId, LlavaAnswer]:
    """A LLaVA answer file keyed by question id; an id answered twice is an error."""
    path = _existing(path, "LLaVA answer file")
    expected = "'question_id' (int or str) and 'text' (str)"
    answers: dict[QuestionId, LlavaAnswer] = {}
    for number, record in _jsonl_records(path, expected):
        where = f"{path}:{number}"
        question_id = _field(record, "question_id", (int, str), where, expected)
        if question_id in answers:
            raise ValueError(
                f"{where}: question_id {question_id!r} answered twice; expected one answer per question"
            )
        answers[question_id] = LlavaAnswer(
            question_id=question_id,
            text=_field(record, "text", str, where, expected),
            prompt=record.get("prompt"),
            model_id=record.get("model_id"),
        )
    return answers


def answers_in_question_order(
    questions: Sequence[LlavaQuestion], answers: Mapping[QuestionId, LlavaAnswer]
) -> list[str]:
    """The answer text for each question, in question order, ready for the scorers."""
    missing = [question.question_id for question in questions if question.question_id not in answers]
    if missing:
        raise ValueError(f"{len(missing)} of {len(questions)} questions have no answer, e.g. {missing[:5]}")
    return [answers[question.question_id].text for question in questions]


def read_llava_training_json(path: str | Path) -> list[LlavaConversation]:
    """LLaVA training samples (stage 1 captions or stage 2 instructions)."""
    path = _existing(path, "LLaVA training json")
    expected = "{'id', optional 'image' (str), 'conversations': [{'from': 'human'|'gpt', 'value': str}, ...]}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid json ({error}); expected a list of {expected}") from error
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a json list of {expected}, got {type(data).__name__}")
    samples = []
    for number, record in enumerate(data):
        where = f"{path}: sample {number}"
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected {expected}, got {type(record).__name__}")
        image = record.get("image")
        if image is not None and not isinstance(image, str):
            raise ValueError(f"{where}: 'image' is {image!r}; expected {expected}")
        turns = _field(record, "conversations", list, where, expected)
        if not turns:
            raise ValueError(f"{where}: 'conversations' is empty; expected {expected}")
        conversation = []
        for position, turn in enumerate(turns):
            turn_where = f"{where}, turn {position}"
            if not isinstance(turn, dict):
                raise ValueError(f"{turn_where}: expected {{'from', 'value'}}, got {turn!r}")
            role = _field(turn, "from", str, turn_where, "'from' of 'human' or 'gpt'")
            if role not in ("human", "gpt"):
                raise ValueError(f"{turn_where}: 'from' is {role!r}; expected 'human' or 'gpt'")
            conversation.append(LlavaTurn(role, _field(turn, "value", str, turn_where, "'value' (str)")))
        sample_id = _field(record, "id", (int, str), where, expected)
        samples.append(LlavaConversation(id=str(sample_id), image=image, conversations=tuple(conversation)))
    return samples


def _cell(row: Mapping[str, str], key: str) -> str | None:
    # pandas writes NaN as an empty cell; VLMEvalKit reads it back as "missing".
    value = row.get(key)
    return value if value else None


def read_vlmeval_tsv(path: str | Path) -> list[VLMEvalRow]:
    """A VLMEvalKit TSV with images decoded and image references resolved to the referenced bytes."""
    path = _existing(path, "VLMEvalKit TSV")
    required = ("index", "image", "question")
    # Base64 images are far longer than csv's default field limit of 128 KiB.
    previous_limit = csv.field_size_limit(2**31 - 1)
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            columns = reader.fieldnames or []
            absent = [name for name in required if name not in columns]
            if absent:
                raise ValueError(
                    f"{path}: header lacks {absent}; expected tab-separated columns including {list(required)}"
                )
            rows = list(reader)
    finally:
        csv.field_size_limit(previous_limit)
    if not rows:
        raise ValueError(f"{path}: no rows after the header")

    indices: list[int] = []
    for number, row in enumerate(rows, start=1):
        try:
            indices.append(int(row["index"]))
        except (TypeError, ValueError):
            raise ValueError(f"{path}: row {number}: index {row['index']!r}; expected an integer") from None
    cells = {str(index): row["image"] or "" for index, row in zip(indices, rows)}
    if len(cells) != len(rows):
        raise ValueError(f"{path}: duplicate indices; expected each index once")

    option_columns = [name for name in columns if name in _OPTION_LETTERS]
    decoded: dict[str, bytes] = {}
    parsed = []
    for number, (index, row) in enumerate(zip(indices, rows), start=1):
        where = f"{path}: row {number} (index {index})"
        cell = cells[str(index)]
        if len(cell) <= IMAGE_REFERENCE_MAX_CHARS:
            target = cell.strip()
            if target not in cells or len(cells[target]) <= IMAGE_REFERENCE_MAX_CHARS:
                raise ValueError(
                    f"{where}: image cell {cell!r} is a reference (<= {IMAGE_REFERENCE_MAX_CHARS} chars); "
                    "expected the index of another row that holds a base64 image"
                )
            cell, key = cells[target], target
        else:
            key = str(index)
        if key not in decoded:
            try:
                decoded[key] = base64.b64decode(cell, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(
                    f"{where}: image is not valid base64; expected a base64-encoded image"
                ) from None
        question = _cell(row, "question")
        if question is None:
            raise ValueError(f"{where}: empty question; expected the question text")
        parsed.append(
            VLMEvalRow(
                index=index,
                image=decoded[key],
                question=question,
                answer=_cell(row, "answer"),
                hint=_cell(row, "hint"),
                options={letter: row[letter] for letter in option_columns if row[letter]},
                category=_cell(row, "category"),
                l2_category=_cell(row, "l2-category"),
                split=_cell(row, "split"),
            )
        )
    return parsed


def read_lmms_eval_parquet(path: str | Path, required_columns: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Rows of an lmms-eval (Hugging Face datasets) parquet file as dicts.

    Image columns (``{bytes, path}`` structs) become the image's bytes. ``required_columns`` must
    exist and be non-null in every row.
    """
    path = _existing(path, "lmms-eval parquet file")
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as error:
        raise ImportError("reading parquet needs pyarrow: pip install pyarrow") from error
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise ValueError(f"{path}: not a readable parquet file ({error})") from error
    absent = [name for name in required_columns if name not in table.column_names]
    if absent:
        raise ValueError(
            f"{path}: columns {absent} missing; expected {list(required_columns)} among {table.column_names}"
        )
    image_columns = [
        field.name
        for field in table.schema
        if pa.types.is_struct(field.type) and {"bytes", "path"} <= {child.name for child in field.type}
    ]
    rows = table.to_pylist()
    for number, row in enumerate(rows):
        for name in required_columns:
            if row[name] is None:
                raise ValueError(f"{path}: row {number}: {name!r} is null; expected a value")
        for name in image_columns:
            image = row[name]
            if image is None:
                continue
            if image["bytes"] is None:
                raise ValueError(
                    f"{path}: row {number}: image {name!r} holds no bytes; expected embedded image bytes"
                )
            row[name] = image["bytes"]
    return rows
