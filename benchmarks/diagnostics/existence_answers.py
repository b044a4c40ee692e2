"""What the embedded MLLM probe answers to the existence questions, split by what is asked: the
dominant shape, a shape present only as a small distractor, or an absent shape.

    make train-mllm
    python benchmarks/diagnostics/existence_answers.py [runs/embedded_mllm runs/embedded_mllm_teacher]

Reads each run's held-out answers (`answers.jsonl`, POPE's parser) and the questions' scenes
(regenerated from the run's `mllm.embedded` settings). Answering "yes" exactly for the dominant shape
would score 80% on these questions. docs/understanding.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="*", default=["runs/embedded_mllm", "runs/embedded_mllm_teacher"])
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from uniflow.config import load_config
    from uniflow.data.embedded import SHAPES
    from uniflow.data.embedded_vqa import embedded_questions
    from uniflow.metrics.vqa.pope import parse_pope_answer
    from uniflow.tokenizer.config import load_tokenizer_config
    from uniflow.tokenizer.model import CONFIG_FILE
    from uniflow.understanding.mllm.build import tokenizer_export

    print("| run | dominant shape: yes | distractor shape: yes | absent shape: no | yes/no accuracy |")
    print("|---|---:|---:|---:|---:|")
    for run in map(Path, args.runs):
        mllm = load_config(run / "config.yaml").mllm
        size = load_tokenizer_config(tokenizer_export(mllm.tokenizer) / CONFIG_FILE).image_size
        right, asked = Counter(), Counter()
        for line in (run / "answers.jsonl").read_text().splitlines():
            row = json.loads(line)
            _, index, k = row["question_id"].split("-")
            scene, questions = embedded_questions(mllm.embedded.seed, "val", int(index), size)
            question = questions[int(k)]
            if question.category != "yes/no":
                continue
            shape = question.question.split()[3]  # "Is there a <shape> in the image?"
            kind = (
                "absent"
                if question.answer == "no"
                else ("dominant" if shape == SHAPES[scene.label] else "distractor")
            )
            asked[kind] += 1
            right[kind] += parse_pope_answer(row["text"]) == question.answer
        cells = [
            f"{100 * right[k] / asked[k]:.0f}% of {asked[k]}" for k in ("dominant", "distractor", "absent")
        ]
        total = 100 * sum(right.values()) / sum(asked.values())
        print(f"| {run} | " + " | ".join(cells) + f" | {total:.1f}% |")


if __name__ == "__main__":
    main()
