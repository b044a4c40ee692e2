"""Readers of the benchmark file formats, on tiny files built here in each format."""

import base64
import csv
import io
import json

import pytest
from PIL import Image

from uniflow.data.vqa_formats import (
    answers_in_question_order,
    read_llava_answers,
    read_llava_questions,
    read_llava_training_json,
    read_lmms_eval_parquet,
    read_vlmeval_tsv,
)
from uniflow.metrics.vqa import score_gqa, score_mmbench, score_pope


def png_bytes(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ---------------------------------------------------------------- LLaVA jsonl


def test_llava_question_and_answer_files_feed_the_scorers(tmp_path):
    suffix = "\nAnswer the question using a single word or phrase."
    questions = write_jsonl(
        tmp_path / "llava_pope_test.jsonl",
        [
            {"question_id": 1, "image": "a.jpg", "text": "Is there a dog?" + suffix, "category": "random"},
            {"question_id": 2, "image": "a.jpg", "text": "Is there a cat?" + suffix, "category": "random"},
            {"question_id": 3, "image": "b.jpg", "text": "Is there a car?" + suffix, "category": "popular"},
        ],
    )
    answers = write_jsonl(
        tmp_path / "answers.jsonl",
        [
            {
                "question_id": 3,
                "prompt": "...",
                "text": "No, there is not.",
                "answer_id": "x",
                "model_id": "m",
            },
            {"question_id": 1, "prompt": "...", "text": "Yes.", "answer_id": "y", "model_id": "m"},
            {"question_id": 2, "prompt": "...", "text": "No", "answer_id": "z", "model_id": "m"},
        ],
    )
    parsed = read_llava_questions(questions)
    assert [q.question_id for q in parsed] == [1, 2, 3]
    assert parsed[2].category == "popular"
    assert parsed[0].image == "a.jpg"
    predictions = answers_in_question_order(parsed, read_llava_answers(answers))
    assert predictions == ["Yes.", "No", "No, there is not."]

    result = score_pope(predictions, ["yes", "no", "no"], [q.category for q in parsed])
    assert result["mean"]["accuracy"] == 1.0
    assert score_gqa(predictions, ["yes", "no", "no"])["score"] == pytest.approx(200 / 3)


def test_llava_jsonl_errors_name_the_path_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.jsonl"):
        read_llava_questions(tmp_path / "nowhere.jsonl")

    bad = tmp_path / "questions.jsonl"
    bad.write_text(
        '{"question_id": 1, "image": "a.jpg", "text": "q"}\n\n{"question_id": 2, "image": "b.jpg"}\n'
    )
    with pytest.raises(ValueError, match=r"questions\.jsonl:3: missing 'text'"):
        read_llava_questions(bad)
    bad.write_text('{"question_id": 1, "image": "a.jpg", "text": "q"}\nnot json\n')
    with pytest.raises(ValueError, match=r"questions\.jsonl:2: expected one json object per line"):
        read_llava_questions(bad)
    bad.write_text('{"question_id": true, "image": "a.jpg", "text": "q"}\n')
    with pytest.raises(ValueError, match=r":1: 'question_id' is True"):
        read_llava_questions(bad)

    answers = write_jsonl(
        tmp_path / "a.jsonl", [{"question_id": 1, "text": "x"}, {"question_id": 1, "text": "y"}]
    )
    with pytest.raises(ValueError, match=r"a\.jsonl:2: question_id 1 answered twice"):
        read_llava_answers(answers)
    questions = read_llava_questions(
        write_jsonl(tmp_path / "q.jsonl", [{"question_id": 7, "image": "i.jpg", "text": "q"}])
    )
    with pytest.raises(ValueError, match=r"1 of 1 questions have no answer, e.g. \[7\]"):
        answers_in_question_order(questions, {})


# ---------------------------------------------------------------- LLaVA training json


def test_llava_training_json(tmp_path):
    path = tmp_path / "mix.json"
    path.write_text(
        json.dumps(
            [
                {
                    "id": "000000033471",
                    "image": "coco/train2017/000000033471.jpg",
                    "conversations": [
                        {"from": "human", "value": "<image>\nWhat colour is the bus?"},
                        {"from": "gpt", "value": "White and red."},
                    ],
                },
                {
                    "id": 7,
                    "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}],
                },
            ]
        )
    )
    samples = read_llava_training_json(path)
    assert samples[0].image == "coco/train2017/000000033471.jpg"
    assert [turn.role for turn in samples[0].conversations] == ["human", "gpt"]
    assert samples[0].conversations[1].value == "White and red."
    assert (samples[1].id, samples[1].image) == ("7", None)  # text-only sample

    path.write_text(json.dumps([{"id": "a", "conversations": [{"from": "user", "value": "Hi"}]}]))
    with pytest.raises(ValueError, match=r"mix\.json: sample 0, turn 0: 'from' is 'user'"):
        read_llava_training_json(path)
    path.write_text(json.dumps({"id": "a"}))
    with pytest.raises(ValueError, match="expected a json list"):
        read_llava_training_json(path)


# ---------------------------------------------------------------- VLMEvalKit TSV


def write_tsv(path, header, rows):
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(header)
        writer.writerows(rows)
    return path


HEADER = [
    "index",
    "question",
    "hint",
    "A",
    "B",
    "C",
    "D",
    "answer",
    "category",
    "l2-category",
    "split",
    "image",
]


def mmbench_tsv(tmp_path, reference="0"):
    red = base64.b64encode(png_bytes((255, 0, 0))).decode()
    blue = base64.b64encode(png_bytes((0, 0, 255))).decode()
    rows = [
        [0, "What colour\nis it?", "", "red", "blue", "green", "", "A", "color", "perception", "dev", red],
        [
            1000000,
            "What colour\nis it?",
            "",
            "blue",
            "green",
            "red",
            "",
            "C",
            "color",
            "perception",
            "dev",
            reference,
        ],
        [
            1,
            "Which shape?",
            "Look closely.",
            "square",
            "circle",
            "",
            "",
            "B",
            "shape",
            "reasoning",
            "dev",
            blue,
        ],
    ]
    return write_tsv(tmp_path / "MMBench_DEV_EN.tsv", HEADER, rows)


def test_vlmeval_tsv_decodes_images_and_resolves_references(tmp_path):
    rows = read_vlmeval_tsv(mmbench_tsv(tmp_path))
    assert [row.index for row in rows] == [0, 1000000, 1]
    assert rows[1].image == rows[0].image  # the short cell "0" points at row index 0
    assert Image.open(io.BytesIO(rows[1].image)).getpixel((0, 0)) == (255, 0, 0)
    assert Image.open(io.BytesIO(rows[2].image)).getpixel((0, 0)) == (0, 0, 255)
    assert rows[0].question == "What colour\nis it?"
    assert rows[0].options == {"A": "red", "B": "blue", "C": "green"}  # empty D is no option
    assert rows[2].options == {"A": "square", "B": "circle"}
    assert (rows[0].hint, rows[2].hint) == (None, "Look closely.")
    assert (rows[2].category, rows[2].l2_category, rows[2].split) == ("shape", "reasoning", "dev")

    result = score_mmbench(rows, ["A", "The answer is A", "B"])  # second shift wrong: the answer is C
    assert result["questions"] == 2
    assert result["score"] == 50.0
    assert result["categories"] == {"color": 0.0, "shape": 100.0}


def test_vlmeval_tsv_errors_name_the_row(tmp_path):
    with pytest.raises(ValueError, match=r"row 2 \(index 1000000\): image cell '42' is a reference"):
        read_vlmeval_tsv(mmbench_tsv(tmp_path, reference="42"))
    with pytest.raises(ValueError, match=r"row 2 \(index 1000000\).*expected the index of another row"):
        read_vlmeval_tsv(mmbench_tsv(tmp_path, reference="1000000"))  # points at itself
    with pytest.raises(ValueError, match=r"row 2 \(index 1000000\): image is not valid base64"):
        read_vlmeval_tsv(mmbench_tsv(tmp_path, reference="not base64 at all! " * 5))
    bad = write_tsv(tmp_path / "bad.tsv", ["index", "question", "image"], [["x", "q", "0"]])
    with pytest.raises(ValueError, match=r"bad\.tsv: row 1: index 'x'; expected an integer"):
        read_vlmeval_tsv(bad)
    no_image = write_tsv(tmp_path / "no_image.tsv", ["index", "question"], [[0, "q"]])
    with pytest.raises(ValueError, match=r"header lacks \['image'\]"):
        read_vlmeval_tsv(no_image)
    with pytest.raises(FileNotFoundError, match=r"absent\.tsv"):
        read_vlmeval_tsv(tmp_path / "absent.tsv")


# ---------------------------------------------------------------- lmms-eval parquet


def test_lmms_eval_parquet_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "question_id": ["q0", "q1"],
            "question": ["Is there a dog?", "Is there a cat?"],
            "answer": ["yes", "no"],
            "category": ["random", "random"],
            "image": pa.array(
                [
                    {"bytes": png_bytes((0, 255, 0)), "path": "a.png"},
                    {"bytes": png_bytes((9, 9, 9)), "path": None},
                ],
                type=image_type,
            ),
        }
    )
    path = tmp_path / "pope-test.parquet"
    pq.write_table(table, path)

    rows = read_lmms_eval_parquet(path, required_columns=["question", "answer", "image"])
    assert [row["question_id"] for row in rows] == ["q0", "q1"]
    assert Image.open(io.BytesIO(rows[0]["image"])).getpixel((0, 0)) == (0, 255, 0)
    assert rows[1]["answer"] == "no"

    with pytest.raises(ValueError, match=r"columns \['hint'\] missing"):
        read_lmms_eval_parquet(path, required_columns=["hint"])
    pq.write_table(pa.table({"question": ["q", None]}), path)
    with pytest.raises(ValueError, match=r"pope-test\.parquet: row 1: 'question' is null"):
        read_lmms_eval_parquet(path, required_columns=["question"])
    not_parquet = tmp_path / "notes.parquet"
    not_parquet.write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.parquet: not a readable parquet file"):
        read_lmms_eval_parquet(not_parquet)
