"""Each generator learns a 2-class set of synthetic latents: two Gaussian blobs with distinct means.

The check is the one that matters for class-conditional generation: samples asked for class k land
nearer to mode k than to the other mode. Tiny models, one CPU thread, under ~2 minutes each.
"""

import pytest
import torch

from uniflow.generation import ARFlow, FlowDiT

pytestmark = pytest.mark.slow

CHANNELS, SIZE, SPREAD = 4, 4, 0.3


def two_blobs(generator: torch.Generator) -> torch.Tensor:
    """Modes ``2 x C x h x w``: a random sign pattern and its negation."""
    pattern = torch.randn(CHANNELS, SIZE, SIZE, generator=generator).sign()
    return torch.stack([pattern, -pattern])


def train_and_sample(model: torch.nn.Module, steps: int, sample) -> tuple[float, float]:
    """Train on fresh blob draws; return (fraction of samples nearest their mode, mean distance / mode gap)."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    modes = two_blobs(g)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    for _ in range(steps):
        labels = torch.randint(0, 2, (32,), generator=g)
        z = modes[labels] + SPREAD * torch.randn(32, CHANNELS, SIZE, SIZE, generator=g)
        loss = model.training_loss(z, labels, generator=g)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    labels = torch.arange(2).repeat_interleave(16)
    samples = sample(model, labels, torch.Generator().manual_seed(1))
    distances = torch.cdist(samples.flatten(1), modes.flatten(1))  # 32 x 2
    nearest = distances.argmin(dim=1)
    own = distances[torch.arange(32), labels]
    gap = (modes[0] - modes[1]).norm()
    return (nearest == labels).float().mean().item(), (own.mean() / gap).item()


def test_flowdit_learns_two_blobs():
    torch.manual_seed(0)
    model = FlowDiT(CHANNELS, SIZE, num_classes=2, depth=2, width=64, heads=4)
    accuracy, distance = train_and_sample(
        model, 400, lambda m, y, g: m.sample(y, steps=20, cfg_scale=1.0, generator=g)
    )
    assert accuracy >= 0.9, accuracy
    assert distance < 0.35, distance


@pytest.mark.parametrize("order", ["random", "raster"])
def test_arflow_learns_two_blobs(order):
    torch.manual_seed(0)
    model = ARFlow(
        CHANNELS, SIZE, num_classes=2, order=order, depth=2, width=64, heads=4,
        num_prefix=2, head_depth=2, head_width=64,
    )  # fmt: skip
    accuracy, distance = train_and_sample(
        model, 400, lambda m, y, g: m.sample(y, iterations=8, head_steps=20, cfg_scale=1.0, generator=g)
    )
    assert accuracy >= 0.9, accuracy
    assert distance < 0.35, distance
