"""NumPy's BLAS threads pinned to torch's thread count, so the two never oversubscribe the cores.

NumPy's OpenBLAS starts one thread per core. Beside torch's own pool on a busy machine its threads spin against
each other: a 512×512 `numpy.linalg.eigvalsh` that takes 20 ms on one thread took 0.07–2.6 s on two
(`widthlab run mlp-10d`, 2 cores). Every measurement runs with as many BLAS threads as torch has
(`torch.set_num_threads`, which a study pins per run with `threads`).
"""

from __future__ import annotations

import functools
import os

import torch
from threadpoolctl import threadpool_limits


def blas_threads(threads: int | None = None) -> threadpool_limits:
    """A context limiting NumPy's BLAS to `threads` threads (default: torch's current thread count)."""
    return threadpool_limits(limits=torch.get_num_threads() if threads is None else threads, user_api="blas")


def torch_blas_threads(fn):
    """Decorate `fn` to run with NumPy's BLAS limited to torch's thread count at the time of the call."""

    @functools.wraps(fn)
    def pinned(*args, **kwargs):
        with blas_threads():
            return fn(*args, **kwargs)

    return pinned


# A run's torch threads at most this many per core: more only contend (a study asking for 2,000 threads per
# process took a 2-core machine's load to 480; 100,000 crashed torch).
THREADS_PER_CORE = 4


def max_threads() -> int:
    """The most threads a run may ask for: the machine's cores × `THREADS_PER_CORE`."""
    return (os.cpu_count() or 1) * THREADS_PER_CORE
