"""What every data set returns: `Splits(train, val, test)` of datasets; in-memory ones expose `.x`, `.y`."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from widthlab.errors import WidthlabError, check_positive_int


class ArrayDataset(Dataset):
    """An in-memory data set of inputs `x` (N, ...) and integer labels `y` (N,)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        if len(x) != len(y):  # a user's file or loader: one line, not a failure deep in a batch
            raise WidthlabError(f"the inputs x have {len(x):,} examples but the labels y have {len(y):,}: each "
                                "example needs one label")
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
    Validation and test data are stored already in their evaluation form (shape `input_shape`). `train` is the
    source that training batches (and `augment`) start from; when that differs from the evaluation form
    (CIFAR-10 stored at 32×32 for random 28×28 crops, ImageNet decoded with random crops), `train_eval` holds
    the training examples in evaluation form, and `split("train")` returns it.
    """

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    train_eval: Dataset | None = None

    def split(self, name: str) -> Dataset:
        """The split called `name` (``train``, ``val`` or ``test``) in evaluation form (for accuracy, measuring)."""
        if name not in ("train", "val", "test"):
            raise WidthlabError(f"unknown split {name!r}; valid: train, val, test")
        if name == "train" and self.train_eval is not None:
            return self.train_eval
        return getattr(self, name)


def check_count(dataset: str, key: str, value: object, *, optional: bool = False) -> None:
    """Raise `WidthlabError` unless `value` is a positive integer (or None when `optional`)."""
    check_positive_int(f"{dataset}: {key}", value, optional=optional)


def require_root(root: str | os.PathLike | None, dataset: str, layout: str) -> Path:
    """The data folder `root` as a Path; a missing one is a `WidthlabError` that says what to put where."""
    if root is None:
        raise WidthlabError(f"{dataset}: no data folder given (pass root=..., set data.root in the config or "
                            f"$WIDTHLAB_DATA); {layout}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise WidthlabError(f"{dataset}: data folder {path} does not exist; {layout}")
    return path
