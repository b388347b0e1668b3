"""`fit`: train a classifier on `Splits` and record train / validation / test accuracy."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import ValidationError
from torch import nn
from torch.utils.data import Dataset

from widthlab.data.base import Splits
from widthlab.errors import WidthlabError, check_seconds
from widthlab.seeding import derive_seed, torch_generator
from widthlab.train.batching import global_batches, iterate_batches, on_device, planned_steps, prepare
from widthlab.train.checkpoint import git_revision, load_checkpoint, package_versions, save_checkpoint
from widthlab.train.config import TrainConfig
from widthlab.train.distributed import distributed_shard, wrap_distributed


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


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a visible GPU is a `WidthlabError`."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        why = "a CPU-only build" if torch.version.cuda is None else "no GPU is visible"
        raise WidthlabError(f"device {device!r}: torch {torch.__version__} is {why} here; train on 'cpu', or use "
                            "'auto' to take a GPU only where there is one")
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


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch learning-rate schedule named by `cfg.schedule` (stepped once after every epoch)."""
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_decay_every, cfg.lr_decay)
    if cfg.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.milestones), cfg.lr_decay)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)


# `compile: auto` compiles only runs of at least this many optimiser steps: compilation costs tens of seconds per
# run (more in a cold cache), which a short run (an MLP's 1,600 steps) never wins back. A first guess, to be
# tuned with benchmarks/gpu_session.sh on a GPU.
COMPILE_MIN_STEPS = 20_000


@dataclass(frozen=True)
class Speed:
    """The GPU-path switches of a run, resolved for its device; `workers`: DataLoader processes decoding
    data sets that are not in memory (ImageNet); `pin_memory`: page-locked batches for asynchronous copies."""

    amp: bool
    channels_last: bool
    compile: bool
    data_on_device: bool
    workers: int = 0
    pin_memory: bool = False

    @classmethod
    def resolve(cls, cfg: TrainConfig, device: torch.device, steps: int | None = None) -> Speed:
        """`steps`: the optimiser steps the run will take, if known (``compile: auto`` needs COMPILE_MIN_STEPS)."""
        cuda = device.type == "cuda"

        def switch(value: str, auto: bool = True) -> bool:
            return value == "on" or (value == "auto" and cuda and auto)

        long_run = steps is None or steps >= COMPILE_MIN_STEPS
        workers = cfg.num_workers
        if workers is None:  # auto: decode in parallel when a GPU waits for the data, in-process on the CPU
            workers = min(8, len(os.sched_getaffinity(0))) if cuda else 0
        return cls(switch(cfg.amp), switch(cfg.channels_last), switch(cfg.compile, long_run),
                   switch(cfg.data_on_device), workers=workers, pin_memory=cuda)

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp)


CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile modes that replay CUDA graphs


@contextlib.contextmanager
def cudnn_autotune(enabled: bool) -> Iterator[None]:
    """While training on CUDA, cuDNN times its convolution algorithms once per shape and keeps the fastest
    (``torch.backends.cudnn.benchmark``); the caller's setting is restored afterwards."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = previous or enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


@torch.no_grad()
def accuracy(model: nn.Module, dataset: Dataset, *, batch_size: int = 1024, device: torch.device | None = None,
             speed: Speed | None = None) -> float:
    """Top-1 accuracy of `model` on `dataset` (eval mode; the training flag is restored)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    autocast = speed.autocast(device) if speed is not None and device is not None else contextlib.nullcontext()
    with autocast:
        for x, y in iterate_batches(dataset, batch_size, shuffle=False, device=device,
                                    channels_last=bool(speed and speed.channels_last),
                                    workers=speed.workers if speed is not None else 0,
                                    pin_memory=bool(speed and speed.pin_memory)):
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    model.train(was_training)
    return correct / max(total, 1)


