"""What the embedded tokenizer's semantic tokens hold linearly: the questions of the embedded MLLM probe,
read by a logistic regression instead of a language model.

    make train-tokenizer
    python benchmarks/diagnostics/token_content.py [--run runs/embedded] [--train 1024] [--test 256]

On the student's last-block patch tokens of embedded scenes, mean-pooled and flattened: held-out
accuracy for the dominant shape's colour, the number of shapes, and the presence of each shape (what
the existence questions ask), beside each target's majority rate. docs/understanding.md quotes it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", default="runs/embedded")
    parser.add_argument("--train", type=int, default=1024)
    parser.add_argument("--test", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from uniflow.data.embedded import COLOUR_NAMES, SHAPES, render_scene
    from uniflow.tokenizer.model import UniFlowTokenizer

    torch.set_num_threads(args.threads)
    tokenizer = UniFlowTokenizer.from_pretrained(Path(args.run) / "tokenizer")

    def features(split: str, num: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        scenes = [render_scene(0, split, i, tokenizer.image_size) for i in range(num)]
        images = torch.stack([torch.from_numpy(s.image).permute(2, 0, 1).float() / 255 for s in scenes])
        with torch.no_grad():
            tokens = torch.cat([tokenizer.semantic_tokens(chunk) for chunk in images.split(64)])
        views = {"mean-pooled": tokens.mean(1).numpy(), "flattened": tokens.flatten(1).numpy()}
        targets = {
            "colour": np.array([COLOUR_NAMES.index(s.objects[0].colour) for s in scenes]),
            "count": np.array([len(s.objects) for s in scenes]),
        }
        for k, shape in enumerate(SHAPES):
            targets[f"has {shape}"] = np.array([any(o.shape == k for o in s.objects) for s in scenes])
        return views, targets

    train_x, train_y = features("train", args.train)
    test_x, test_y = features("val", args.test)
    print(f"{args.run}: student semantic tokens, {args.train} training / {args.test} held-out scenes")
    print("\n| target | majority rate | mean-pooled | flattened |\n|---|---:|---:|---:|")
    for target in train_y:
        majority = np.bincount(test_y[target].astype(int)).max() / len(test_y[target])
        row = [f"{100 * majority:.1f}%"]
        for view in ("mean-pooled", "flattened"):
            scaler = StandardScaler().fit(train_x[view])
            fitted = LogisticRegression(max_iter=2000, C=0.1).fit(
                scaler.transform(train_x[view]), train_y[target]
            )
            row.append(f"{100 * fitted.score(scaler.transform(test_x[view]), test_y[target]):.1f}%")
        print(f"| {target} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
