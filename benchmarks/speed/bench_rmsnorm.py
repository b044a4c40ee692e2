"""FlowDiT training steps with uniflow's RMSNorm against the same model with ``torch.nn.RMSNorm``.

    python benchmarks/speed/bench_rmsnorm.py [--size S] [--steps 12] [--threads 2] [--precision fp32]

``uniflow.nn.dit_blocks.RMSNorm`` takes the mean square as one vector-norm reduction instead of
torch's composite (pow, mean, add, rsqrt, mul) under autograd on CPU. Both models start from the same
weights; their training steps (FlowDiT's loss on a 16 x 16 x 32 latent, backward, AdamW) alternate in
one process, the order flipped every round, so load on the machine hits both alike. Prints the median
step time of each and the ratio.
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
    parser.add_argument("--size", default="S")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch
    from torch import nn

    from uniflow.generation import FlowDiT
    from uniflow.nn.dit_blocks import RMSNorm

    torch.set_num_threads(args.threads)
    latents = torch.randn(args.batch, 32, 16, 16)
    labels = torch.randint(0, 1000, (args.batch,))

    def build(torch_norm: bool) -> tuple[FlowDiT, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = FlowDiT.from_name(args.size, in_channels=32, input_size=16, num_classes=1000)
        if torch_norm:
            for parent in list(model.modules()):
                for name, child in list(parent.named_children()):
                    if isinstance(child, RMSNorm):
                        swapped = nn.RMSNorm(child.normalized_shape, child.eps, child.elementwise_affine)
                        swapped.load_state_dict(child.state_dict())
                        setattr(parent, name, swapped)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-4)

    models = {"uniflow RMSNorm": build(False), "torch nn.RMSNorm": build(True)}
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step(model: FlowDiT, optimizer: torch.optim.Optimizer) -> float:
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(0)
        with autocast:
            loss = model.training_loss(latents, labels, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    for pair in models.values():  # warm-up: allocator, kernels, AdamW state
        step(*pair)
        step(*pair)
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for k in range(args.steps):
        for name in names if k % 2 == 0 else names[::-1]:
            times[name].append(step(*models[name]))
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"FlowDiT-{args.size}/1, latent 16x16x32, batch {args.batch}, {args.precision}, "
        f"{args.threads} thread(s); medians of {args.steps} alternating training steps\n"
    )
    print("| norm | s / step |\n| --- | ---: |")
    for name, median in medians.items():
        print(f"| {name} | {median:.3f} |")
    ratio = medians["torch nn.RMSNorm"] / medians["uniflow RMSNorm"]
    print(f"| speed-up of uniflow's | {ratio:.3f}x |")


if __name__ == "__main__":
    main()