def fit(model: nn.Module, splits: Splits, cfg: TrainConfig, on_epoch: Callable[[dict], None] | None = None,
        *, checkpoint: str | os.PathLike | None = None, checkpoint_every: float = 0.0,
        meta: dict | None = None) -> FitResult:
    """Train `model` on `splits.train` with cross-entropy and report accuracies on all three splits.

    Under ``torchrun`` (an initialised `torch.distributed` process group) the model trains with
    DistributedDataParallel: each process takes its share of every global batch, and only rank 0 writes
    checkpoints.

    Args:
        model: any classifier returning (N, classes) scores; trained in place (and left on `cfg.device`).
        splits: the data; cfg: hyperparameters (`TrainConfig`).
        on_epoch: called after each epoch with that epoch's history record (progress bars, logging).
        checkpoint: a file written atomically at the end of an epoch; if it exists, training resumes from it and
            ends with the same weights as an uninterrupted run (CPU). Default None: no checkpoints.
        checkpoint_every: seconds between checkpoints: one is written after an epoch that ends at least this
            long after the last one, and after the last epoch (default 0: after every epoch). A 4x AlexNet's
            checkpoint is about a GB, more than a GPU needs for its epoch, so studies write one a minute.
        meta: stored in the checkpoint beside the state (e.g. how to rebuild the model for `widthlab analyze`).

    Example: ``result = fit(create_model("mlp"), load_data("synthetic"), TrainConfig(epochs=5))``
    """
    check_seconds("checkpoint_every", checkpoint_every)
    device = resolve_device(cfg.device)
    cuda = device.type == "cuda"
    shard = distributed_shard()
    n_train, batch_size = len(splits.train), cfg.effective_batch_size
    if shard[1] > 1 and min(n_train, batch_size) < shard[1]:
        raise WidthlabError(f"{shard[1]} processes need at least {shard[1]} examples per batch and in the training "
                            f"split, got batch size {batch_size} and {n_train} examples")
    starts = global_batches(n_train, batch_size, shard[1])
    speed = Speed.resolve(cfg, device, steps=planned_steps(cfg, n_train, shard[1]))
    model.to(device)
    if speed.channels_last:
        model.to(memory_format=torch.channels_last)
    train_set = on_device(splits.train, device) if speed.data_on_device else splits.train
    # The epoch's last global batch, when smaller than the rest (the same on every process).
    short_batch = len(starts) - 1 if len(starts) and n_train - starts[-1] < batch_size else None
    optimizer = make_optimizer(model.parameters(), cfg)
    scheduler = make_scheduler(optimizer, cfg)
    step_model = wrap_distributed(model, device) if shard[1] > 1 else model
    # Compiled for full batches only; the last, smaller batch of an epoch runs eagerly (same parameters), so the
    # compiled graph sees one shape and never recompiles (a dynamic-shape recompile costs as much as the first).
    full_model = torch.compile(step_model, mode=cfg.compile_mode) if speed.compile else step_model
    graphs = cfg.compile_mode in CUDA_GRAPH_MODES
    loss_fn = nn.CrossEntropyLoss()
    result = FitResult(status="done")
    best_val, best_state, steps = -1.0, None, 0
    first_epoch, elapsed = 1, 0.0
    resumed = None
    if checkpoint is not None and Path(checkpoint).is_file():
        resumed = load_checkpoint(checkpoint)
        if not same_config(resumed["train_config"], cfg):
            raise WidthlabError(f"checkpoint {str(checkpoint)!r} was written with another training config; "
                                "remove it to start the run afresh")
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        result.history, result.best_epoch = list(resumed["history"]), resumed["best_epoch"]
        result.snapshots = dict(resumed["snapshots"])
        best_val, best_state, steps = resumed["best_val"], resumed["best_state"], resumed["steps"]
        first_epoch, elapsed = resumed["epoch"] + 1, resumed["seconds"]
        result.resumed_from = resumed["epoch"]
    start = time.perf_counter()
    writes = checkpoint is not None and shard[0] == 0
    provenance = {"versions": package_versions(), "git_revision": git_revision()} if writes else {}

    last_save = time.perf_counter()

    def save(epoch: int) -> None:
        nonlocal last_save
        last_save = time.perf_counter()
        save_checkpoint(checkpoint, {
            "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "steps": steps, "history": result.history,
            "best_epoch": result.best_epoch, "best_val": best_val, "best_state": best_state,
            "snapshots": result.snapshots, "rng": torch.get_rng_state(), "train_config": cfg.model_dump(),
            "cuda_rng": torch.cuda.get_rng_state(device) if cuda else None,
            "seconds": elapsed + time.perf_counter() - start, "meta": meta or {}, **provenance})

    def done_training() -> bool:
        last = result.history[-1] if result.history else None
        return (cfg.max_steps is not None and steps >= cfg.max_steps) or (
            cfg.target_train_acc is not None and last is not None and last["train_acc"] >= cfg.target_train_acc)

    # Dropout and other global-RNG draws get their own seeded stream (on the training device: CUDA's generator
    # draws the dropout masks of CUDA tensors); the caller's RNG state is restored.
    with torch.random.fork_rng(devices=[device] if cuda else []), cudnn_autotune(cuda):
        torch.manual_seed(derive_seed(cfg.seed, "train-global"))
        if resumed is not None:
            torch.set_rng_state(resumed["rng"])
            if cuda and resumed.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(resumed["cuda_rng"], device)
        for epoch in range(first_epoch, cfg.epochs + 1):
            if done_training():
                break
            model.train()
            loss_sum = torch.zeros((), device=device, dtype=torch.float64)
            correct = torch.zeros((), device=device, dtype=torch.int64)
            seen = 0
            augment_gen = torch_generator(cfg.seed, "augment", epoch)
            # Augmentation gathers into a fresh NCHW tensor, so channels_last is applied after it.
            batches = iterate_batches(train_set, batch_size, shuffle=True, seed=cfg.seed, epoch=epoch, device=device,
                                      shard=shard, channels_last=speed.channels_last and splits.augment is None,
                                      workers=speed.workers, pin_memory=speed.pin_memory)
            for index, (x, y) in enumerate(batches):
                if splits.augment is not None:
                    x = prepare(splits.augment(x, augment_gen), None, speed.channels_last)
                compiled = speed.compile and index != short_batch
                if compiled and graphs:  # CUDA graphs may reuse the last step's buffers: nothing of it is kept
                    torch.compiler.cudagraph_mark_step_begin()
                with speed.autocast(device):
                    scores = (full_model if compiled else step_model)(x)
                    loss = loss_fn(scores.float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps += 1
                # Sums stay on the device: no host sync per step (the loss is checked once per epoch).
                loss_sum += loss.detach().double() * len(y)
                correct += (scores.argmax(1) == y).sum()
                seen += len(y)
                if cfg.max_steps is not None and steps >= cfg.max_steps:
                    break
            if shard[1] > 1:  # the epoch's record covers every process's share of the data
                totals = torch.stack([loss_sum, correct.double(), torch.tensor(float(seen), device=device,
                                                                               dtype=torch.float64)])
                torch.distributed.all_reduce(totals)
                loss_sum, correct, seen = totals[0], totals[1].long(), int(totals[2].item())
            epoch_loss = loss_sum.item() / max(seen, 1)
            if not math.isfinite(epoch_loss):
                result.status, result.diverged_epoch = "diverged", epoch
                break
            scheduler.step()
            record = {"epoch": epoch, "loss": epoch_loss, "train_acc": correct.item() / max(seen, 1),
                      "val_acc": accuracy(model, splits.val, batch_size=cfg.eval_batch_size, device=device,
                                          speed=speed),
                      "lr": optimizer.param_groups[0]["lr"]}
            result.history.append(record)
            if record["val_acc"] > best_val:
                best_val, result.best_epoch = record["val_acc"], epoch
                if cfg.early_stopping:
                    best_state = _cpu_state(model)
            if epoch in cfg.snapshot_epochs:
                result.snapshots[epoch] = _cpu_state(model)
            if writes and (time.perf_counter() - last_save >= checkpoint_every or epoch == cfg.epochs
                           or done_training()):
                save(epoch)
            if on_epoch is not None:
                on_epoch(record)
    if result.status == "done":
        if cfg.early_stopping and best_state is not None:
            model.load_state_dict(best_state)
        for split in ("train", "val", "test"):
            value = accuracy(model, splits.split(split), batch_size=cfg.eval_batch_size, device=device, speed=speed)
            setattr(result, f"{split}_acc", value)
    result.seconds = elapsed + time.perf_counter() - start
    return result


def same_config(stored: dict, cfg: TrainConfig) -> bool:
    """Whether a checkpoint's training config is `cfg`, with this version's defaults filled into the stored one
    (a field added by an upgrade does not orphan a half-trained run)."""
    try:
        return TrainConfig(**stored).identity() == cfg.identity()
    except (ValidationError, TypeError):
        return False


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
