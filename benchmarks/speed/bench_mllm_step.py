"""One training step of the embedded MLLM probe: the output head on supervised positions only vs everywhere.

    make train-tokenizer           # the vision tokens: runs/embedded
    python benchmarks/speed/bench_mllm_step.py [--batch 8] [--rounds 6] [--threads 2] [--set KEY=VALUE ...]

The probe of ``experiments/mllm/embedded.yaml`` (SmolLM2-135M-Instruct, LoRA, float32) on batches of
the embedded visual-question conversations. Both sides run the same spliced inputs, forward and
backward (gradients into the connector and the adapters):

- ``uniflow``: ``MLLMProbe.forward``, which asks the LM for logits only at the positions that predict a
  supervised token (``logits_to_keep``) and takes the cross entropy there;
- ``transformers loss``: the LM called with ``labels``, its own loss over logits at every position.

Rounds alternate the two (order flipped every round) so load changes hit both; the table gives medians,
the loss of each (they must agree), and the CPU's flags, since on a CPU without native bf16 the
numbers differ from one with it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RELEVANT_FLAGS = {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"}
OURS, THEIRS = "uniflow (head on supervised positions)", "transformers loss (head everywhere)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], help="config overrides of the embedded MLLM yaml")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from uniflow.config import load_config
    from uniflow.hardware import cpu_flags, cpu_model
    from uniflow.understanding.mllm.module import MLLMModule
    from uniflow.understanding.mllm.stage import _data, _embedded_files

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(
        ROOT / "experiments" / "mllm" / "embedded.yaml", [f"data.batch_size={args.batch}", *args.set]
    )
    cfg = _embedded_files(cfg)
    data = _data(cfg)
    data.setup()
    probe = MLLMModule(cfg).probe.train()
    loader = torch.utils.data.DataLoader(
        data.train_set, batch_size=args.batch, shuffle=False, collate_fn=data._collate, drop_last=True
    )
    batches = [batch for batch, _ in zip(loader, range(args.rounds + 1), strict=False)]
    trainable = [p for p in probe.parameters() if p.requires_grad]

    def ours(batch: dict) -> float:
        return probe(batch)

    def theirs(batch: dict) -> float:
        return probe.causal_lm(**probe.prepare_inputs(batch), use_cache=False).loss

    def step(fn, batch: dict) -> tuple[float, float]:
        start = time.perf_counter()
        loss = fn(batch)
        loss.backward()
        elapsed = time.perf_counter() - start
        for p in trainable:
            p.grad = None
        return elapsed, float(loss)

    times: dict[str, list[float]] = {OURS: [], THEIRS: []}
    losses: dict[str, list[float]] = {OURS: [], THEIRS: []}
    step(ours, batches[0])  # warm-up
    step(theirs, batches[0])
    for k, batch in enumerate(batches[1:]):
        order = [(OURS, ours), (THEIRS, theirs)]
        for name, fn in order if k % 2 == 0 else order[::-1]:
            elapsed, loss = step(fn, batch)
            times[name].append(elapsed)
            losses[name].append(loss)
    tokens = [int(b["attention_mask"].sum()) for b in batches[1:]]
    print(
        f"MLLM probe training step (forward + backward), batch {args.batch}, ~{statistics.mean(tokens) / args.batch:.0f} "
        f"text tokens + image tokens per sequence, {args.threads} thread(s), float32, {args.rounds} rounds; "
        f"{cpu_model()} ({' '.join(sorted(cpu_flags() & RELEVANT_FLAGS)) or 'no AVX2'}); load average {os.getloadavg()[0]:.2f}"
    )
    print()
    print("| implementation | step (s, median) | speed-up | mean loss |")
    print("|---|---:|---:|---:|")
    base = statistics.median(times[THEIRS])
    for name in (OURS, THEIRS):
        median = statistics.median(times[name])
        print(f"| {name} | {median:.2f} | {base / median:.2f}x | {statistics.mean(losses[name]):.5f} |")
    worst = max(abs(a - b) for a, b in zip(losses[OURS], losses[THEIRS], strict=True))
    print(f"\nlargest per-batch loss difference: {worst:.2e}")


if __name__ == "__main__":
    main()
