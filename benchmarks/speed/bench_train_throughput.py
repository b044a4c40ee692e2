"""Training throughput of a tokenizer config on CPU: images/s and peak memory, fp32 vs bf16, 1 vs 2 threads,
on this CPU's own instructions and capped to AVX2 (what a laptop without AVX512-BF16 runs).

    python benchmarks/speed/bench_train_throughput.py [--config experiments/tokenizer/embedded.yaml] [--steps 20]
    python benchmarks/speed/bench_train_throughput.py --isa native --set tokenizer.decoder.width=256 \
        tokenizer.decoder.head_width=256 tokenizer.decoder.gtb_heads=4     # the previous 256-wide decoder

The AVX2 rows cap the kernel dispatch of oneDNN, MKL and PyTorch's own kernels to AVX2
(ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS, ATEN_CPU_CAPABILITY), which reproduces the emulated
bf16 path of an AVX2-only CPU on an AVX512-BF16 one: the reason `trainer.precision: auto` exists.

Each setting runs in its own process (so thread counts and peak memory do not leak between them) and
times full optimizer steps of the real training module: the tokenizer's losses (teacher forward,
distillation, flow loss), backward, gradient clipping, AdamW and the EMA update, on a fixed batch.
Prints one Markdown table; the machine's load average is printed with it, since other processes
on the same cores make every number pessimistic.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT / "experiments" / "tokenizer" / "embedded.yaml"
# Kernel-dispatch caps that make this CPU run the instructions of an AVX2-only one.
AVX2_CAPS = {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def measure(config: str, overrides: list[str], threads: int, precision: str, steps: int, warmup: int) -> dict:
    """Runs in the child process: images/s over ``steps`` timed steps and the peak RSS."""
    import torch

    from uniflow.config import load_config
    from uniflow.training.ema import ema_decay_at, ema_update
    from uniflow.training.tokenizer_module import TokenizerModule

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    # A random encoder: throughput does not depend on the teacher's weights.
    cfg = load_config(config, ["pretrain.enabled=false", "tokenizer.encoder.checkpoint=null", *overrides])
    module = TokenizerModule(cfg).train()
    optimizer = module.configure_optimizers()["optimizer"]
    batch = cfg.data.batch_size
    images = torch.rand(batch, 3, cfg.tokenizer.image_size, cfg.tokenizer.image_size)
    trainable = [p for group in optimizer.param_groups for p in group["params"]]

    def step(k: int) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss = module.tokenizer.training_losses(images)["total"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.optim.grad_clip)
        optimizer.step()
        if module.ema is not None:
            ema_update(
                list(module.ema.parameters()), module._averaged_sources(), ema_decay_at(k, 0.999, True)
            )

    for k in range(warmup):
        step(k)
    start = time.perf_counter()
    for k in range(steps):
        step(warmup + k)
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return {"images_per_s": steps * batch / seconds, "peak_mib": peak_mib, "batch": batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--set", nargs="*", default=[], metavar="key=value", help="config overrides")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--isa", nargs="+", default=["native", "avx2"], choices=["native", "avx2"])
    parser.add_argument("--child", nargs=2, metavar=("THREADS", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = measure(args.config, args.set, int(args.child[0]), args.child[1], args.steps, args.warmup)
        print(json.dumps(result))
        return

    rows = []
    for isa in args.isa:
        for precision in ("32-true", "bf16-mixed"):
            for threads in args.threads:
                env = {**os.environ, "OMP_NUM_THREADS": str(threads), **(AVX2_CAPS if isa == "avx2" else {})}
                cmd = [sys.executable, __file__, "--config", args.config, "--steps", str(args.steps),
                       "--warmup", str(args.warmup), "--child", str(threads), precision, "--set", *args.set]  # fmt: skip
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
                rows.append((isa, precision, threads, json.loads(out.strip().splitlines()[-1])))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    from uniflow.hardware import SPEED_FLAGS, cpu_flags, cpu_model

    flags = " ".join(f for f in SPEED_FLAGS if f in cpu_flags())
    print(f"\n{Path(args.config).name}, batch {rows[0][3]['batch']}, {args.steps} timed steps; "
          f"{cpu_model()} ({flags}); load average (1/5/15 min) {load} on {os.cpu_count()} CPUs\n")  # fmt: skip
    print("| instructions | precision | threads | images/s | vs 32-true | peak memory (MiB) |")
    print("|---|---|---|---|---|---|")
    fp32 = {(isa, t): r["images_per_s"] for isa, p, t, r in rows if p == "32-true"}
    for isa, precision, threads, r in rows:
        ratio = r["images_per_s"] / fp32[(isa, threads)]
        print(
            f"| {isa} | {precision} | {threads} | {r['images_per_s']:.1f} | {ratio:.2f}x | {r['peak_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
