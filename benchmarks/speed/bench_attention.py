"""SDPA's fused (flash) and unfused (math) CPU kernels under autograd, and the choice uniflow makes.

    python benchmarks/speed/bench_attention.py [--threads 2] [--rounds 10]

``uniflow.nn.dit_blocks.attention`` trains short bf16/fp16 sequences on CPU with the math kernel
(below ``CPU_FUSED_MIN_KEYS`` keys) and keeps the fused one otherwise. Part 1: one attention forward
+ backward (4 heads of 64, 2048 tokens in all) per sequence length, dtype and kernel. Part 2: the
embedded generator's training step (FlowDiT 6 x 256 on 8 x 8 x 32 latents, patch 2: 16 tokens,
batch 64, bf16 autocast, AdamW) with uniflow's choice against the fused kernel throughout. Every
pair alternates in one process, the order flipped every round; medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def alternate(runs: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Median seconds of each callable, called in alternation (order flipped every round) after a warm-up."""
    for run in runs.values():
        run()
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for k in range(rounds):
        for name in names if k % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from uniflow.generation import FlowDiT
    from uniflow.nn import dit_blocks
    from uniflow.nn.dit_blocks import CPU_FUSED_MIN_KEYS

    torch.set_num_threads(args.threads)
    print(f"{args.threads} thread(s); medians of {args.rounds} alternating rounds\n")
    print("| keys | batch | dtype | fused fwd+bwd ms | math fwd+bwd ms | fused / math | uniflow takes |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | --- |")
    for dtype in (torch.bfloat16, torch.float32):
        for keys in (16, 64, 128, 256, 512):
            batch = 2048 // keys
            q, k, v = (torch.randn(batch, 4, keys, 64, dtype=dtype, requires_grad=True) for _ in range(3))
            grad = torch.randn(batch, 4, keys, 64, dtype=dtype)

            def step(
                backend: SDPBackend, qkv: tuple[torch.Tensor, ...], grad: torch.Tensor
            ) -> Callable[[], None]:
                def run() -> None:
                    with sdpa_kernel(backend):
                        F.scaled_dot_product_attention(*qkv).backward(grad)

                return run

            kernels = {"fused": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}
            t = alternate({name: step(b, (q, k, v), grad) for name, b in kernels.items()}, args.rounds)
            takes = "math" if dtype != torch.float32 and keys < CPU_FUSED_MIN_KEYS else "fused"
            name = str(dtype).removeprefix("torch.")
            print(
                f"| {keys} | {batch} | {name} | {1e3 * t['fused']:.2f} | {1e3 * t['math']:.2f} | "
                f"{t['fused'] / t['math']:.2f} | {takes} |"
            )

    torch.manual_seed(0)
    model = FlowDiT(32, 8, 4, patch_size=2, depth=6, width=256, heads=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    latents, labels = torch.randn(64, 32, 8, 8), torch.randint(0, 4, (64,))

    def train_step(min_keys: int) -> Callable[[], None]:
        def run() -> None:
            dit_blocks.CPU_FUSED_MIN_KEYS = min_keys  # 0: the fused kernel at every length
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model.training_loss(latents, labels, torch.Generator().manual_seed(0))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return run

    t = alternate({"uniflow": train_step(CPU_FUSED_MIN_KEYS), "fused": train_step(0)}, args.rounds)
    print("\nembedded FlowDiT training step (16 tokens, batch 64, bf16 autocast):\n")
    print("| attention | ms / step |\n| --- | ---: |")
    print(
        f"| uniflow's choice (math) | {1e3 * t['uniflow']:.1f} |\n| fused throughout | {1e3 * t['fused']:.1f} |"
    )
    print(f"| speed-up | {t['fused'] / t['uniflow']:.2f}x |")


if __name__ == "__main__":
    main()
