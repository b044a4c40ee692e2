"""Frozen features for probes and comparisons: one interface for a tokenizer and for the raw encoder.

A :class:`FeatureSource` is an encoder adapter plus how its inputs are padded (and, for a tokenizer,
its latent projection). The tokenizer's student and the untouched encoder it started from (the
baseline every probe result is compared with) go through the same :meth:`FeatureSource.blocks`,
so a difference between their numbers is a difference between their weights, never between two
preprocessing paths.

Features can be read from any block (1-based, negative from the end; -1 is the last) or from the
tokenizer's latent, and come pooled (mean over patch tokens, ``B x D``), dense (``B x N x D``) or as
a grid (``B x D x h x w``). Prefix tokens (class, registers) are never included: distillation does
not constrain them, and the tokenizer's latent does not read them.

Cache layout (:class:`FeatureCache`), one directory per (model hash, layer, pooling, dataset, split,
sample count) under ``$UNIFLOW_CACHE/features/``::

    <dataset>-<split>-n<count>/<model hash[:16]>/<layer>-<pooling>/part-00001-of-00003.safetensors

Rank ``r`` of ``W`` computes exactly the samples :func:`uniflow.metrics.ledger.shard_indices` gives
it (the wrapped padding is skipped, so no sample is computed twice) and writes them, with their
dataset indices, as one part, atomically. The cache is complete when all ``W`` parts exist; a
complete cache of any world size is reused without running the model.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import Dataset

from uniflow.encoders import EncoderAdapter, EncoderFeatures, build_encoder
from uniflow.io import atomic_path
from uniflow.metrics.inception import cache_dir
from uniflow.metrics.ledger import shard_indices
from uniflow.tokenizer.config import TokenizerConfig, load_tokenizer_config
from uniflow.tokenizer.model import CONFIG_FILE, UniFlowTokenizer, check_images, pad_to_stride

POOLINGS = ("pooled", "dense", "grid")
LATENT = "latent"
Layer = int | str
_PART = re.compile(r"part-(\d{5})-of-(\d{5})\.safetensors")


def _hash_modules(digest: Any, modules: Mapping[str, nn.Module]) -> None:
    for prefix, module in modules.items():
        for name, tensor in sorted(module.state_dict().items()):
            flat = tensor.detach().reshape(-1).contiguous().cpu()
            digest.update(f"{prefix}.{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes())


class FeatureSource:
    """Frozen features of one encoder: a tokenizer's student or a raw (baseline) encoder.

    Build it with :meth:`of_tokenizer`, :meth:`from_pretrained` or :meth:`baseline`; the constructor
    takes the parts directly (an adapter, the padding stride, optionally the latent projection) and
    puts them in eval mode, since frozen features never see dropout or batch statistics.
    """

    def __init__(
        self,
        encoder: EncoderAdapter,
        stride: int,
        description: str,
        latent: nn.Module | None = None,
    ) -> None:
        if stride % encoder.patch_size:
            raise ValueError(f"stride {stride} is not a multiple of the patch size {encoder.patch_size}")
        self.encoder = encoder.eval()
        self.stride = stride
        self.description = description
        self.latent = latent.eval() if latent is not None else None

    # ------------------------------------------------------------------ construction
    @classmethod
    def of_tokenizer(
        cls, tokenizer: UniFlowTokenizer, description: str = "tokenizer student"
    ) -> FeatureSource:
        """The tokenizer's student (its adapted encoder) and its latent projection."""
        return cls(tokenizer.student, tokenizer.stride, description, latent=tokenizer.latent)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, map_location: str | torch.device = "cpu"
    ) -> FeatureSource:
        """The student of a ``save_pretrained`` tokenizer directory (a run's ``tokenizer/`` export)."""
        tokenizer = UniFlowTokenizer.from_pretrained(directory, map_location)
        return cls.of_tokenizer(tokenizer, f"student of {directory}")

    @classmethod
    def baseline(cls, tokenizer: str | Path | TokenizerConfig, seed: int = 0) -> FeatureSource:
        """The untouched encoder a tokenizer started from: its config's ``tokenizer.encoder``, built with
        :func:`build_encoder`, with the checkpoint (or hub weights) the config names.

        ``tokenizer`` is a tokenizer directory, a config file or a config. A saved tokenizer's config
        keeps the checkpoint path, which ``from_pretrained`` drops for the student only. When the
        config names no weights the encoder was trained from scratch and the baseline is its random
        initialisation, drawn from ``seed`` so it is the same in every process (the description says so).
        """
        if isinstance(tokenizer, TokenizerConfig):
            cfg = tokenizer
        else:
            path = Path(tokenizer)
            cfg = load_tokenizer_config(path / CONFIG_FILE if path.is_dir() else path)
        enc = cfg.encoder
        if enc.checkpoint:
            weights = f"checkpoint {enc.checkpoint}"
        elif enc.pretrained:
            weights = f"pretrained {enc.pretrained_tag or 'hub'} weights"
        else:
            weights = f"random initialisation, seed {seed} (the config names no pretrained weights)"
        # A private generator state: building must neither depend on nor disturb the caller's RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = build_encoder(enc)
        stride = encoder.patch_size * (2 if cfg.decoder.token_merge else 1)
        return cls(encoder, stride, f"raw encoder {enc.backend}:{enc.name}, {weights}")

    # ------------------------------------------------------------------ properties
    @property
    def depth(self) -> int:
        return self.encoder.depth

    @property
    def width(self) -> int:
        return self.encoder.width

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def model_hash(self) -> str:
        """sha256 of everything that determines the features: weights, normalisation, padding stride.

        Recomputed on every call (seconds for a large encoder), so a source whose weights changed
        since the last extraction never reads the features of the old weights from the cache.
        """
        digest = hashlib.sha256()
        digest.update(
            f"{type(self.encoder).__name__}:{self.stride}:{self.encoder.mean}:{self.encoder.std}".encode()
        )
        modules = {"encoder": self.encoder, **({"latent": self.latent} if self.latent is not None else {})}
        _hash_modules(digest, modules)
        return digest.hexdigest()

    def resolve_layer(self, layer: Layer) -> Layer:
        """A 1-based block number in ``1..depth`` (negative counts from the end), or ``"latent"``."""
        if layer == LATENT:
            if self.latent is None:
                raise ValueError(f"{self.description} has no latent: only a tokenizer does")
            return LATENT
        if isinstance(layer, bool) or not isinstance(layer, int) or not (1 <= abs(layer) <= self.depth):
            raise ValueError(
                f"layer must be a block in 1..{self.depth}, -{self.depth}..-1 (from the end) or "
                f"{LATENT!r}, got {layer!r}"
            )
        return layer if layer > 0 else self.depth + 1 + layer

    # ------------------------------------------------------------------ extraction
    @torch.no_grad()
    def blocks(self, images: torch.Tensor) -> EncoderFeatures:
        """Every block's patch tokens for images ``B x 3 x H x W`` in [0, 1]: the one path of both sources."""
        check_images(images)
        x = pad_to_stride(images.to(self.device), self.stride)
        return self.encoder(self.encoder.normalize(x))

    @torch.no_grad()
    def extract(self, images: torch.Tensor, layer: Layer = -1, pooling: str = "pooled") -> torch.Tensor:
        """Features of one block (or the latent): ``B x D`` pooled, ``B x N x D`` dense, ``B x D x h x w`` grid."""
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        layer = self.resolve_layer(layer)
        features = self.blocks(images)
        if layer == LATENT:
            assert self.latent is not None  # resolve_layer refused a source without one
            grid = self.latent(features.last, features.grid)
            tokens = grid.flatten(2).transpose(1, 2)
        else:
            tokens = features.layers[layer - 1]
            grid = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *features.grid)
        if pooling == "pooled":
            return tokens.mean(1)
        return tokens if pooling == "dense" else grid


