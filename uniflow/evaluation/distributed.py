"""Rank and world size for evaluation: torch.distributed when initialised (or launched by torchrun), else one process."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_environment() -> bool:
    """Join the process group a launcher (torchrun, srun with its env) describes; True if this call created it.

    Evaluation only all-reduces statistics. The group is created before the config says where they
    live (``eval.device`` may be the CPU on a GPU node), so it gets gloo for CPU tensors and, when
    there is a GPU, NCCL for CUDA tensors.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group("gloo")
    return True


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_device(name: str) -> torch.device:
    """``auto``: this rank's GPU (LOCAL_RANK) when CUDA is available, else the CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def all_ranks_agree(flag: bool, device: torch.device) -> bool:
    """True only if ``flag`` is true on every rank (so all ranks take the same branch into collectives)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())
