"""Distributed data parallel training for one large model under ``torchrun``.

``torchrun --nproc_per_node N -m widthlab.cli run PRESET ...`` starts N processes; `init_from_env` joins them
into one process group (NCCL on GPUs, gloo on the CPU), `fit` shards every global batch and every evaluation
across them and wraps the model in DistributedDataParallel, every process measures its share of each trained
run, and rank 0 alone gathers the measurements and writes the store.

Two process groups: the training group, whose collectives (gradients, evaluation counts) run in lockstep and
time out after `ddp_timeout` (``WIDTHLAB_DDP_TIMEOUT`` seconds, else torch's default: 10 minutes for NCCL),
and a patient gloo group (`PATIENT_TIMEOUT`) for the points where a process may wait on another's solo work:
rank 0 preparing the study, a run's start after rank 0 stored the last one, the gathering of measurements.
Waiting there in the training group would let NCCL's watchdog abort a study whose rank 0 works longer than
its timeout.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
from torch import nn
from torch import distributed as dist

from widthlab.errors import WidthlabError

TIMEOUT_ENV = "WIDTHLAB_DDP_TIMEOUT"
# How long a process waits for another's solo work (see the module doc): far beyond any one run's measurement.
# A process that dies is not waited for: torchrun ends the others.
PATIENT_TIMEOUT = timedelta(days=7)
_patient: dict[str, Any] = {}  # {"group": the patient gloo group of the current process group}


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
        timeout = ddp_timeout()
        dist.init_process_group(backend, **({} if timeout is None else {"timeout": timeout}))
    return True


def ddp_timeout() -> timedelta | None:
    """The training group's collective timeout: ``WIDTHLAB_DDP_TIMEOUT`` seconds (a number > 0), or None for
    torch's default. A collective of the training group waits only on the other processes' share of the same
    step, so a short one makes a hung process fail fast."""
    value = os.environ.get(TIMEOUT_ENV)
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise WidthlabError(f"{TIMEOUT_ENV}={value!r}: must be a number of seconds > 0 (the training collectives' "
                            "timeout), or unset for torch's default")
    return timedelta(seconds=seconds)


def patient_group():
    """The gloo group for waiting on another process's solo work (`PATIENT_TIMEOUT`), made on first use: every
    process reaches its first use at the same point of the study, as a collective needs."""
    group = _patient.get("group")
    if group is None:
        group = _patient["group"] = dist.new_group(backend="gloo", timeout=PATIENT_TIMEOUT)
    return group


def wait_for_all() -> None:
    """Return when every process got here (no-op outside a process group): before a collective of the training
    group that some process may reach long after the others."""
    if distributed_shard()[1] > 1:
        dist.barrier(group=patient_group())


def broadcast_from_first(value: Any) -> Any:
    """Rank 0's `value` on every process (a picklable object), however long rank 0 takes to send it."""
    message = [value]
    dist.broadcast_object_list(message, src=0, group=patient_group())
    return message[0]


def gather_to_first(value: Any) -> list[Any] | None:
    """Every process's `value` (picklable), in rank order, on rank 0; None on the other ranks."""
    rank, world = distributed_shard()
    gathered = [None] * world if rank == 0 else None
    dist.gather_object(value, gathered, dst=0, group=patient_group())
    return gathered


def shutdown() -> None:
    """Leave the process group, if one was joined. Without it, gloo's threads can be torn down mid-flight at
    interpreter exit ("terminate called without an active exception", the process aborts)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _patient.clear()


def distributed_shard() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def wrap_distributed(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel (gradients averaged across processes after every backward). Its
    constructor is a collective of the training group, so the processes meet first (`wait_for_all`): one may come
    from storing or measuring the previous run for longer than the training group's timeout."""
    wait_for_all()
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)
