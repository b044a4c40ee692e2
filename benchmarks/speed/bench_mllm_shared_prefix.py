"""The embedded MLLM probe with the questions about one image sharing their prompt and image tokens,
against one sequence per question: a training step, and greedy answering.

    make train-tokenizer && make train-mllm    # the vision tokens (runs/embedded) and a trained probe
    python benchmarks/speed/bench_mllm_shared_prefix.py [--images 4] [--rounds 6] [--questions 192]
        [--threads 2] [--run runs/embedded_mllm]

- Training (``mllm.pack_by_image``): the probe of ``experiments/mllm/embedded.yaml`` (SmolLM2-135M-
  Instruct, LoRA, float32), forward and backward on the single-turn questions of ``--images`` scenes
  per step: one sequence per question, or each scene's questions packed into one sequence that holds
  the shared start once. Same questions, same loss (both printed); rounds alternate the order.
- Answering (``greedy_generate``'s shared start): the trained probe of ``--run`` answers the first
  ``--questions`` held-out questions, batch 32, 8 new tokens at most, as the stage does: each prompt
  computed alone (left padding), or the start shared per image; the answers must be identical.

Speed is questions per second; the CPU's flags are printed beside it, since on a CPU without native
bf16 the numbers differ from one with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RELEVANT_FLAGS = {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"}
SEPARATE, PACKED = "one sequence per question", "packed by image (uniflow)"
ALONE, SHARED = "each prompt alone", "start shared per image (uniflow)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--questions", type=int, default=192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--run", default="runs/embedded_mllm")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from uniflow.config import load_config
    from uniflow.data.vqa_formats import read_llava_questions
    from uniflow.hardware import cpu_flags, cpu_model
    from uniflow.understanding.mllm.answering import ask
    from uniflow.understanding.mllm.build import template_for
    from uniflow.understanding.mllm.module import MLLMModule, load_exported_probe
    from uniflow.understanding.mllm.stage import _background, _data, _embedded_files

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    flags = " ".join(sorted(cpu_flags() & RELEVANT_FLAGS)) or "no AVX2"
    cfg = _embedded_files(
        load_config(
            ROOT / "experiments" / "mllm" / "embedded.yaml",
            ["mllm.embedded.train_turns=single", "mllm.pack_by_image=false"],
        )
    )

    # --- training ----------------------------------------------------------------------------
    packed_data = _data(dataclasses.replace(cfg, mllm=dataclasses.replace(cfg.mllm, pack_by_image=True)))
    separate_data = _data(cfg)
    packed_data.setup()
    separate_data.setup()
    probe = MLLMModule(cfg).probe.train()
    trainable = [p for p in probe.parameters() if p.requires_grad]
    items = packed_data.train_set.items
    batches, counts = [], []
    for k in range(args.rounds + 1):  # round k: scenes k * images ... (k + 1) * images - 1
        scenes = range(k * args.images, (k + 1) * args.images)
        questions = [separate_data.train_set[i] for s in scenes for i in items[s]]
        batches.append(
            {
                PACKED: packed_data._collate([packed_data.train_set[s] for s in scenes]),
                SEPARATE: separate_data._collate(questions),
            }
        )
        counts.append(len(questions))

    def step(batch: dict) -> tuple[float, float]:
        start = time.perf_counter()
        loss = probe(batch)
        loss.backward()
        elapsed = time.perf_counter() - start
        for p in trainable:
            p.grad = None
        return elapsed, loss.item()

    times: dict[str, list[float]] = {SEPARATE: [], PACKED: []}
    losses: dict[str, list[float]] = {SEPARATE: [], PACKED: []}
    tokens: dict[str, list[int]] = {SEPARATE: [], PACKED: []}
    for name in (SEPARATE, PACKED):  # warm-up
        step(batches[0][name])
    for k, batch in enumerate(batches[1:]):
        for name in [SEPARATE, PACKED] if k % 2 == 0 else [PACKED, SEPARATE]:
            elapsed, loss = step(batch[name])
            times[name].append(elapsed)
            losses[name].append(loss)
            tokens[name].append(int(batch[name]["input_ids"].numel()))
    per_step = statistics.mean(counts[1:])
    print(
        f"Training step (forward + backward) on {args.images} scenes' single-turn questions (~{per_step:.1f} "
        f"per step), {args.threads} thread(s), float32, {args.rounds} rounds; {cpu_model()} ({flags}); "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print()
    print(
        "| batch layout | text tokens + padding per step | step (s, median) | questions/s | speed-up | mean loss |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    base = statistics.median(times[SEPARATE])
    for name in (SEPARATE, PACKED):
        median = statistics.median(times[name])
        print(
            f"| {name} | {statistics.mean(tokens[name]):.0f} | {median:.2f} | {per_step / median:.1f} | "
            f"{base / median:.2f}x | {statistics.mean(losses[name]):.5f} |"
        )
    worst = max(abs(a - b) for a, b in zip(losses[SEPARATE], losses[PACKED], strict=True))
    print(f"\nlargest per-step loss difference: {worst:.2e} (image tokens come on top of the text tokens)")

    # --- answering ---------------------------------------------------------------------------
    trained, info = load_exported_probe(ROOT / args.run)
    questions = read_llava_questions(cfg.mllm.answer.questions)[: args.questions]
    template = template_for(cfg.mllm, trained.tokenizer)
    background = _background(cfg)

    def answer(share: bool, subset: list) -> tuple[float, list[str]]:
        start = time.perf_counter()
        answers, _ = ask(
            trained,
            template,
            subset,
            cfg.mllm.image_folder,
            info["image_size"],
            background,
            batch_size=32,
            max_new_tokens=8,
            share_start=share,
        )
        return time.perf_counter() - start, answers

    answer(True, questions[:32])  # warm-up
    answer(False, questions[:32])
    seconds: dict[str, list[float]] = {ALONE: [], SHARED: []}
    answers: dict[str, list[str]] = {}
    for k in range(2):
        for name in [ALONE, SHARED] if k % 2 == 0 else [SHARED, ALONE]:
            elapsed, answers[name] = answer(name == SHARED, questions)
            seconds[name].append(elapsed)
    print(
        f"\nAnswering {len(questions)} held-out questions ({args.run}), batch 32, greedy, <= 8 new tokens, "
        f"{args.threads} thread(s), float32, best of 2; load average {os.getloadavg()[0]:.2f}"
    )
    print()
    print("| prompts | s | questions/s | speed-up |")
    print("|---|---:|---:|---:|")
    base = min(seconds[ALONE])
    for name in (ALONE, SHARED):
        best = min(seconds[name])
        print(f"| {name} | {best:.1f} | {len(questions) / best:.1f} | {base / best:.2f}x |")
    same = sum(a == b for a, b in zip(answers[ALONE], answers[SHARED], strict=True))
    print(f"\nidentical answers: {same} / {len(questions)}")


if __name__ == "__main__":
    main()
