"""FlowDiT against diffusers' DiTTransformer2DModel of the same depth, width, heads, patch and latent shape.

    pip install diffusers          # only for this benchmark; e.g. .venv/bin/pip install diffusers
    python benchmarks/speed/bench_flowdit.py [--size S] [--latent 16x16x32] [--batch 8] [--threads 1] [--ablation]

Both models get the same work: a training step (shifted logit-normal t, rectified-flow velocity
loss, backward, AdamW) and 50-step Euler sampling through ``uniflow.flow.sample`` without guidance.

Timing runs both models in one process, alternating: training step by step, sampling run by run,
with the order flipped every round, so that changes in the machine's load hit both sides alike;
throughputs are medians over the rounds. Peak memory is measured apart, one child process per
(model, phase), as the child's peak RSS above its resident size once the model is built (sampling
memory does not grow with the number of steps, so that child runs two). Printed: one Markdown table
with the ratios, and the load average, since other processes on the same cores lower every number.

The architectures are the same size but not the same blocks: FlowDiT uses RMSNorm, SwiGLU (hidden
2/3 of 4 x width, the same parameter count as the GELU MLP) and 2-D RoPE (QK-norm optional, off by
default); diffusers' DiT uses LayerNorm, a tanh-GELU MLP, fixed sin-cos positions and a timestep +
class embedder in every block (hence its larger parameter count). ``--ablation`` adds the rows
``uniflow + QK-norm`` and ``uniflow without RoPE``, which isolate what those options cost.

On a CPU shared with other work, use one thread: with two, OpenMP threads wait on each other at every
element-wise kernel whenever one is descheduled, and the timings measure the neighbours.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OURS, THEIRS = "uniflow", "diffusers"
# FlowDiT's options beside its defaults (RoPE on, QK-norm off, as LightningDiT's released configs).
ABLATIONS = {"uniflow + QK-norm": {"qk_norm": True}, "uniflow without RoPE": {"rope": False}}
INSTALL_HINT = (
    "diffusers is not installed; it is needed only by this benchmark. Install it into the project's "
    "environment with:\n    .venv/bin/pip install diffusers\n(or `pip install diffusers` in the active one)"
)


def _rss_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


class Runner:
    """One model with its optimizer, fixed inputs, one training step and one sampling run."""

    def __init__(self, impl: str, args: argparse.Namespace):
        import torch

        from uniflow.generation import FLOWDIT_SIZES, FlowDiT

        h, w, c = args.latent
        size = FLOWDIT_SIZES[args.size]
        torch.manual_seed(0)
        ours = FlowDiT.from_name(
            args.size,
            in_channels=c,
            input_size=(h, w),
            num_classes=1000,
            patch_size=args.patch,
            **ABLATIONS.get(impl, {}),
        )
        self.shift, self.model, self.velocity = ours.shift, ours, ours
        if impl == THEIRS:
            from diffusers import DiTTransformer2DModel

            if h != w:
                raise SystemExit("diffusers' DiT takes square latents only")
            self.model = DiTTransformer2DModel(
                num_attention_heads=size.heads,
                attention_head_dim=size.width // size.heads,
                in_channels=c,
                out_channels=c,
                num_layers=size.depth,
                sample_size=h,
                patch_size=args.patch,
                num_embeds_ada_norm=1000,
            )
            # diffusers embeds the raw timestep; FlowDiT's embedder scales t in [0, 1] by 1000 itself.
            self.velocity = lambda x, t, y: self.model(x, t * 1000, y, return_dict=False)[0]
        self.params = sum(p.numel() for p in self.model.parameters())
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0
        )
        self.z = torch.randn(args.batch, c, h, w)
        self.noise = torch.randn(args.batch, c, h, w)
        self.labels = torch.randint(0, 1000, (args.batch,))
        self.autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def train_step(self) -> None:
        import torch.nn.functional as F

        from uniflow import flow

        self.model.train()
        t = flow.sample_time(self.z.shape[0], 1.0, shift=self.shift)
        x_t, u = flow.interpolate(self.z, self.noise, t)
        with self.autocast():
            v = self.velocity(x_t, t, self.labels)
        loss = F.mse_loss(v.float(), u)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def sample_run(self, steps: int) -> None:
        import torch

        from uniflow import flow

        self.model.eval()
        with torch.no_grad(), self.autocast():
            flow.sample(lambda x, t: self.velocity(x, t, self.labels), self.noise, steps, shift=self.shift)


def peak_memory(impl: str, phase: str, args: argparse.Namespace) -> dict:
    """Runs in a child process: the peak RSS of one phase above the resident size of the built model."""
    import torch

    torch.set_num_threads(args.threads)
    runner = Runner(impl, args)
    baseline = _rss_kib()
    if phase == "train":
        runner.train_step()
        runner.train_step()  # the second step also holds AdamW's state
    else:
        runner.sample_run(2)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mib": (peak - baseline) / 1024}


def _parse_latent(text: str) -> tuple[int, int, int]:
    h, w, c = (int(v) for v in text.lower().split("x"))
    return h, w, c


def _timed(fn, *fn_args) -> float:
    start = time.perf_counter()
    fn(*fn_args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="S", help="FlowDiT size without wide head: S, B, L, XL")
    parser.add_argument("--latent", type=_parse_latent, default=(16, 16, 32), help="h x w x c, e.g. 16x16x32")
    parser.add_argument("--patch", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--train-steps", type=int, default=6, help="timed training steps per model")
    parser.add_argument("--sample-steps", type=int, default=50)
    parser.add_argument("--sample-runs", type=int, default=2, help="timed sampling runs per model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument(
        "--ablation", action="store_true", help="also time FlowDiT with QK-norm and without RoPE"
    )
    parser.add_argument("--memory-child", nargs=2, metavar=("IMPL", "PHASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(peak_memory(*args.memory_child, args)))
        return
    if "-DH" in args.size:
        parser.error("diffusers' DiT has no wide head: compare a plain size (S, B, L, XL)")
    try:
        import diffusers  # noqa: F401
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        raise SystemExit(2) from None
    import torch

    torch.set_num_threads(args.threads)
    implementations = (OURS, *ABLATIONS, THEIRS) if args.ablation else (OURS, THEIRS)

    memory: dict[tuple[str, str], float] = {}
    for impl in implementations:
        for phase in ("train", "sample"):
            cmd = [sys.executable, __file__, *sys.argv[1:], "--memory-child", impl, phase]
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
            if done.returncode:
                raise SystemExit(f"{impl} {phase} failed:\n{done.stderr}")
            memory[(impl, phase)] = json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"]

    runners = {impl: Runner(impl, args) for impl in implementations}
    for runner in runners.values():  # warm-up: allocator, kernels, AdamW state
        runner.train_step()
        runner.sample_run(1)
    train_s: dict[str, list[float]] = {impl: [] for impl in implementations}
    sample_s: dict[str, list[float]] = {impl: [] for impl in implementations}
    for k in range(args.train_steps):
        for impl in implementations if k % 2 == 0 else implementations[::-1]:
            train_s[impl].append(_timed(runners[impl].train_step))
    for k in range(args.sample_runs):
        for impl in implementations if k % 2 == 0 else implementations[::-1]:
            sample_s[impl].append(_timed(runners[impl].sample_run, args.sample_steps))
            print(
                f"  sampling run {k + 1}/{args.sample_runs}: {impl} {sample_s[impl][-1]:.1f} s",
                file=sys.stderr,
            )

    def images_per_s(seconds: list[float]) -> float:
        return args.batch / statistics.median(seconds)

    h, w, c = args.latent
    print(
        f"\nFlowDiT-{args.size}/{args.patch} vs diffusers DiT, latent {h}x{w}x{c}, batch {args.batch}, "
        f"{args.precision}, {args.threads} thread(s), {args.sample_steps}-step Euler sampling; medians of "
        f"{args.train_steps} steps / {args.sample_runs} runs; load average {os.getloadavg()[0]:.2f}\n"
    )
    print("| model | params (M) | train img/s | sample img/s | train peak MiB | sample peak MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for impl in implementations:
        print(
            f"| {impl} | {runners[impl].params / 1e6:.1f} | {images_per_s(train_s[impl]):.3f} "
            f"| {images_per_s(sample_s[impl]):.4f} | {memory[(impl, 'train')]:.0f} "
            f"| {memory[(impl, 'sample')]:.0f} |"
        )
    for impl in implementations[:-1]:
        train = images_per_s(train_s[impl]) / images_per_s(train_s[THEIRS])
        sample = images_per_s(sample_s[impl]) / images_per_s(sample_s[THEIRS])
        print(f"| {impl} / diffusers | | {train:.2f}x | {sample:.2f}x | | |")


if __name__ == "__main__":
    main()
