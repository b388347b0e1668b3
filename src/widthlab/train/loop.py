"""`fit`: train a classifier on `Splits` and record train / validation / test accuracy."""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from widthlab.data.base import Splits
from widthlab.errors import WidthlabError
from widthlab.seeding import derive_seed, torch_generator
from widthlab.train.checkpoint import git_revision, load_checkpoint, package_versions, save_checkpoint
from widthlab.train.config import TrainConfig


@dataclass
class FitResult:
    """What training produced. `status` is ``done`` or ``diverged`` (non-finite loss at `diverged_epoch`)."""

    status: str
    history: list[dict] = field(default_factory=list)  # one dict per epoch: epoch, loss, train_acc, val_acc
    best_epoch: int | None = None
    diverged_epoch: int | None = None
    resumed_from: int | None = None  # the checkpoint epoch training resumed after, if it did
    train_acc: float = math.nan
    val_acc: float = math.nan
    test_acc: float = math.nan
    seconds: float = 0.0


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser named by `cfg.optimizer`, at the effective learning rate."""
    lr, wd = cfg.effective_lr, cfg.weight_decay
    eps = {} if cfg.eps is None else {"eps": cfg.eps}
    if cfg.optimizer in ("momentum", "sgd"):
        momentum = cfg.momentum if cfg.optimizer == "momentum" else 0.0
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=wd)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, **eps)
    return torch.optim.RMSprop(params, lr=lr, alpha=cfg.rmsprop_alpha, weight_decay=wd, **eps)


def iterate_batches(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                    device: torch.device | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) batches; in-memory data sets are sliced directly (no DataLoader overhead).

    The order of epoch `epoch` comes from its own stream, so a resumed run sees the same batches.
    """
    gen = torch_generator(seed, "batch-order", epoch)
    if hasattr(dataset, "x") and hasattr(dataset, "y"):
        n = len(dataset.y)
        order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield dataset.x[idx].to(device), dataset.y[idx].to(device)
        return
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen)
    for x, y in loader:
        yield x.to(device), y.to(device)


@torch.no_grad()
def accuracy(model: nn.Module, dataset: Dataset, *, batch_size: int = 1024, device: torch.device | None = None) -> float:
    """Top-1 accuracy of `model` on `dataset` (eval mode; the training flag is restored)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in iterate_batches(dataset, batch_size, shuffle=False, device=device):
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    model.train(was_training)
    return correct / max(total, 1)


def fit(model: nn.Module, splits: Splits, cfg: TrainConfig, on_epoch: Callable[[dict], None] | None = None,
        *, checkpoint: str | os.PathLike | None = None, meta: dict | None = None) -> FitResult:
    """Train `model` on `splits.train` with cross-entropy and report accuracies on all three splits.

    Args:
        model: any classifier returning (N, classes) scores; trained in place (and left on `cfg.device`).
        splits: the data; cfg: hyperparameters (`TrainConfig`).
        on_epoch: called after each epoch with that epoch's history record (progress bars, logging).
        checkpoint: a file written atomically after every epoch; if it exists, training resumes from it and
            ends with the same weights as an uninterrupted run (CPU). Default None: no checkpoints.
        meta: stored in the checkpoint beside the state (e.g. how to rebuild the model for `widthlab analyze`).

    Example: ``result = fit(create_model("mlp"), load_data("synthetic"), TrainConfig(epochs=5))``
    """
    device = resolve_device(cfg.device)
    model.to(device)
    optimizer = make_optimizer(model.parameters(), cfg)
    loss_fn = nn.CrossEntropyLoss()
    result = FitResult(status="done")
    best_val, best_state = -1.0, None
    first_epoch, elapsed = 1, 0.0
    resumed = None
    if checkpoint is not None and Path(checkpoint).is_file():
        resumed = load_checkpoint(checkpoint)
        if resumed["train_config"] != cfg.model_dump():
            raise WidthlabError(f"checkpoint {str(checkpoint)!r} was written with another training config; "
                                "remove it to start the run afresh")
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        result.history, result.best_epoch = list(resumed["history"]), resumed["best_epoch"]
        best_val, best_state = resumed["best_val"], resumed["best_state"]
        first_epoch, elapsed = resumed["epoch"] + 1, resumed["seconds"]
        result.resumed_from = resumed["epoch"]
    start = time.perf_counter()
    provenance = {"versions": package_versions(), "git_revision": git_revision()} if checkpoint else {}

    def save(epoch: int) -> None:
        save_checkpoint(checkpoint, {
            "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "history": result.history, "best_epoch": result.best_epoch, "best_val": best_val,
            "best_state": best_state, "rng": torch.get_rng_state(), "train_config": cfg.model_dump(),
            "seconds": elapsed + time.perf_counter() - start, "meta": meta or {}, **provenance})

    # Dropout and other global-RNG draws get their own seeded stream; the caller's RNG state is restored.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "train-global"))
        if resumed is not None:
            torch.set_rng_state(resumed["rng"])
        for epoch in range(first_epoch, cfg.epochs + 1):
            model.train()
            loss_sum = correct = seen = 0
            augment_gen = torch_generator(cfg.seed, "augment", epoch)
            for x, y in iterate_batches(splits.train, cfg.effective_batch_size, shuffle=True, seed=cfg.seed,
                                        epoch=epoch, device=device):
                if splits.augment is not None:
                    x = splits.augment(x, augment_gen)
                scores = model(x)
                loss = loss_fn(scores, y)
                if not torch.isfinite(loss):
                    result.status, result.diverged_epoch = "diverged", epoch
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.item() * len(y)
                correct += (scores.argmax(1) == y).sum().item()
                seen += len(y)
            if result.status == "diverged":
                break
            record = {"epoch": epoch, "loss": loss_sum / seen, "train_acc": correct / seen,
                      "val_acc": accuracy(model, splits.val, batch_size=cfg.eval_batch_size, device=device)}
            result.history.append(record)
            if record["val_acc"] > best_val:
                best_val, result.best_epoch = record["val_acc"], epoch
                if cfg.early_stopping:
                    best_state = copy.deepcopy(model.state_dict())
            if checkpoint is not None:
                save(epoch)
            if on_epoch is not None:
                on_epoch(record)
    if result.status == "done":
        if cfg.early_stopping and best_state is not None:
            model.load_state_dict(best_state)
        for split in ("train", "val", "test"):
            value = accuracy(model, splits.split(split), batch_size=cfg.eval_batch_size, device=device)
            setattr(result, f"{split}_acc", value)
    result.seconds = elapsed + time.perf_counter() - start
    return result