# ---------------------------------------------------------------------------------------- data
def _image(item: Any) -> torch.Tensor:
    image = item["image"] if isinstance(item, Mapping) else item
    return image.float() / 255 if image.dtype == torch.uint8 else image.float()


def image_batches(
    dataset: Dataset, indices: torch.Tensor, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images in [0, 1], dataset indices)`` of ``indices`` in batches. Items are an image tensor
    (uint8 or float) or a mapping with ``image`` (the embedded scenes, the suite's readers)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        yield torch.stack([_image(dataset[int(i)]) for i in chunk]), chunk


def rank_share(num_samples: int, rank: int, world_size: int) -> torch.Tensor:
    """This rank's dataset indices, each sample on exactly one rank (the sampler's padding dropped)."""
    indices, valid = shard_indices(num_samples, rank, world_size)
    return indices[valid]


# ---------------------------------------------------------------------------------------- cache
@dataclass(frozen=True)
class FeatureCache:
    """One cache entry: its directory (see the module docstring) and the key it was made for."""

    directory: Path
    num_samples: int
    layer: Layer
    pooling: str

    @classmethod
    def for_source(
        cls,
        source: FeatureSource,
        dataset: str,
        split: str,
        num_samples: int,
        layer: Layer = -1,
        pooling: str = "pooled",
        root: str | Path | None = None,
    ) -> FeatureCache:
        """The entry of (model hash, layer, pooling, dataset, split) for ``num_samples`` samples."""
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        for what, name in (("dataset", dataset), ("split", split)):
            if not re.fullmatch(r"[\w.-]+", name):
                raise ValueError(
                    f"{what} {name!r} must be a plain name (letters, digits, . _ -): it names a folder"
                )
        layer = source.resolve_layer(layer)
        block = LATENT if layer == LATENT else f"block{layer:03d}"
        base = Path(root) if root is not None else cache_dir() / "features"
        directory = (
            base / f"{dataset}-{split}-n{num_samples}" / source.model_hash()[:16] / f"{block}-{pooling}"
        )
        return cls(directory, num_samples, layer, pooling)

    def part(self, rank: int, world_size: int) -> Path:
        return self.directory / f"part-{rank:05d}-of-{world_size:05d}.safetensors"

    def complete_world_size(self) -> int | None:
        """The smallest world size whose parts all exist, or None while no set is complete."""
        found: dict[int, set[int]] = {}
        for path in self.directory.glob("part-*-of-*.safetensors") if self.directory.is_dir() else ():
            match = _PART.fullmatch(path.name)
            if match:
                found.setdefault(int(match.group(2)), set()).add(int(match.group(1)))
        complete = [world for world, ranks in found.items() if ranks == set(range(world))]
        return min(complete) if complete else None

    def write_part(self, rank: int, world_size: int, features: torch.Tensor, index: torch.Tensor) -> Path:
        """Write one rank's features with their dataset indices, atomically (a partial part never exists)."""
        path = self.part(rank, world_size)
        tensors = {
            "features": features.detach().float().contiguous().cpu(),
            "index": index.long().contiguous(),
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"num_samples": str(self.num_samples)})
        return path

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All samples' features in dataset order and their indices (``0..n-1``), from a complete set."""
        world = self.complete_world_size()
        if world is None:
            raise FileNotFoundError(
                f"feature cache {self.directory} is not complete: some rank's part is missing"
            )
        parts = [load_file(str(self.part(rank, world))) for rank in range(world)]
        index = torch.cat([p["index"] for p in parts])
        # A rank whose share was only padding (fewer samples than ranks) wrote an empty part.
        features = torch.cat([p["features"] for p in parts if len(p["index"])])
        order = torch.argsort(index)
        if not torch.equal(index[order], torch.arange(self.num_samples)):
            raise RuntimeError(
                f"feature cache {self.directory}: its {world} parts hold {len(index)} samples, not each of "
                f"0..{self.num_samples - 1} exactly once; delete the folder and extract again"
            )
        return features[order], index[order]


