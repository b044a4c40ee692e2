"""The latent cache: a dataset encoded once by a tokenizer, so that generators read latents, never images.

``python -m uniflow data encode-latents TOKENIZER SRC OUT`` writes::

    OUT/shard-00000.safetensors   samples [0, S) of SRC: latent (n x C x h x w), latent_flip (with --flip),
    OUT/shard-00001.safetensors   label (int64), index (int64, the sample's position in SRC), and the
    ...                           shard's per-channel float64 sums (see below)
    OUT/latent_stats.safetensors  per-channel mean/std of every stored latent (LatentNormalizer.save)
    OUT/manifest.json             written last: the cache is complete exactly when it exists

Shard ``k`` always covers the sample range ``[k*S, (k+1)*S)`` and is written by rank ``k % world``,
so the files do not depend on how many ranks wrote them, and every sample is encoded exactly once.
Each shard is written through a temporary file and renamed (``uniflow.io``): a shard on disk is
complete, so a rerun after a kill skips it and cleans up the temporary file the kill left behind.
Every shard records the settings it was made with (tokenizer hash, source, image size, shard size,
dtype, flip); a rerun with other settings into the same OUT is refused instead of mixing two caches.

The statistics are the sums a :class:`LatentNormalizer` accumulates, stored per shard: combining
them after all ranks finished is exact addition and reads a few numbers per shard instead of every
latent again. They describe the stored values (after the cast to ``dtype``), flipped latents
included, because that is what a generator trains on.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from uniflow.data.embedded import NUM_CLASSES, SHAPES, EmbeddedScenes
from uniflow.data.folder import eval_transform, scan_image_folder, try_load_rgb
from uniflow.generation.latent_stats import LatentNormalizer
from uniflow.io import PARTIAL_SUFFIX, atomic_path, atomic_write_text

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
STATS_FILE = "latent_stats.safetensors"
EMBEDDED_PREFIX = "embedded:"
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Key of the JSON record in each shard's safetensors metadata (which holds strings only).
_SHARD_META = "uniflow_latent_cache"


class CacheMismatch(ValueError):
    """OUT already holds shards made with other settings (another tokenizer, source, size, ...)."""


class IncompleteCache(RuntimeError):
    """Shards are missing: another rank has not finished, or died."""


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def shard_ranges(num_samples: int, shard_size: int) -> list[range]:
    """The fixed sample range of every shard (the last one may be shorter)."""
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    return [range(s, min(s + shard_size, num_samples)) for s in range(0, num_samples, shard_size)]


def rank_shards(num_shards: int, rank: int, world_size: int) -> list[int]:
    """The shards rank ``rank`` writes: round robin, so the short last shard does not idle a whole rank."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    return list(range(rank, num_shards, world_size))


# ---------------------------------------------------------------------------------------- sources
class ImageSource(Dataset):
    """The images to encode: ``{"image", "label", "index", "readable"}`` for every sample of SRC.

    An unreadable image comes back with ``readable`` False (and a blank image) so that the encoder
    drops it. The training reader substitutes the next readable image instead; here that would store
    one sample twice, and a cache promises each sample once.
    """

    def __init__(self, spec: str, size: int, split: str = "train", seed: int = 0, mode: str = "auto"):
        self.spec, self.size = spec, size
        self.transform = eval_transform(size)
        self.scenes: EmbeddedScenes | None = None
        self.samples: list[tuple[Path, int]] = []
        if spec.startswith(EMBEDDED_PREFIX):
            num = parse_embedded(spec)
            self.scenes = EmbeddedScenes(split, num, size=size, seed=seed)
            self.classes = list(SHAPES[:NUM_CLASSES])
            # Identity of the source in the shards' settings: what changes the images.
            self.description: dict[str, Any] = {"kind": "embedded", "num": num, "split": split, "seed": seed}
        else:
            root = Path(spec)
            self.samples, self.classes = scan_image_folder(root, mode)
            self.description = {"kind": "folder", "root": str(root.resolve()), "mode": mode}

    def __len__(self) -> int:
        return len(self.scenes) if self.scenes is not None else len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.scenes is not None:
            item = self.scenes[index]
            return {"image": item["image"], "label": item["label"], "index": index, "readable": True}
        path, label = self.samples[index]
        image = try_load_rgb(path, draft_side=self.size)
        if image is None:
            return {
                "image": torch.zeros(3, self.size, self.size),
                "label": label,
                "index": index,
                "readable": False,
            }
        return {"image": self.transform(image), "label": label, "index": index, "readable": True}


