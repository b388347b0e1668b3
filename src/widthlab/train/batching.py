"""Batching and sharding: each epoch's order of the training examples, its global batches, and this process's
share of each (distributed data parallel); `iterate_batches` yields them, `stacked_batches` those of several
runs at once (`fit_group`). A run's order comes from its seed and the epoch alone, so a resumed run, a sharded
run and a stacked run see the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from widthlab.data.base import ArrayDataset
from widthlab.seeding import torch_generator
from widthlab.train.config import TrainConfig


class BatchPlan:
    """The DataLoader `batch_sampler` of a lazy data set: this process's share of each global batch, in the
    epoch's order; items are ``(index, seed)`` pairs for data sets with `seeded_items` (per-item augmentation
    seeds drawn from the epoch's stream, so decoding workers cannot change the crops)."""

    def __init__(self, order: torch.Tensor, batch_size: int, shard: tuple[int, int], seeds: torch.Tensor | None):
        self.order, self.batch_size, self.shard, self.seeds = order, batch_size, shard, seeds

    def __len__(self) -> int:
        return len(global_batches(len(self.order), self.batch_size, self.shard[1]))

    def __iter__(self) -> Iterator[list]:
        for idx in shares(self.order, self.batch_size, self.shard):
            yield idx.tolist() if self.seeds is None else list(zip(idx.tolist(), self.seeds[idx].tolist()))


def shares(order: torch.Tensor, batch_size: int, shard: tuple[int, int]) -> Iterator[torch.Tensor]:
    """This process's indices of each global batch of `order` (`shard` = (rank, world size))."""
    rank, world = shard
    for start in global_batches(len(order), batch_size, world):
        yield order[start:start + batch_size].tensor_split(world)[rank]


def global_batches(n: int, batch_size: int, world: int = 1) -> range:
    """Start offsets of the global batches of an epoch of `n` examples.

    With several processes a last batch of fewer than `world` examples is skipped by all of them alike: some
    process would get no example, and its empty loss (NaN) would be averaged into everyone's gradients.
    """
    end = n if world == 1 or n % batch_size == 0 or n % batch_size >= world else n - n % batch_size
    return range(0, end, batch_size)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of `n` training examples in epoch `epoch` of the run seeded `seed` (its own stream)."""
    return torch.randperm(n, generator=torch_generator(seed, "batch-order", epoch))


def planned_steps(cfg: TrainConfig, examples: int, world: int = 1) -> int:
    """The optimiser steps a run of `examples` training examples takes, with `world` processes."""
    steps = len(global_batches(examples, cfg.effective_batch_size, world)) * cfg.epochs
    return steps if cfg.max_steps is None else min(steps, cfg.max_steps)


def iterate_batches(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                    device: torch.device | None = None, shard: tuple[int, int] = (0, 1),
                    channels_last: bool = False, workers: int = 0,
                    pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) batches; in-memory data sets are sliced directly (no DataLoader overhead).

    The order of epoch `epoch` comes from its own stream, so a resumed run sees the same batches.
    `shard=(rank, world)` keeps this process's share of every global batch (distributed data parallel): a lazy
    data set's process decodes only its share. `workers` DataLoader processes decode a lazy data set (ImageNet)
    without changing the batches.
    """
    in_memory = hasattr(dataset, "x") and hasattr(dataset, "y")
    n = len(dataset.y) if in_memory else len(dataset)
    order = epoch_order(n, seed, epoch) if shuffle else torch.arange(n)
    if in_memory:
        for idx in shares(order.to(dataset.y.device), batch_size, shard):
            yield prepare(dataset.x[idx], device, channels_last), dataset.y[idx].to(device)
        return
    seeds = None
    if getattr(dataset, "seeded_items", False):
        seeds = torch.randint(0, 2 ** 62, (n,), generator=torch_generator(seed, "item-augment", epoch))
    loader = DataLoader(dataset, batch_sampler=BatchPlan(order, batch_size, shard, seeds), num_workers=workers,
                        pin_memory=pin_memory and device is not None and device.type == "cuda")
    for x, y in loader:
        yield prepare(x, device, channels_last), y.to(device, non_blocking=True)


def prepare(x: torch.Tensor, device: torch.device | None, channels_last: bool) -> torch.Tensor:
    """A batch on `device` (None: where it is), in channels_last memory format when asked and 4-D."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def on_device(dataset: Dataset, device: torch.device) -> Dataset:
    """An in-memory data set moved to `device` once (other data sets unchanged), so batches need no copies."""
    if hasattr(dataset, "x") and hasattr(dataset, "y") and isinstance(dataset.x, torch.Tensor):
        return ArrayDataset(dataset.x.to(device), dataset.y.to(device))
    return dataset


def stacked_batches(dataset: Dataset, batch_size: int, seeds: list[int], epoch: int,
                    device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Each run's training batches of epoch `epoch`, gathered at once: ``(x, y)`` with x the runs' batches
    concatenated (R·B, …) and y (R, B); run r's rows are those `iterate_batches` gives it (same order stream)."""
    n = len(dataset.y)
    orders = torch.stack([epoch_order(n, seed, epoch) for seed in seeds])
    orders = orders.to(dataset.y.device)
    for start in global_batches(n, batch_size):
        index = orders[:, start:start + batch_size]
        yield dataset.x[index.reshape(-1)].to(device, non_blocking=True), dataset.y[index].to(device)
