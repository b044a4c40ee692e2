"""FID Inception features: uniflow's extractor against torch-fidelity's module on the same weights.

    python benchmarks/speed/bench_inception.py [--batch 64] [--size 64] [--rounds 3] [--threads 2]

``InceptionFeatureExtractor`` runs torch-fidelity's ``inception-v3-compat`` with each batch norm folded
into its convolution and channels-last activations. Both extract the 2048-d features of the same
uint8 batch (real photos from scikit-image, resized to ``--size``), alternating in one process, the
order flipped every round. Prints the median time per batch of each, images/s, the ratio and the
largest feature difference (the FID weights' own conversion tolerance is 1e-5).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=64, help="input side (resized to 299 inside)")
    parser.add_argument("--rounds", type=int, default=3, help="timed batches per extractor")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch
    import torch.nn.functional as F
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from uniflow.metrics.inception import InceptionFeatureExtractor, real_photo_batch

    torch.set_num_threads(args.threads)
    ours = InceptionFeatureExtractor()
    plain = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(ours.weights.path)
    )
    photos = real_photo_batch(size=256).float()
    photos = F.interpolate(photos, size=(args.size, args.size), mode="bilinear", antialias=True)
    images = photos.round().clamp(0, 255).byte().repeat(-(-args.batch // len(photos)), 1, 1, 1)[: args.batch]
    extractors = {
        "uniflow InceptionFeatureExtractor": lambda: ours(images),
        "torch-fidelity FeatureExtractorInceptionV3": lambda: plain(images)[0],
    }

    def timed(run: object) -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        with torch.no_grad():
            features = run()  # type: ignore[operator]
        return time.perf_counter() - start, features

    features = {name: timed(run)[1] for name, run in extractors.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in extractors}
    names = list(extractors)
    for k in range(args.rounds):
        for name in names if k % 2 == 0 else names[::-1]:
            times[name].append(timed(extractors[name])[0])
    medians = {name: statistics.median(t) for name, t in times.items()}
    diff = float((features[names[0]] - features[names[1]]).abs().max())
    print(
        f"FID Inception, {args.batch} images of {args.size} px -> 299, float32, {args.threads} thread(s); "
        f"medians of {args.rounds} alternating batches\n"
    )
    print("| extractor | s / batch | images/s |\n| --- | ---: | ---: |")
    for name, median in medians.items():
        print(f"| {name} | {median:.2f} | {args.batch / median:.1f} |")
    print(f"| speed-up of uniflow's | {medians[names[1]] / medians[names[0]]:.2f}x | |")
    print(f"\nlargest feature difference: {diff:.2e}")


if __name__ == "__main__":
    main()
