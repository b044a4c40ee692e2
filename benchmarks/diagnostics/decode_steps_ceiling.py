"""The ceiling a generator on the embedded latents faces: the tokenizer's reconstructions of held-out
scenes, decoded with each sampler and number of steps, scored as the generator summary scores samples.

    make train-tokenizer
    python benchmarks/diagnostics/decode_steps_ceiling.py [--run runs/embedded] [--num 256]

Prints one row per (sampler, steps): the encoder-pretraining classifier's accuracy on the
reconstructions (the generator summary's "ceiling" line) and their Frechet distance (FID Inception)
to the same scenes, and two references for what decoding artefacts cost in that distance: the scenes
with Gaussian pixel noise (standard deviation 0.05) and the scenes at half resolution, upsampled.
docs/generation.md quotes this table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = [("euler", 1), ("euler", 2), ("euler", 4), ("euler", 8), ("euler", 16),
            ("heun", 1), ("heun", 2), ("heun", 4), ("heun", 8)]  # fmt: skip


def _accuracy(classifier, images, labels, mean, std) -> float:
    """Percent of ``images`` the encoder-pretraining classifier gives their true label."""
    return 100 * float((classifier((images - mean) / std).argmax(-1) == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", default="runs/embedded")
    parser.add_argument("--num", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch
    import torch.nn.functional as F
    from omegaconf import OmegaConf

    from uniflow.data.datamodule import heldout_scenes
    from uniflow.generation.evaluate import _load_classifier
    from uniflow.metrics import FIDMetric
    from uniflow.metrics.inception import InceptionFeatureExtractor
    from uniflow.tokenizer.model import UniFlowTokenizer

    torch.set_num_threads(args.threads)
    export = Path(args.run) / "tokenizer"
    tokenizer = UniFlowTokenizer.from_pretrained(export)
    loaded = _load_classifier(OmegaConf.create({"summary": {"classifier": None}}), export)
    if loaded is None:
        raise SystemExit(
            f"no encoder-pretraining classifier for {export} (its encoder checkpoint has no head)"
        )
    classifier, mean, std = loaded
    scenes = heldout_scenes(args.num, tokenizer.image_size, 0, annotations=False)
    images = torch.stack([scenes[i]["image"] for i in range(args.num)])
    labels = torch.tensor([scenes[i]["label"] for i in range(args.num)])
    extractor = InceptionFeatureExtractor()
    real = FIDMetric(extractor)
    real.update(images)
    print(f"{args.num} held-out scenes, {tokenizer.image_size} px, tokenizer {export}")
    print(
        "\n| sampler | steps | classifier = true class | Frechet distance to the scenes |\n|---|---:|---:|---:|"
    )
    with torch.no_grad():
        z = tokenizer.encode(images)
        print(f"| (the scenes themselves) | | {_accuracy(classifier, images, labels, mean, std):.1f}% | 0 |")
        noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
        references = {
            "(the scenes + pixel noise, std 0.05)": (images + 0.05 * noise).clamp(0, 1),
            "(the scenes at half resolution, upsampled)": F.interpolate(
                F.avg_pool2d(images, 2), scale_factor=2, mode="bilinear"
            ),
        }
        for name, altered in references.items():
            metric = FIDMetric(extractor)
            metric.update(altered)
            print(
                f"| {name} | | {_accuracy(classifier, altered, labels, mean, std):.1f}% | {metric.compute(real):.1f} |"
            )
        for sampler, steps in SETTINGS:
            size = tuple(images.shape[-2:])
            noise = torch.Generator().manual_seed(0)
            decoded = tokenizer.decode(z, steps=steps, sampler=sampler, size=size, generator=noise)
            metric = FIDMetric(extractor)
            metric.update(decoded)
            accuracy = _accuracy(classifier, decoded, labels, mean, std)
            print(f"| {sampler} | {steps} | {accuracy:.1f}% | {metric.compute(real):.1f} |", flush=True)


if __name__ == "__main__":
    main()
