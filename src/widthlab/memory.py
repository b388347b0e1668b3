"""Memory a run or a measurement may use: sizes read from a config or a file are checked here before anything of
that size is allocated, so a typo (``n_test: 10000000000``) or an edited checkpoint is one line, not a machine
swapping for minutes or a crash.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from widthlab.errors import WidthlabError


def available_memory(device: str) -> int | None:
    """Bytes free for a run on `device`: the GPU's free memory where the run will use one (``cuda``, or ``auto``
    on a machine with CUDA, as `widthlab.train.loop.resolve_device` decides), else the machine's available RAM."""
    if (device == "auto" or device.startswith("cuda")) and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(device if device.startswith("cuda:") else None)[0])
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def weight_bytes(model: nn.Module) -> int:
    """The bytes of `model`'s parameters (exact on the ``meta`` device too, where they take none)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def check_memory(need: int, device: str, what: str, advice: str) -> None:
    """A WidthlabError when `need` bytes are more than `device` has available: ``WHAT needs about X GiB, more
    than the Y GiB available; ADVICE``. Nothing is refused where the free memory cannot be told."""
    free = available_memory(device)
    if free is not None and need > free:
        raise WidthlabError(f"{what} needs about {need / 2 ** 30:.1f} GiB, more than the {free / 2 ** 30:.1f} GiB "
                            f"available; {advice}")
