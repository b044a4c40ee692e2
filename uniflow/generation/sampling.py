"""Samples of a generator run in ADM's format: ``python -m uniflow sample RUN --num N --out samples.npz``.

The output is what ADM's evaluator (and ``eval.data.imagenet_gen``) reads: ``arr_0`` uint8
``N x H x W x 3`` and ``arr_1`` int64 labels, in sample order. Sample ``i`` has the label
:func:`class_labels` gives it and belongs to chunk ``i // chunk_size``; a chunk's noise comes from
(seed, chunk) alone, so the samples do not depend on how many ranks made them. Chunk ``k`` is made
by rank ``k % world`` and written atomically as ``OUT.parts/chunk-NNNNNN.npz``: every sample is made
exactly once, and a rerun after a kill skips the chunks on disk. Rank 0 then waits for the other
ranks' chunks, joins them into OUT and removes the parts. The settings (generator hash, labels,
sampling, seed, chunk size) are stored with the parts; a rerun with others is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import shutil
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uniflow.generation.config import SamplingConfig
from uniflow.generation.pretrained import WEIGHTS_FILE, LatentGenerator
from uniflow.io import atomic_path, atomic_write_text

SETTINGS_FILE = "settings.json"
PRECISIONS = ("32-true", "bf16-mixed")


def class_labels(num_classes: int, num: int | None, per_class: int | None, seed: int = 0) -> torch.Tensor:
    """Labels of the samples: ``per_class`` of each class in class order (``num``, if given, must
    equal ``per_class * num_classes``), or ``num`` labels drawn uniformly with ``seed``."""
    if per_class is not None:
        if per_class < 1:
            raise ValueError(f"--per-class must be at least 1, got {per_class}")
        if num is not None and num != per_class * num_classes:
            raise ValueError(
                f"--num {num} is not --per-class {per_class} x {num_classes} classes = {per_class * num_classes}"
            )
        return torch.arange(num_classes).repeat_interleave(per_class)
    if num is None or num < 1:
        raise ValueError(f"give --num (at least 1) or --per-class, got num={num}")
    return torch.randint(num_classes, (num,), generator=torch.Generator().manual_seed(seed))


def chunk_generator(seed: int, chunk: int, device: torch.device) -> torch.Generator:
    """The random stream of chunk ``chunk``: a function of (seed, chunk) only."""
    state = int(np.random.SeedSequence([seed, chunk]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator(device=device).manual_seed(state)


@dataclass
class SampleSettings:
    """Everything that decides the samples; stored with the parts and in the provenance of scores."""

    generator_sha256: str
    tokenizer_sha256: str
    labels_sha256: str
    label_sampling: str
    num: int
    seed: int
    chunk_size: int
    precision: str
    weights: str
    sampling: dict[str, Any]


class SampleMaker:
    """A generator run and its tokenizer on ``device``, making chunks of uint8 images for fixed labels."""

    def __init__(
        self,
        run: str | Path,
        labels: torch.Tensor,
        label_sampling: str,
        sampling: SamplingConfig | None = None,
        seed: int = 0,
        chunk_size: int = 64,
        precision: str = "32-true",
        device: str | torch.device = "cpu",
    ):
        from uniflow.metrics.inception import sha256_file
        from uniflow.run_dir import RunDirectory

        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
        if chunk_size < 1:
            raise ValueError(f"chunk size must be at least 1, got {chunk_size}")
        self.device = torch.device(device)
        export = RunDirectory.find_export(run, "generator", WEIGHTS_FILE)
        self.export = export.resolve()
        self.bundle = LatentGenerator.from_pretrained(export, self.device)
        self.bundle.check_labels(labels)
        self.tokenizer = self.bundle.tokenizer_ref.load(self.device)
        self.labels, self.precision = labels, precision
        self.sampling = sampling or self.bundle.cfg.sampling
        self.image_size = self.bundle.image_size
        self.num_samples = len(labels)
        self.settings = SampleSettings(
            generator_sha256=sha256_file(export / WEIGHTS_FILE),
            tokenizer_sha256=self.bundle.tokenizer_ref.sha256,
            labels_sha256=hashlib.sha256(labels.numpy().tobytes()).hexdigest(),
            label_sampling=label_sampling,
            num=len(labels),
            seed=seed,
            chunk_size=chunk_size,
            precision=precision,
            weights=self.bundle.weights,
            sampling=dataclasses.asdict(self.sampling),
        )

    @property
    def num_chunks(self) -> int:
        return -(-self.num_samples // self.settings.chunk_size)

    def chunk_range(self, k: int) -> range:
        size = self.settings.chunk_size
        return range(k * size, min((k + 1) * size, self.num_samples))

    @torch.no_grad()
    def make_chunk(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Chunk ``k``: (uint8 images B x 3 x H x W, labels, sample indices)."""
        from uniflow.metrics.inception import to_uint8

        index = torch.arange(self.chunk_range(k).start, self.chunk_range(k).stop)
        labels = self.labels[index].to(self.device)
        generator = chunk_generator(self.settings.seed, k, self.device)
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.precision == "bf16-mixed"
            else contextlib.nullcontext()
        )
        with autocast:
            z = self.bundle.sample_latents(labels, self.sampling, generator=generator)
        size = (self.image_size, self.image_size)
        images = self.tokenizer.decode(z, steps=self.sampling.decode_steps, size=size, generator=generator)
        return to_uint8(images).cpu(), labels.cpu(), index

    def rank_chunks(self, rank: int, world_size: int) -> list[int]:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        return list(range(rank, self.num_chunks, world_size))

    def provenance(self) -> dict[str, Any]:
        return {
            "generator": str(self.export),
            "tokenizer": self.bundle.tokenizer_ref.path,
            "steps": self.sampling.steps,
            "sampler": self.sampling.sampler,
            "guidance": {"scale": self.sampling.cfg_scale, "interval": self.sampling.guidance_interval},
            **dataclasses.asdict(self.settings),
        }


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def chunk_path(parts: Path, k: int) -> Path:
    return parts / f"chunk-{k:06d}.npz"


