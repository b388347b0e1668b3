"""What every data set returns: `Splits(train, val, test)` of datasets; in-memory ones expose `.x`, `.y`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset


class ArrayDataset(Dataset):
    """An in-memory data set of inputs `x` (N, ...) and integer labels `y` (N,)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        self.x = x
        self.y = y.long()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


@dataclass(frozen=True)
class Splits:
    """Train / validation / test splits of one data set; `num_classes` and `input_shape` describe it.

    `augment`, when set, is the training augmentation as a batched tensor op: ``augment(x, generator) -> x``
    on a training batch (B, ...), drawing its randomness only from `generator` so runs stay reproducible.
    Validation and test data are stored already in their evaluation form.
    """

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None

    def split(self, name: str) -> Dataset:
        """The split called `name` (``train``, ``val`` or ``test``)."""
        if name not in ("train", "val", "test"):
            from widthlab.errors import WidthlabError

            raise WidthlabError(f"unknown split {name!r}; valid: train, val, test")
        return getattr(self, name)