def extract_part(
    source: FeatureSource,
    dataset: Dataset,
    cache: FeatureCache,
    *,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 64,
) -> bool:
    """Compute and write this rank's part of ``cache`` (made by :meth:`FeatureCache.for_source` for
    ``source``) unless the cache is complete or the part exists.

    Returns whether the model ran. No collectives: ranks may be simulated one after another.
    """
    if len(dataset) != cache.num_samples:
        raise ValueError(
            f"the dataset has {len(dataset)} samples, the cache entry is for {cache.num_samples}"
        )
    if cache.complete_world_size() is not None or cache.part(rank, world_size).is_file():
        return False
    mine = rank_share(cache.num_samples, rank, world_size)
    chunks = [
        source.extract(images, cache.layer, cache.pooling).cpu()
        for images, _ in image_batches(dataset, mine, batch_size)
    ]
    features = torch.cat(chunks) if chunks else torch.empty(0)
    cache.write_part(rank, world_size, features, mine)
    return True


def cached_features(
    source: FeatureSource,
    dataset: Dataset,
    *,
    dataset_name: str,
    split: str,
    layer: Layer = -1,
    pooling: str = "pooled",
    batch_size: int = 64,
    root: str | Path | None = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> torch.Tensor:
    """Features of every sample of ``dataset`` in order, extracted once across ranks and cached.

    Each rank writes its share; under torch.distributed the ranks then wait for each other and
    every rank reads the complete set. Rank and world size default to torch.distributed's.
    """
    distributed = dist.is_available() and dist.is_initialized()
    if rank is None or world_size is None:
        rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    cache = FeatureCache.for_source(source, dataset_name, split, len(dataset), layer, pooling, root)
    extract_part(
        source,
        dataset,
        cache,
        rank=rank,
        world_size=world_size,
        batch_size=batch_size,
    )
    if distributed:
        dist.barrier()
    return cache.load()[0]
