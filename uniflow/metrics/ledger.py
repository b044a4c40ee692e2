"""Exactly-once bookkeeping for distributed evaluation.

A distributed sampler gives every rank the same number of samples by repeating some: those
repeats must not be counted. Each batch therefore comes with a validity mask (False for padding)
and, optionally, each sample's dataset index; an index seen before on this rank is dropped, and an
index seen on two ranks is an error at sync time (statistics are already summed by then, so the
only honest outcome is to refuse the number).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist


def shard_indices(num_samples: int, rank: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's dataset indices and validity mask, in ``DistributedSampler(shuffle=False)`` order.

    Every rank gets ceil(num_samples / world_size) indices; like the sampler, the tail is padded by
    wrapping around to the start, and those wrapped positions are marked invalid.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    if num_samples < 1:
        raise ValueError(f"need at least one sample to shard, got {num_samples}")
    per_rank = math.ceil(num_samples / world_size)
    positions = torch.arange(rank, per_rank * world_size, world_size)
    return positions % num_samples, positions < num_samples


def distributed_world(group: dist.ProcessGroup | None = None) -> int:
    """World size of ``group``, 1 outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group)
    return 1


class SampleLedger:
    """Decides which samples of a batch may enter a metric's statistics."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.duplicates_dropped = 0
        self.synced = False

    def accept(
        self,
        batch: int,
        valid: torch.Tensor | Sequence[bool] | None = None,
        index: torch.Tensor | Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Boolean mask over the batch: valid and, when indices are given, not seen before."""
        if self.synced:
            raise RuntimeError("update after sync(): the statistics already hold every rank's samples")
        keep = torch.ones(batch, dtype=torch.bool)
        if valid is not None:
            valid = torch.as_tensor(valid, dtype=torch.bool).cpu().reshape(-1)
            if valid.shape[0] != batch:
                raise ValueError(f"valid has {valid.shape[0]} entries for a batch of {batch}")
            keep &= valid
        if index is not None:
            ids = torch.as_tensor(index).cpu().reshape(-1).tolist()
            if len(ids) != batch:
                raise ValueError(f"index has {len(ids)} entries for a batch of {batch}")
            for i, sample_id in enumerate(ids):
                if not keep[i]:
                    continue
                if sample_id in self.seen:
                    keep[i] = False
                    self.duplicates_dropped += 1
                else:
                    self.seen.add(int(sample_id))
        return keep

    def check_across_ranks(self, group: dist.ProcessGroup | None = None) -> None:
        """Raise if any index was counted on more than one rank; marks the ledger synced."""
        world = distributed_world(group)
        if world > 1:
            shards: list[list[int]] = [[] for _ in range(world)]
            dist.all_gather_object(shards, sorted(self.seen), group=group)
            owners: dict[int, int] = {}
            clashes = []
            for rank, ids in enumerate(shards):
                for sample_id in ids:
                    if sample_id in owners:
                        clashes.append((sample_id, owners[sample_id], rank))
                    owners[sample_id] = rank
            if clashes:
                raise RuntimeError(
                    f"{len(clashes)} sample indices were counted on more than one rank "
                    f"(index, rank, rank): {clashes[:5]}; the sampler must shard without overlap"
                )
        self.synced = True