def parse_embedded(spec: str) -> int:
    """``embedded:N`` -> N (a ValueError that shows the expected form otherwise)."""
    text = spec.removeprefix(EMBEDDED_PREFIX)
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"expected {EMBEDDED_PREFIX}N with N >= 1 scenes, got {spec!r}")
    return int(text)


# ---------------------------------------------------------------------------------------- writing
@dataclass(frozen=True)
class CacheSettings:
    """What makes two shards parts of the same cache; a rerun must match them to resume."""

    tokenizer_sha256: str
    source: dict[str, Any]
    num_source: int
    image_size: int
    shard_size: int
    dtype: str
    flip: bool
    format: int = FORMAT_VERSION

    def differences(self, other: dict[str, Any]) -> list[str]:
        mine = asdict(self)
        return [f"{k}: {other.get(k)!r} on disk, {mine[k]!r} now" for k in mine if other.get(k) != mine[k]]


@dataclass
class RankReport:
    """What one rank did: shards written now, shards found complete, unreadable images in the written ones."""

    rank: int
    world_size: int
    written: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    unreadable: int = 0
    removed_partials: list[Path] = field(default_factory=list)


def read_shard_record(path: str | Path) -> dict[str, Any]:
    """The JSON record in a shard's metadata (settings, range, counts), without reading its tensors."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if _SHARD_META not in metadata:
        raise CacheMismatch(f"{path} is not a shard of a uniflow latent cache")
    return json.loads(metadata[_SHARD_META])


def _check_settings(path: Path, settings: CacheSettings) -> None:
    differences = settings.differences(read_shard_record(path)["settings"])
    if differences:
        raise CacheMismatch(
            f"{path.parent} holds a latent cache made with other settings ({'; '.join(differences)}): "
            "write to another OUT, or delete this one"
        )


def latent_shape(tokenizer: nn.Module, size: int) -> tuple[int, int, int]:
    """``C x h x w`` of the latent of a ``size`` square image (padded to the tokenizer's stride)."""
    height, width = tokenizer.padded_size(size, size)
    return tokenizer.cfg.decoder.latent_dim, height // tokenizer.stride, width // tokenizer.stride


@torch.no_grad()
def encode_shards(
    tokenizer: nn.Module,
    source: ImageSource,
    out: str | Path,
    settings: CacheSettings,
    *,
    rank: int,
    world_size: int,
    batch_size: int = 64,
    num_workers: int = 0,
    tokenizer_path: str = "",
) -> RankReport:
    """Encode this rank's shards of ``source`` into ``out`` (the per-rank half of :func:`encode_latents`).

    Shards already on disk (complete, because they are renamed into place) are checked against
    ``settings`` and skipped; temporary files of this rank's shards left by a kill are removed.
    The tokenizer is put in eval mode and runs on the device its parameters are on.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if len(source) != settings.num_source:
        raise ValueError(f"source has {len(source)} samples, settings say {settings.num_source}")
    ranges = shard_ranges(settings.num_source, settings.shard_size)
    report = RankReport(rank, world_size)
    pending = []
    for k in rank_shards(len(ranges), rank, world_size):
        path = out / shard_name(k)
        # Only this rank writes shard k in this run, so its leftovers are safe to delete here.
        for stale in sorted(out.glob(f".{path.name}.*{PARTIAL_SUFFIX}")):
            stale.unlink(missing_ok=True)
            report.removed_partials.append(stale)
        if path.is_file():
            _check_settings(path, settings)
            report.skipped.append(k)
        else:
            pending.append(k)
    if not pending:
        return report
    # A manifest left by an earlier run (whose shards were since deleted) would call this cache complete.
    (out / MANIFEST_FILE).unlink(missing_ok=True)

    tokenizer.eval()
    device = next(tokenizer.parameters()).device
    dtype = DTYPES[settings.dtype]
    shape = latent_shape(tokenizer, settings.image_size)
    # Batches never cross a shard boundary, so a shard is written as soon as its last batch is encoded.
    batches, owners = [], []
    for k in pending:
        r = ranges[k]
        for start in range(r.start, r.stop, batch_size):
            batches.append(list(range(start, min(start + batch_size, r.stop))))
            owners.append(k)
    loader = DataLoader(
        source, batch_sampler=batches, num_workers=num_workers, pin_memory=device.type == "cuda"
    )
    parts: dict[str, list[torch.Tensor]] = {}
    unreadable = 0
    for i, (k, batch) in enumerate(zip(owners, loader, strict=True)):
        keep = batch["readable"]
        unreadable += int((~keep).sum())
        images = batch["image"][keep].to(device)
        if len(images):
            views = torch.cat([images, images.flip(-1)]) if settings.flip else images
            z = tokenizer.encode(views).to("cpu", dtype)
            parts.setdefault("latent", []).append(z[: len(images)])
            if settings.flip:
                parts.setdefault("latent_flip", []).append(z[len(images) :])
        parts.setdefault("label", []).append(torch.as_tensor(batch["label"], dtype=torch.int64)[keep])
        parts.setdefault("index", []).append(torch.as_tensor(batch["index"], dtype=torch.int64)[keep])
        if i + 1 == len(owners) or owners[i + 1] != k:
            record = {
                "settings": asdict(settings),
                "start": ranges[k].start,
                "stop": ranges[k].stop,
                "unreadable": unreadable,
                "latent_shape": list(shape),
                "classes": source.classes,
                "tokenizer": tokenizer_path,
            }
            _write_shard(out / shard_name(k), parts, shape, dtype, record)
            report.written.append(k)
            report.unreadable += unreadable
            parts, unreadable = {}, 0
    return report


def _write_shard(
    path: Path,
    parts: dict[str, list[torch.Tensor]],
    shape: tuple[int, int, int],
    dtype: torch.dtype,
    record: dict[str, Any],
) -> None:
    keys = ["latent", "latent_flip"] if record["settings"]["flip"] else ["latent"]
    tensors = {
        key: torch.cat(parts[key]) if key in parts else torch.zeros(0, *shape, dtype=dtype) for key in keys
    }
    tensors["label"] = torch.cat(parts["label"])
    tensors["index"] = torch.cat(parts["index"])
    stats = LatentNormalizer(shape[0])
    for key in keys:
        if len(tensors[key]):
            stats.update(tensors[key].float())
    tensors |= {"stats_count": stats.count.reshape(1), "stats_sum": stats.sum, "stats_sum_sq": stats.sum_sq}
    record["count"] = len(tensors["index"])
    contiguous = {k: v.contiguous() for k, v in tensors.items()}
    _save_atomically(
        path, lambda tmp: save_file(contiguous, str(tmp), metadata={_SHARD_META: json.dumps(record)})
    )


def _save_atomically(path: Path, save: Callable[[Path], None]) -> None:
    """``save`` a safetensors file through :func:`atomic_path`.

    safetensors replaces the file it is given by a new one, private to its owner (0600); the mode
    atomic_path chose (what a plain open() gives) is put back, so a cache on a shared file system
    stays readable by the group that trains on it.
    """
    with atomic_path(path) as tmp:
        mode = stat.S_IMODE(tmp.stat().st_mode)
        save(tmp)
        os.chmod(tmp, mode)


# ---------------------------------------------------------------------------------------- finishing
def _missing_shards(out: Path, num_shards: int) -> list[int]:
    return [k for k in range(num_shards) if not (out / shard_name(k)).is_file()]


def finalize_cache(out: str | Path, *, timeout_s: float = 0.0, poll_s: float = 10.0) -> dict[str, Any]:
    """Once every shard exists: combine their statistics into ``latent_stats.safetensors``, then write
    ``manifest.json`` (returned). Run once, after all ranks finished (rank 0 of :func:`encode_latents`).

    Waits up to ``timeout_s`` for shards of other ranks by watching for their files: ranks are
    not joined by a collective, whose timeout a rank with more shards left after a resume could
    exceed, and which independent jobs (``--rank``/``--world-size``) do not have.
    """
    out = Path(out)
    first = out / shard_name(0)
    if not first.is_file():
        raise IncompleteCache(f"{first} does not exist: encode the shards first")
    settings = read_shard_record(first)["settings"]
    num_shards = math.ceil(settings["num_source"] / settings["shard_size"])
    deadline = time.monotonic() + timeout_s
    missing, reported = _missing_shards(out, num_shards), None
    while missing and time.monotonic() < deadline:
        if len(missing) != reported:  # a line per change, not per poll: a wait can last hours
            log.info("waiting for %d of %d shards from other ranks", len(missing), num_shards)
            reported = len(missing)
        time.sleep(min(poll_s, max(deadline - time.monotonic(), 0.0)))
        missing = _missing_shards(out, num_shards)
    if missing:
        names = ", ".join(shard_name(k) for k in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise IncompleteCache(
            f"{len(missing)} of {num_shards} shards are missing in {out} ({names}): another rank has not "
            "finished or died; rerun the same command (it resumes) to encode them"
        )
    shards, records = [], []
    normalizer: LatentNormalizer | None = None
    for k in range(num_shards):
        path = out / shard_name(k)
        record = read_shard_record(path)
        if record["settings"] != settings:
            raise CacheMismatch(f"{path} was made with other settings than {first}")
        with safe_open(str(path), framework="pt") as f:
            if normalizer is None:
                normalizer = LatentNormalizer(record["latent_shape"][0])
            normalizer.count += f.get_tensor("stats_count").reshape(())
            normalizer.sum += f.get_tensor("stats_sum")
            normalizer.sum_sq += f.get_tensor("stats_sum_sq")
        records.append(record)
        shards.append(
            {"file": path.name, "start": record["start"], "stop": record["stop"], "count": record["count"]}
        )
    assert normalizer is not None  # num_shards >= 1: shard 0 exists
    if normalizer.count.item() == 0:
        raise ValueError(f"no latents in {out}: every image of the source was unreadable")
    normalizer.finalize()
    _save_atomically(out / STATS_FILE, normalizer.save)
    last = records[-1]
    manifest = {
        "format": FORMAT_VERSION,
        "tokenizer": last["tokenizer"],
        "tokenizer_sha256": settings["tokenizer_sha256"],
        "source": settings["source"],
        "num_source": settings["num_source"],
        "count": sum(s["count"] for s in shards),
        "unreadable": sum(r["unreadable"] for r in records),
        "image_size": settings["image_size"],
        "latent_shape": last["latent_shape"],
        "dtype": settings["dtype"],
        "flip": settings["flip"],
        "classes": last["classes"],
        "shard_size": settings["shard_size"],
        "shards": shards,
        "stats": STATS_FILE,
    }
    atomic_write_text(out / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    return manifest


# ---------------------------------------------------------------------------------------- one call
def rank_and_world_from_env() -> tuple[int, int]:
    """This process's rank and the world size as torchrun (RANK, WORLD_SIZE) or srun (SLURM_PROCID,
    SLURM_STEP_NUM_TASKS) set them; ``(0, 1)`` when neither launched it.

    Not SLURM_NTASKS: an sbatch script that runs the command without srun also has it (the job's
    task count, with SLURM_PROCID 0), and would then encode one rank's shards and wait for the rest.
    """
    for rank_key, world_key in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS")):
        if rank_key in os.environ and world_key in os.environ:
            return int(os.environ[rank_key]), int(os.environ[world_key])
    return 0, 1


def default_device() -> torch.device:
    """This rank's GPU (LOCAL_RANK under torchrun, SLURM_LOCALID under srun), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local = os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))
    return torch.device("cuda", int(local))


