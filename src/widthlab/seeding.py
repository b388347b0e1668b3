"""Named random streams: every random choice draws from a seed derived from its context.

A layer's numbers then do not depend on which other layers were measured, and a run's numbers do not
depend on the runs before it (docs/metrics.md).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed derived from `seed` and any number of labels (layer names, sampling indices ...).

    Example: the seed of sampling 2 of layer ``relu1``, the same in every process and on every machine:
        >>> derive_seed(0, "relu1", 2)
        6291718192014880800
    """
    text = "\x1f".join([str(int(seed)), *map(str, parts)])
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def torch_generator(seed: int, *parts: object) -> torch.Generator:
    """A CPU `torch.Generator` seeded by `derive_seed(seed, *parts)`."""
    return torch.Generator().manual_seed(derive_seed(seed, *parts))


def numpy_generator(seed: int, *parts: object) -> np.random.Generator:
    """A NumPy `Generator` seeded by `derive_seed(seed, *parts)`."""
    return np.random.default_rng(derive_seed(seed, *parts))
