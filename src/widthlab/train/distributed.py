"""Distributed data parallel training for one large model under ``torchrun``.

``torchrun --nproc_per_node N -m widthlab.cli run PRESET ...`` starts N processes; `init_from_env` joins them
into one process group (NCCL on GPUs, gloo on the CPU), `fit` shards every global batch across them and wraps
the model in DistributedDataParallel, and the study driver lets rank 0 alone measure and write the store.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch import distributed as dist


def world_size_from_env() -> int:
    """The WORLD_SIZE torchrun exported (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(cuda: bool = True) -> bool:
    """Join the process group torchrun describes, once; True when running distributed.

    The backend is NCCL when training on CUDA (`cuda` and a GPU is there), else gloo: a study on the CPU of a
    GPU machine needs gloo, since NCCL only moves CUDA tensors.
    """
    if world_size_from_env() <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if cuda and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return True


def shutdown() -> None:
    """Leave the process group, if one was joined. Without it, gloo's threads can be torn down mid-flight at
    interpreter exit ("terminate called without an active exception", the process aborts)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def distributed_shard() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def wrap_distributed(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel (gradients averaged across processes after every backward)."""
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)