@dataclass
class CacheReport:
    rank: RankReport
    manifest: dict[str, Any] | None  # on the rank that finalised; None on the others


def encode_latents(
    tokenizer_ref: str | Path,
    src: str,
    out: str | Path,
    *,
    size: int | None = None,
    shard_size: int = 1024,
    batch_size: int = 64,
    dtype: str = "float32",
    flip: bool = False,
    split: str = "train",
    seed: int = 0,
    mode: str = "auto",
    num_workers: int = 0,
    device: str | torch.device | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    wait_timeout_s: float = 24 * 3600.0,
) -> CacheReport:
    """Encode ``src`` (an image folder or ``embedded:N``) with the tokenizer export or run directory
    ``tokenizer_ref`` into the cache ``out``. Every rank calls it; rank 0 then waits for the other
    ranks' shards and writes the statistics and the manifest. ``rank``/``world_size`` default to the
    launcher's environment (torchrun, srun)."""
    from uniflow.metrics.inception import sha256_file
    from uniflow.run_dir import RunDirectory
    from uniflow.tokenizer.model import WEIGHTS_FILE, UniFlowTokenizer

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    env_rank, env_world = rank_and_world_from_env()
    rank = env_rank if rank is None else rank
    world_size = env_world if world_size is None else world_size
    export = RunDirectory.find_export(tokenizer_ref, "tokenizer", WEIGHTS_FILE)
    # Missing inputs are reported before the tokenizer is loaded (minutes for a large encoder).
    if not src.startswith(EMBEDDED_PREFIX) and not Path(src).is_dir():
        raise FileNotFoundError(f"image folder not found: {src}")
    if Path(out).exists() and not Path(out).is_dir():
        raise NotADirectoryError(f"OUT must be a directory, {out} is a file")
    tokenizer = UniFlowTokenizer.from_pretrained(export).to(device or default_device())
    size = size or tokenizer.image_size
    source = ImageSource(src, size, split=split, seed=seed, mode=mode)
    settings = CacheSettings(
        tokenizer_sha256=sha256_file(export / WEIGHTS_FILE),
        source=source.description,
        num_source=len(source),
        image_size=size,
        shard_size=shard_size,
        dtype=dtype,
        flip=flip,
    )
    report = encode_shards(
        tokenizer,
        source,
        out,
        settings,
        rank=rank,
        world_size=world_size,
        batch_size=batch_size,
        num_workers=num_workers,
        tokenizer_path=str(export.resolve()),
    )
    manifest = finalize_cache(out, timeout_s=wait_timeout_s) if rank == 0 else None
    return CacheReport(report, manifest)


