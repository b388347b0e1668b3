"""One run's progress across epochs and checkpoints, kept the same way by `fit` and `fit_group`: its
`FitResult`, the best epoch (and its weights under early stopping), its snapshots, what a checkpoint stores of
it and how a resumed run takes it back."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import ValidationError

from widthlab.errors import WidthlabError
from widthlab.train.checkpoint import git_revision, package_versions
from widthlab.train.config import TrainConfig


@dataclass
class FitResult:
    """What training produced. `status` is ``done`` or ``diverged`` (non-finite loss at `diverged_epoch`)."""

    status: str
    history: list[dict] = field(default_factory=list)  # one dict per epoch: epoch, loss, train_acc, val_acc
    best_epoch: int | None = None
    diverged_epoch: int | None = None
    resumed_from: int | None = None  # the checkpoint epoch training resumed after, if it did
    snapshots: dict[int, dict] = field(default_factory=dict)  # epoch → CPU weights (cfg.snapshot_epochs)
    train_acc: float = math.nan
    val_acc: float = math.nan
    test_acc: float = math.nan
    seconds: float = 0.0


def same_config(stored: dict, cfg: TrainConfig) -> bool:
    """Whether a checkpoint's training config is `cfg`, with this version's defaults filled into the stored one
    (a field added by an upgrade does not orphan a half-trained run)."""
    try:
        return TrainConfig(**stored).identity() == cfg.identity()
    except (ValidationError, TypeError):
        return False


def check_same_config(state: dict[str, Any], cfg: TrainConfig, path: str | os.PathLike) -> None:
    """A `WidthlabError` when the checkpoint `state` read from `path` was written with another training config."""
    if not same_config(state["train_config"], cfg):
        raise WidthlabError(f"checkpoint {str(path)!r} was written with another training config; "
                            "remove it to start the run afresh")


def provenance(writes: bool) -> dict[str, Any]:
    """What a checkpoint records of the code that wrote it (nothing is looked up when no checkpoint is written)."""
    return {"versions": package_versions(), "git_revision": git_revision()} if writes else {}


def out_of_steps(cfg: TrainConfig, steps: int) -> bool:
    """Whether a run that took `steps` optimiser steps has reached `cfg.max_steps`."""
    return cfg.max_steps is not None and steps >= cfg.max_steps


class RunProgress:
    """One run's bookkeeping: its result so far, its best validation accuracy (and those weights under early
    stopping), and the training seconds it had spent before a resume (`elapsed`)."""

    def __init__(self, cfg: TrainConfig, checkpoint: str | os.PathLike | None = None, meta: dict | None = None):
        self.cfg, self.checkpoint, self.meta = cfg, checkpoint, meta
        self.result = FitResult(status="done")
        self.best_val, self.best_state, self.elapsed = -1.0, None, 0.0

    def restore(self, state: dict[str, Any]) -> None:
        """Take back the bookkeeping of the checkpoint `state` this run resumes from."""
        self.result.history, self.result.best_epoch = list(state["history"]), state["best_epoch"]
        self.result.snapshots = dict(state["snapshots"])
        self.best_val, self.best_state = state["best_val"], state["best_state"]
        self.elapsed, self.result.resumed_from = state["seconds"], state["epoch"]

    def reached_target(self) -> bool:
        """Whether the last epoch's training accuracy reached `cfg.target_train_acc`."""
        last = self.result.history[-1] if self.result.history else None
        return self.cfg.target_train_acc is not None and last is not None and \
            last["train_acc"] >= self.cfg.target_train_acc

    def diverge(self, epoch: int) -> None:
        self.result.status, self.result.diverged_epoch = "diverged", epoch

    def record(self, epoch: int, loss: float, train_acc: float, val_acc: float, lr: float,
               weights: Callable[[], dict[str, torch.Tensor]]) -> dict:
        """Append epoch `epoch`'s history record and return it; `weights()` gives the run's CPU weights, taken
        for a new best epoch under early stopping and for the epochs in `cfg.snapshot_epochs`."""
        record = {"epoch": epoch, "loss": loss, "train_acc": train_acc, "val_acc": val_acc, "lr": lr}
        self.result.history.append(record)
        if val_acc > self.best_val:
            self.best_val, self.result.best_epoch = val_acc, epoch
            if self.cfg.early_stopping:
                self.best_state = weights()
        if epoch in self.cfg.snapshot_epochs:
            self.result.snapshots[epoch] = weights()
        return record

    def early_stopped_weights(self) -> dict[str, torch.Tensor] | None:
        """The best epoch's weights when the run finished under early stopping, else None (it keeps its last)."""
        if self.result.status == "done" and self.cfg.early_stopping and self.best_state is not None:
            return self.best_state
        return None

    def checkpoint_state(self, epoch: int, *, model: dict, optimizer: dict, scheduler: dict, steps: int,
                         rng: torch.Tensor, cuda_rng: torch.Tensor | None, seconds: float,
                         provenance: dict[str, Any]) -> dict[str, Any]:
        """What the checkpoint after epoch `epoch` stores: the training state passed in and this bookkeeping."""
        result = self.result
        return {"epoch": epoch, "model": model, "optimizer": optimizer, "scheduler": scheduler, "steps": steps,
                "history": result.history, "best_epoch": result.best_epoch, "best_val": self.best_val,
                "best_state": self.best_state, "snapshots": result.snapshots, "rng": rng,
                "train_config": self.cfg.model_dump(), "cuda_rng": cuda_rng, "seconds": seconds,
                "meta": self.meta or {}, **provenance}