def _claim_parts(parts: Path, settings: SampleSettings) -> None:
    """Record the settings with the parts, or check that the parts on disk were made with the same."""
    path = parts / SETTINGS_FILE
    mine = dataclasses.asdict(settings)
    if path.is_file():
        theirs = json.loads(path.read_text())
        differences = [k for k in mine if theirs.get(k) != mine[k]]
        if differences:
            raise ValueError(
                f"{parts} holds samples made with other settings ({', '.join(differences)} differ): "
                "use another --out, or delete the parts"
            )
        return
    # Ranks starting together may both write it: with the same settings, the same bytes.
    atomic_write_text(path, json.dumps(mine, indent=2))


def write_chunks(maker: SampleMaker, out: Path, rank: int, world_size: int) -> list[int]:
    """Make this rank's missing chunks of ``out``'s parts; returns the chunks made now."""
    parts = parts_dir(out)
    _claim_parts(parts, maker.settings)
    made = []
    for k in maker.rank_chunks(rank, world_size):
        path = chunk_path(parts, k)
        if path.is_file():
            continue
        images, labels, index = maker.make_chunk(k)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, images=images.permute(0, 2, 3, 1).numpy(), labels=labels.numpy(), index=index.numpy())
        made.append(k)
        print(f"rank {rank}: chunk {k + 1}/{maker.num_chunks} ({len(index)} samples)", flush=True)
    return made


def join_chunks(out: Path, num_chunks: int, timeout_s: float = 0.0, poll_s: float = 10.0) -> Path:
    """Wait (up to ``timeout_s``) for every chunk, then write ``out`` as ADM's npz and remove the parts."""
    parts = parts_dir(out)
    deadline = time.monotonic() + timeout_s
    missing = [k for k in range(num_chunks) if not chunk_path(parts, k).is_file()]
    while missing and time.monotonic() < deadline:
        time.sleep(poll_s)
        missing = [k for k in missing if not chunk_path(parts, k).is_file()]
    if missing:
        raise RuntimeError(
            f"{len(missing)} of {num_chunks} chunks are missing in {parts}: another rank has not finished "
            "or died; rerun the same command (it resumes) to make them"
        )
    first = np.load(chunk_path(parts, 0))
    count = sum(len(np.load(chunk_path(parts, k))["index"]) for k in range(num_chunks))
    shape = (count, *first["images"].shape[1:])
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        # arr_0 is assembled in a memory-mapped file: 50k samples at 256 px are 10 GB.
        images_npy, labels = parts / "arr_0.npy", np.empty(count, np.int64)
        images = np.lib.format.open_memmap(images_npy, mode="w+", dtype=np.uint8, shape=shape)
        seen = np.zeros(count, bool)
        for k in range(num_chunks):
            chunk = np.load(chunk_path(parts, k))
            images[chunk["index"]] = chunk["images"]
            labels[chunk["index"]] = chunk["labels"]
            seen[chunk["index"]] = True
        if not seen.all():
            raise RuntimeError(f"samples {np.flatnonzero(~seen)[:5].tolist()} are in no chunk of {parts}")
        images.flush()
        del images
        archive.write(images_npy, "arr_0.npy")
        with archive.open("arr_1.npy", "w") as f:
            np.lib.format.write_array(f, labels)
    shutil.rmtree(parts)
    return out