# ---------------------------------------------------------------------------------------- reading
def read_manifest(root: str | Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"not a complete latent cache: {path} is missing (python -m uniflow data encode-latents writes it last)"
        )
    return json.loads(path.read_text())


class LatentShards(Dataset):
    """A complete latent cache as ``{"latent": float32 C x h x w, "label": int64, "index": int64}`` samples.

    ``random_flip``: with a cache written with ``--flip``, each access returns the latent of the
    flipped image with probability 1/2 (the augmentation the generator would have had on images).
    Latents are read per sample from the memory-mapped shards; labels and indices are loaded whole
    (16 bytes a sample) so samplers can balance classes without touching the latents.
    """

    def __init__(self, root: str | Path, random_flip: bool = False):
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        if random_flip and not self.manifest["flip"]:
            raise ValueError(
                f"random_flip needs a cache written with --flip; {self.root} has no flipped latents"
            )
        self.random_flip = random_flip
        shards = [s for s in self.manifest["shards"] if s["count"] > 0]
        self.files = [self.root / s["file"] for s in shards]
        self.offsets = [0]
        labels, indices = [], []
        for path in self.files:
            with safe_open(str(path), framework="pt") as f:
                labels.append(f.get_tensor("label"))
                indices.append(f.get_tensor("index"))
            self.offsets.append(self.offsets[-1] + len(labels[-1]))
        self.labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)
        self.indices = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.int64)
        self._handles: dict[int, Any] = {}

    @property
    def classes(self) -> list[str]:
        return self.manifest["classes"]

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["latent_shape"])

    def normalizer(self) -> LatentNormalizer:
        """The per-channel statistics of this cache (what a generator standardises with, and undoes)."""
        return LatentNormalizer.load(self.root / self.manifest["stats"])

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getstate__(self) -> dict[str, Any]:
        # Open shard handles cannot be pickled to DataLoader workers; each worker opens its own.
        return {**self.__dict__, "_handles": {}}

    def _shard(self, k: int) -> Any:
        if k not in self._handles:
            self._handles[k] = safe_open(str(self.files[k]), framework="pt")
        return self._handles[k]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for a cache of {len(self)}")
        k = bisect.bisect_right(self.offsets, i) - 1
        local = i - self.offsets[k]
        key = "latent_flip" if self.random_flip and torch.rand(()) < 0.5 else "latent"
        latent = self._shard(k).get_slice(key)[local : local + 1][0].float()
        return {"latent": latent, "label": self.labels[i], "index": self.indices[i]}
