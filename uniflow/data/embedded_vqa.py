"""Visual questions about the embedded scenes, written in LLaVA's file formats.

Each scene (:func:`uniflow.data.embedded.render_scene`) gets questions whose answers its annotations
fix exactly:

- ``shape``: "What shape is the largest object?" (the dominant shape's type);
- ``colour``: "What colour is the largest shape?";
- ``count``: "How many shapes are there?" (visible objects; a fully hidden distractor does not count);
- ``position``: "Where is the <colour> <shape>?" for a distractor that is the only one of its colour
  and shape, answered by the quadrant of its box centre ("top left", ...); a distractor within
  ``POSITION_MARGIN`` of either centre line is not asked about (its quadrant is ambiguous);
- ``yes/no`` object existence, as POPE asks it ("Is there a <object> in the image?"): once about a
  shape that is in the scene (yes, drawn uniformly from the shapes present, so small distractors are
  asked about as often as the dominant shape) and once about one that is not (no). Training scenes
  can be asked about a second absent shape (``existence="two_absent"``) or about every shape type
  (``"every"``: yes for each present, no for each absent), as POPE's annotations cover every object;
  held-out scenes are always asked the pair.

Questions of scene ``i`` of (seed, split) come from their own generator, seeded like the scene, so the
set is the same in every process. The val split is held out (its scenes are other images).

:func:`write_llava_files` writes them as LLaVA data: PNG images under ``images/<split>/``, a training
json (``id``, ``image``, ``conversations``), and for the held-out split a question jsonl
(``question_id``, ``image``, ``text``, ``category``) with its answer key in the format of LLaVA's
answer files (``question_id``, ``text``). The MLLM stage reads only those files, so the embedded
default and real LLaVA data take one path.

The training json holds, by ``train_turns``, one multi-turn conversation per scene (``"multi"``, the
image in the first question, as in ``llava_v1_5_mix665k.json``) or one single-turn conversation per
question (``"single"``). These questions are independent and correlated: in a multi-turn conversation
an earlier answer ("What shape is the largest object?" "star") gives a later one away ("Is there a
star in the image?"), a shortcut the model may learn and cannot use on held-out questions, which are
asked one per prompt. Single turns are asked as the held-out questions are.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from uniflow.data.embedded import SHAPES, Scene, render_scene
from uniflow.data.photos import SPLITS
from uniflow.io import atomic_path, atomic_write_text

CATEGORIES = ("shape", "colour", "count", "position", "yes/no")
TRAIN_TURNS = ("multi", "single")
EXISTENCE = ("pair", "two_absent", "every")
YES, NO = "yes", "no"
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
# Fraction of the image side around the centre lines where a distractor's quadrant is not asked.
POSITION_MARGIN = 1 / 16
# Kind code of the question generator in the (seed, split, kind, index) seeds (scenes use 0, photos 1).
_QUESTIONS = 2

TRAIN_JSON = "train.json"
QUESTIONS_FILE = "questions.jsonl"
ANSWERS_FILE = "answers.jsonl"
IMAGE_DIR = "images"
# Written last: a directory holding it is complete (a killed writer leaves none, and is redone).
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class VisualQuestion:
    question: str
    answer: str
    category: str


def _name(obj: object) -> str:
    return f"{obj.colour} {SHAPES[obj.shape]}"  # type: ignore[attr-defined]


def _quadrant(box: tuple[int, int, int, int], size: int) -> str | None:
    cx, cy = (box[0] + box[2]) / 2 / size - 0.5, (box[1] + box[3]) / 2 / size - 0.5
    if min(abs(cx), abs(cy)) < POSITION_MARGIN:
        return None
    return f"{'top' if cy < 0 else 'bottom'} {'left' if cx < 0 else 'right'}"


def scene_questions(
    scene: Scene, rng: np.random.Generator, size: int, existence: str = "pair"
) -> list[VisualQuestion]:
    """The questions about ``scene`` (rendered at ``size`` px), in a fixed order, drawn with ``rng``;
    ``existence``: one present and one absent shape ("pair"), one present and two absent
    ("two_absent"), or every shape type ("every")."""
    dominant = scene.objects[0]
    questions = [
        VisualQuestion("What shape is the largest object?", SHAPES[dominant.shape], "shape"),
        VisualQuestion("What colour is the largest shape?", dominant.colour, "colour"),
        VisualQuestion("How many shapes are there?", str(len(scene.objects)), "count"),
    ]
    pairs = [(o.colour, o.shape) for o in scene.objects]
    unique = [
        (o, q)
        for o in scene.objects[1:]
        if pairs.count((o.colour, o.shape)) == 1 and (q := _quadrant(o.box, size)) is not None
    ]
    if unique:
        obj, quadrant = unique[int(rng.integers(len(unique)))]
        questions.append(VisualQuestion(f"Where is the {_name(obj)}?", quadrant, "position"))
    present = sorted({o.shape for o in scene.objects})
    absent = [s for s in range(len(SHAPES)) if s not in present]
    if existence == "every":
        return questions + [
            VisualQuestion(f"Is there a {name} in the image?", YES if k in present else NO, "yes/no")
            for k, name in enumerate(SHAPES)
        ]
    shape = present[int(rng.integers(len(present)))]
    yes = VisualQuestion(f"Is there a {SHAPES[shape]} in the image?", YES, "yes/no")
    shape = absent[int(rng.integers(len(absent)))]
    no = VisualQuestion(f"Is there a {SHAPES[shape]} in the image?", NO, "yes/no")
    questions += [yes, no] if rng.random() < 0.5 else [no, yes]
    if existence == "two_absent":  # at most 4 shapes are present, so 2 of the 6 are always absent
        others = [a for a in absent if a != shape]
        second = others[int(rng.integers(len(others)))]
        questions.append(VisualQuestion(f"Is there a {SHAPES[second]} in the image?", NO, "yes/no"))
    return questions


def _split_code(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return SPLITS.index(split)


def embedded_questions(
    seed: int, split: str, index: int, size: int, existence: str = "pair"
) -> tuple[Scene, list[VisualQuestion]]:
    """Scene ``index`` of (seed, split) and its questions; a pure function of its arguments."""
    if existence not in EXISTENCE:
        raise ValueError(f"existence must be one of {EXISTENCE}, got {existence!r}")
    scene = render_scene(seed, split, index, size)
    rng = np.random.default_rng((seed, _split_code(split), _QUESTIONS, index))
    return scene, scene_questions(scene, rng, size, existence)


def _image_path(split: str, index: int) -> str:
    return f"{split}/{index:06d}.png"


def _conversation(questions: list[VisualQuestion], rng: np.random.Generator | None) -> list[dict[str, str]]:
    """One conversation of ``questions`` in a per-scene random order (``rng``; None: as given), the
    image with the first question."""
    turns: list[dict[str, str]] = []
    order = range(len(questions)) if rng is None else rng.permutation(len(questions))
    for k, position in enumerate(order):
        q = questions[int(position)]
        turns.append({"from": "human", "value": ("<image>\n" if k == 0 else "") + q.question})
        turns.append({"from": "gpt", "value": q.answer})
    return turns


def _scenes(
    seed: int, split: str, num: int, size: int, existence: str = "pair"
) -> Iterator[tuple[int, Scene, list[VisualQuestion]]]:
    for index in range(num):
        scene, questions = embedded_questions(seed, split, index, size, existence)
        yield index, scene, questions


def _save_png(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def write_llava_files(
    root: str | Path,
    num_train: int,
    num_test: int,
    size: int = 64,
    seed: int = 0,
    train_turns: str = "multi",
    train_existence: str = "pair",
) -> Path:
    """Write the embedded VQA set under ``root`` in LLaVA's formats (see the module docstring).

    ``root/train.json`` holds the questions of ``num_train`` training scenes (conversations by
    ``train_turns``; existence questions by ``train_existence``), ``root/questions.jsonl`` and
    ``root/answers.jsonl`` the questions of ``num_test`` held-out scenes; images under ``root/images/``. An existing complete directory
    written with the same arguments is reused as is.
    """
    if num_train < 0 or num_test < 1:
        raise ValueError(
            f"num_train must be at least 0 and num_test at least 1, got {num_train} and {num_test}"
        )
    if train_turns not in TRAIN_TURNS:
        raise ValueError(f"train_turns must be one of {TRAIN_TURNS}, got {train_turns!r}")
    if train_existence not in EXISTENCE:
        raise ValueError(f"train_existence must be one of {EXISTENCE}, got {train_existence!r}")
    root = Path(root)
    manifest = {"num_train": num_train, "num_test": num_test, "size": size, "seed": seed}
    if train_turns != "multi":  # the manifests of existing multi-turn directories stay valid
        manifest["train_turns"] = train_turns
    if train_existence != "pair":
        manifest["train_existence"] = train_existence
    done = root / MANIFEST
    if done.is_file() and json.loads(done.read_text()) == manifest:
        return root
    train = []
    for index, scene, questions in _scenes(seed, "train", num_train, size, train_existence):
        image = _image_path("train", index)
        _save_png(scene.image, root / IMAGE_DIR / image)
        if train_turns == "single":
            train += [
                {"id": f"train-{index:06d}-{k}", "image": image, "conversations": _conversation([q], None)}
                for k, q in enumerate(questions)
            ]
            continue
        order = np.random.default_rng((seed, _split_code("train"), _QUESTIONS, index, 1))
        train.append(
            {"id": f"train-{index:06d}", "image": image, "conversations": _conversation(questions, order)}
        )
    atomic_write_text(root / TRAIN_JSON, json.dumps(train))
    question_lines, answer_lines = [], []
    for index, scene, questions in _scenes(seed, "val", num_test, size):
        _save_png(scene.image, root / IMAGE_DIR / _image_path("val", index))
        for k, q in enumerate(questions):
            qid = f"val-{index:06d}-{k}"
            record = {"question_id": qid, "image": _image_path("val", index), "category": q.category}
            question_lines.append(json.dumps({**record, "text": q.question}))
            answer_lines.append(json.dumps({"question_id": qid, "text": q.answer, "category": q.category}))
    atomic_write_text(root / QUESTIONS_FILE, "\n".join(question_lines) + "\n")
    atomic_write_text(root / ANSWERS_FILE, "\n".join(answer_lines) + "\n")
    atomic_write_text(done, json.dumps(manifest))
    return root