def iter_chunks(
    maker: SampleMaker, rank: int, world_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's chunks as (uint8 images, sample indices), made on the fly (the eval suite's source)."""
    for k in maker.rank_chunks(rank, world_size):
        images, _, index = maker.make_chunk(k)
        yield images, index


def sample_main(argv: list[str]) -> int:
    """``sample RUN --num N [--per-class K] --cfg S --steps T --out samples.npz``."""
    from uniflow.generation.latent_cache import default_device, rank_and_world_from_env

    parser = argparse.ArgumentParser(
        prog="python -m uniflow sample",
        description="Samples of a generator run as an ADM .npz (uint8 arr_0 N x H x W x 3, arr_1 labels). "
        "Sharded over the ranks of torchrun/srun, each sample exactly once; rerun the same command to resume.",
        epilog="example: python -m uniflow sample runs/in1k_dit_xl --num 50000 --per-class 50 --cfg 1.5 "
        "--steps 50 --out samples.npz  (torchrun --nproc-per-node 8 -m uniflow sample ... on 8 GPUs)",
    )
    parser.add_argument("run", help="a generator run directory (or its generator/ export)")
    parser.add_argument("--num", type=int, help="number of samples (random labels unless --per-class)")
    parser.add_argument("--per-class", type=int, help="samples per class, classes in order (ADM: 50)")
    parser.add_argument("--cfg", type=float, help="guidance scale (default: the run's generator.sampling)")
    parser.add_argument(
        "--interval", type=float, nargs=2, metavar=("LO", "HI"), help="FlowDiT guidance interval"
    )
    parser.add_argument("--steps", type=int, help="flow steps (default: the run's)")
    parser.add_argument("--sampler", choices=("euler", "heun"), help="ODE sampler (default: the run's)")
    parser.add_argument("--decode-steps", type=int, help="the tokenizer's decoding steps (default: its own)")
    parser.add_argument("--seed", type=int, default=0, help="noise of chunk k comes from (seed, k)")
    parser.add_argument("--chunk-size", type=int, default=64, help="samples per chunk file and forward pass")
    parser.add_argument("--precision", choices=PRECISIONS, default="32-true")
    parser.add_argument("--device", help="default: this rank's GPU, else the CPU")
    parser.add_argument(
        "--wait-timeout", type=float, default=24 * 3600.0, help="rank 0's wait for the others (s)"
    )
    parser.add_argument("--out", required=True, type=Path, help="the .npz to write")
    args = parser.parse_args(argv)
    rank, world = rank_and_world_from_env()
    device = torch.device(args.device) if args.device else default_device()
    if args.out.is_file() and not parts_dir(args.out).exists():
        print(f"{args.out} is complete (delete it to sample again)")
        return 0
    own = LatentGenerator.from_pretrained(args.run)
    overrides = {
        "cfg_scale": args.cfg,
        "guidance_interval": list(args.interval) if args.interval else None,
        "steps": args.steps,
        "sampler": args.sampler,
        "decode_steps": args.decode_steps,
    }
    sampling = dataclasses.replace(own.cfg.sampling, **{k: v for k, v in overrides.items() if v is not None})
    try:
        labels = class_labels(own.num_classes, args.num, args.per_class, args.seed)
    except ValueError as err:
        parser.error(str(err))
    label_sampling = f"{args.per_class} per class" if args.per_class else f"uniform random (seed {args.seed})"
    maker = SampleMaker(
        args.run, labels, label_sampling, sampling, args.seed, args.chunk_size, args.precision, device
    )
    made = write_chunks(maker, args.out, rank, world)
    print(
        f"rank {rank}: made {len(made)} chunks, {len(maker.rank_chunks(rank, world)) - len(made)} were on disk"
    )
    if rank == 0:
        join_chunks(args.out, maker.num_chunks, timeout_s=args.wait_timeout)
        print(f"wrote {args.out}: {maker.num_samples} samples, {maker.image_size} px", file=sys.stderr)
    return 0
