"""Cheap stand-ins for the evaluation tests: a fake FID feature extractor and a tiny saved tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from uniflow import UniFlowTokenizer
from uniflow.metrics.inception import FEATURE_DIM, NUM_LOGITS, InceptionWeights, to_uint8

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tokenizer" / "tiny.yaml"
TINY_OVERRIDES = [
    "tokenizer.encoder.kwargs.depth=2",
    "tokenizer.encoder.kwargs.embed_dim=48",
    "tokenizer.decoder.width=64",
    "tokenizer.decoder.gtb_depth=1",
    "tokenizer.decoder.head_width=64",
    "tokenizer.decoder.head_depth=2",
    "tokenizer.decoder.latent_dim=8",
    "tokenizer.image_size=32",
    "tokenizer.encoder.image_size=32",
]


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
    UniFlowTokenizer.from_config(TINY, TINY_OVERRIDES).save_pretrained(directory)
    return directory
