"""Cheap stand-ins for the evaluation tests: a fake FID feature extractor, a tiny saved tokenizer,
and one tiny data fixture per runnable benchmark (:data:`BENCHMARK_FIXTURES`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, TINY_TOKENIZER
from mllm_fakes import MLLM_FIXTURES
from PIL import Image
from probe_fixtures import PROBE_FIXTURES
from threadpoolctl import threadpool_limits
from torch import nn

from uniflow import UniFlowTokenizer
from uniflow.metrics import write_adm_npz
from uniflow.metrics.inception import FEATURE_DIM, NUM_LOGITS, InceptionWeights, to_uint8


class FakeExtractor(nn.Module):
    """The InceptionFeatureExtractor interface at a tiny cost: a fixed random projection of 4x4-pooled pixels."""

    def __init__(self, classifier: bool = False) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.project = nn.Parameter(torch.randn(48, FEATURE_DIM, generator=generator), requires_grad=False)
        self.classify = nn.Parameter(
            torch.randn(FEATURE_DIM, NUM_LOGITS, generator=generator) / 40, requires_grad=False
        )
        self.has_classifier = classifier
        self.weights = InceptionWeights(Path("fake-inception.pth"), "test-fake", "f" * 64, classifier)

    def inception_score_unavailable_reason(self) -> str | None:
        return None if self.has_classifier else "n/a: the fake extractor has no classifier"

    @torch.no_grad()
    def forward_with_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = to_uint8(images).to(self.project.device).float() / 255
        features = torch.tanh(F.adaptive_avg_pool2d(x, 4).flatten(1) @ self.project)
        return features, (features @ self.classify if self.has_classifier else None)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_with_logits(images)[0]


def save_tiny_tokenizer(directory: Path) -> Path:
    """A randomly initialised tiny tokenizer (32 px, patch 8) written as a run's ``tokenizer/``."""
    torch.manual_seed(0)
    UniFlowTokenizer.from_config(TINY, TINY_TOKENIZER).save_pretrained(directory)
    return directory


@contextlib.contextmanager
def quick_metrics(cache: Path) -> Iterator[None]:
    """A private reference cache, and one BLAS thread: each FID runs two 2048 x 2048 eigendecompositions,
    which take ~4x longer when OpenBLAS threads compete for a busy shared CPU."""
    with pytest.MonkeyPatch.context() as patch, threadpool_limits(1):
        patch.setenv("UNIFLOW_CACHE", str(cache))
        yield


def photo_folder(root: Path, count: int) -> Path:
    """``count`` random PNGs of different non-square sizes (the ADM centre crop has work to do)."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (90 + 7 * i, 70, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
    return root


def random_images(seed: int, count: int, size: int = 32) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (count, 3, size, size), dtype=np.uint8))


def _embedded(name: str) -> Callable[[Path], dict[str, Any]]:
    return lambda root: {"num_samples": {name: 4}}


def _folder(name: str) -> Callable[[Path], dict[str, Any]]:
    return lambda root: {"data": {name: str(photo_folder(root / name, 5))}, "image_size": 32}


def _generation(root: Path) -> dict[str, Any]:
    root.mkdir(parents=True)
    samples = write_adm_npz(root / "samples.npz", random_images(1, 6))
    # A bare ADM sample file as the reference: the suite turns it into statistics with its extractor.
    reference = write_adm_npz(root / "reference.npz", random_images(2, 6))
    return {"data": {"imagenet_gen": str(samples)}, "fid_reference": {"imagenet_gen": str(reference)}}


# The EvalConfig settings that run each runnable benchmark on a few samples made under a directory.
# tests/test_benchmark_contract.py runs every runnable entry on its fixture and fails for one without:
# a stage that makes a benchmark runnable adds its fixture here.
BENCHMARK_FIXTURES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "embedded_photos": _embedded("embedded_photos"),
    "embedded_scenes": _embedded("embedded_scenes"),
    "embedded_drift": _embedded("embedded_drift"),
    "imagenet_recon": _folder("imagenet_recon"),
    "coco_recon": _folder("coco_recon"),
    "imagenet_gen": _generation,
    **MLLM_FIXTURES,
    **PROBE_FIXTURES,
}
