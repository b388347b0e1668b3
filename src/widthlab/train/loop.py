"""`fit`: train a classifier on `Splits` and record train / validation / test accuracy."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from widthlab.data.base import ArrayDataset, Splits
from widthlab.errors import WidthlabError, check_seconds
from widthlab.seeding import derive_seed, torch_generator
from widthlab.train.batching import global_batches, iterate_batches, on_device, planned_steps, prepare
from widthlab.train.checkpoint import load_resume_point, save_checkpoint
from widthlab.train.config import TrainConfig
from widthlab.train.distributed import distributed_shard, wrap_distributed
from widthlab.train.progress import FitResult, RunProgress, check_same_config, out_of_steps, provenance
from widthlab.train.standin import cuda_like

log = logging.getLogger("widthlab")


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

# The torch.compile backend `fit` compiles with: inductor (real kernels). Tests that check which runs compile, and
# how often, swap in ``"eager"`` / ``"aot_eager"`` or a counting backend (seconds instead of minutes on a CPU);
# other backends take no `compile_mode`.
_compile_backend = "inductor"


def compile_for_run(module: nn.Module, cfg: TrainConfig) -> nn.Module:
    """`module` compiled for one run, from a fresh Dynamo state.

    Parameter shapes are guards, and every model of a class runs the same ``forward`` code object: without the
    reset, a process that trains width after width adds one graph per width to that code object until Dynamo's
    recompile limit (8) is reached, and then runs every later width eagerly, silently. Resetting per run gives
    each run its own graph (a replicate of the same shape compiles again: inductor's cache makes that the
    cheaper compile). It also drops whatever else this process had compiled, which `fit` does not share."""
    torch.compiler.reset()
    backend = _compile_backend
    return torch.compile(module, backend=backend, mode=cfg.compile_mode if backend == "inductor" else None)


def compiled_graphs() -> int:
    """Graphs Dynamo has compiled in this process so far (its own counter, which a reset does not clear)."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def report_compiled(before: int, what: str) -> None:
    """Log whether `what` really ran compiled: Dynamo compiled a graph since `compiled_graphs()` was `before`,
    or it fell back to eager (a graph break on every frame, ``torch.compiler.disable``, its recompile limit)."""
    if compiled_graphs() > before:
        log.info("torch.compile: %s ran compiled", what)
    else:
        log.warning("torch.compile: %s ran eagerly: Dynamo compiled no graph for them (a graph break in every "
                    "frame, torch.compiler.disable, or its recompile limit)", what)


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
        cuda = cuda_like(device)  # the CPU standing in for CUDA (tests) takes CUDA's decisions

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
             speed: Speed | None = None, shard: tuple[int, int] = (0, 1)) -> float:
    """Top-1 accuracy of `model` on `dataset` (eval mode; the training flag is restored).

    `shard=(rank, world size)`, under torchrun: this process evaluates its contiguous share of the examples and
    the counts of correct and total predictions are summed over the processes (every process must call it), so
    the accuracy is the unsharded one exactly, in 1/world of the time.
    """
    was_training = model.training
    model.eval()
    correct = total = 0
    autocast = speed.autocast(device) if speed is not None and device is not None else contextlib.nullcontext()
    share = _share(dataset, *shard)
    with autocast:
        for x, y in iterate_batches(share, batch_size, shuffle=False, device=device,
                                    channels_last=bool(speed and speed.channels_last),
                                    workers=speed.workers if speed is not None else 0,
                                    pin_memory=bool(speed and speed.pin_memory)):
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    model.train(was_training)
    if shard[1] > 1:  # on the training device: NCCL sums CUDA tensors only
        counts = torch.tensor([correct, total], dtype=torch.int64, device=device)
        torch.distributed.all_reduce(counts)
        correct, total = counts.tolist()
    return correct / max(total, 1)


def _share(dataset: Dataset, rank: int, world: int) -> Dataset:
    """Process `rank`'s contiguous share of `dataset` (sizes differ by at most one; all of it when `world` is 1):
    a slice of an in-memory data set, else a `Subset` (a lazy data set's process decodes only its share)."""
    if world == 1:
        return dataset
    n = len(dataset)
    start, stop = rank * n // world, (rank + 1) * n // world
    if hasattr(dataset, "x") and hasattr(dataset, "y"):  # in memory, as `iterate_batches` tells
        return ArrayDataset(dataset.x[start:stop], dataset.y[start:stop])
    return Subset(dataset, range(start, stop))


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

    Example: a 1x mlp trained for 5 epochs on the synthetic teacher's data:
        >>> result = fit(create_model("mlp", seed=0), load_data("synthetic"), TrainConfig(epochs=5))
        >>> result.status, [record["epoch"] for record in result.history], result.test_acc > 0.85
        ('done', [1, 2, 3, 4, 5], True)
    """
    check_seconds("checkpoint_every", checkpoint_every)
    device = resolve_device(cfg.device)
    shard = distributed_shard()
    n_train, batch_size = len(splits.train), cfg.effective_batch_size
    if shard[1] > 1 and min(n_train, batch_size) < shard[1]:
        raise WidthlabError(f"{shard[1]} processes need at least {shard[1]} examples per batch and in the training "
                            f"split, got batch size {batch_size} and {n_train} examples")
    speed = Speed.resolve(cfg, device, steps=planned_steps(cfg, n_train, shard[1]))
    trainer = _Trainer.build(model, splits, cfg, device, speed, shard)
    run = RunProgress(cfg, checkpoint, meta)
    resumed = _resume(trainer, run)
    trainer.start = time.perf_counter()
    trainer.writes = checkpoint is not None and shard[0] == 0
    trainer.provenance = provenance(trainer.writes)
    trainer.last_save = time.perf_counter()
    cuda = device.type == "cuda"
    # Dropout and other global-RNG draws get their own seeded stream (on the training device: CUDA's generator
    # draws the dropout masks of CUDA tensors); the caller's RNG state is restored.
    with torch.random.fork_rng(devices=[device] if cuda else []), cudnn_autotune(cuda):
        _seed_global_rng(cfg, device, resumed)
        for epoch in range(1 if resumed is None else resumed["epoch"] + 1, cfg.epochs + 1):
            if _done_training(trainer, run):
                break
            loss, train_acc = _train_epoch(trainer, splits, cfg, epoch)
            if not math.isfinite(loss):
                run.diverge(epoch)
                break
            record = _end_epoch(trainer, run, splits, epoch, loss, train_acc, checkpoint_every)
            if on_epoch is not None:
                on_epoch(record)
    if run.result.status == "done":
        best = run.early_stopped_weights()
        if best is not None:
            model.load_state_dict(best)
        for split in ("train", "val", "test"):
            value = accuracy(model, splits.split(split), batch_size=cfg.eval_batch_size, device=device, speed=speed,
                             shard=shard)
            setattr(run.result, f"{split}_acc", value)
    run.result.seconds = run.elapsed + time.perf_counter() - trainer.start
    return run.result


@dataclass
class _Trainer:
    """What `fit` carries from step to step and epoch to epoch: the model in its training forms, the optimiser,
    the step count and the checkpoint clock."""

    model: nn.Module
    step_model: nn.Module  # the model, or its DistributedDataParallel wrapper under torchrun
    full_model: nn.Module  # step_model compiled for full batches, or step_model itself
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    speed: Speed
    shard: tuple[int, int]  # (rank, world size)
    train_set: Dataset
    short_batch: int | None  # index of the epoch's last global batch when smaller than the rest
    graphs: bool  # the compiled model replays CUDA graphs
    graphs_before: int | None = None  # Dynamo's graph count before the first compiled step (None: reported)
    steps: int = 0
    writes: bool = False  # this process writes the run's checkpoints
    provenance: dict | None = None  # the code versions its checkpoints store
    start: float = 0.0  # perf_counter when this (possibly resumed) session of training started
    last_save: float = 0.0  # perf_counter of the last checkpoint (or of the start)

    @classmethod
    def build(cls, model: nn.Module, splits: Splits, cfg: TrainConfig, device: torch.device, speed: Speed,
              shard: tuple[int, int]) -> _Trainer:
        """Move `model` to `device` in the speed's memory format and make its optimiser, schedule and step forms."""
        n_train, batch_size = len(splits.train), cfg.effective_batch_size
        starts = global_batches(n_train, batch_size, shard[1])
        model.to(device)
        if speed.channels_last:
            model.to(memory_format=torch.channels_last)
        train_set = on_device(splits.train, device) if speed.data_on_device else splits.train
        # The epoch's last global batch, when smaller than the rest (the same on every process).
        short_batch = len(starts) - 1 if len(starts) and n_train - starts[-1] < batch_size else None
        optimizer = make_optimizer(model.parameters(), cfg)
        scheduler = make_scheduler(optimizer, cfg)
        step_model = wrap_distributed(model, device) if shard[1] > 1 else model
        # Compiled for full batches only; the last, smaller batch of an epoch runs eagerly (same parameters), so
        # the compiled graph sees one shape and never recompiles (a dynamic-shape recompile costs as much as the
        # first).
        full_model = compile_for_run(step_model, cfg) if speed.compile else step_model
        return cls(model, step_model, full_model, optimizer, scheduler, device, speed, shard, train_set, short_batch,
                   graphs=cfg.compile_mode in CUDA_GRAPH_MODES,
                   graphs_before=compiled_graphs() if speed.compile else None)


def _resume(trainer: _Trainer, run: RunProgress) -> dict | None:
    """Load the run's checkpoint, when it has one, into the trainer and the run's bookkeeping; return it."""
    if run.checkpoint is None or not Path(run.checkpoint).is_file():
        return None
    state = load_resume_point(run.checkpoint)
    check_same_config(state, run.cfg, run.checkpoint)
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    run.restore(state)
    trainer.steps = state["steps"]
    return state


def _seed_global_rng(cfg: TrainConfig, device: torch.device, resumed: dict | None) -> None:
    """Seed the global RNG (dropout) from the run's seed, or set it where the resumed checkpoint left it."""
    torch.manual_seed(derive_seed(cfg.seed, "train-global"))
    if resumed is not None:
        torch.set_rng_state(resumed["rng"])
        if device.type == "cuda" and resumed.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(resumed["cuda_rng"], device)


def _done_training(trainer: _Trainer, run: RunProgress) -> bool:
    return out_of_steps(run.cfg, trainer.steps) or run.reached_target()


def _train_epoch(trainer: _Trainer, splits: Splits, cfg: TrainConfig, epoch: int) -> tuple[float, float]:
    """One epoch of optimiser steps (fewer when `cfg.max_steps` is reached); its mean loss and training accuracy
    over every process's share of the data."""
    t, device = trainer, trainer.device
    t.model.train()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    augment_gen = torch_generator(cfg.seed, "augment", epoch)
    # Augmentation gathers into a fresh NCHW tensor, so channels_last is applied after it.
    batches = iterate_batches(t.train_set, cfg.effective_batch_size, shuffle=True, seed=cfg.seed, epoch=epoch,
                              device=device, shard=t.shard,
                              channels_last=t.speed.channels_last and splits.augment is None,
                              workers=t.speed.workers, pin_memory=t.speed.pin_memory)
    for index, (x, y) in enumerate(batches):
        if splits.augment is not None:
            x = prepare(splits.augment(x, augment_gen), None, t.speed.channels_last)
        loss, scores = _step(t, x, y, compiled=t.speed.compile and index != t.short_batch)
        # Sums stay on the device: no host sync per step (the loss is checked once per epoch).
        loss_sum += loss.detach().double() * len(y)
        correct += (scores.argmax(1) == y).sum()
        seen += len(y)
        if out_of_steps(cfg, t.steps):
            break
    if t.shard[1] > 1:  # the epoch's record covers every process's share of the data
        totals = torch.stack([loss_sum, correct.double(), torch.tensor(float(seen), device=device,
                                                                       dtype=torch.float64)])
        torch.distributed.all_reduce(totals)
        loss_sum, correct, seen = totals[0], totals[1].long(), int(totals[2].item())
    return loss_sum.item() / max(seen, 1), correct.item() / max(seen, 1)


def _step(trainer: _Trainer, x: torch.Tensor, y: torch.Tensor, compiled: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on the batch (x, y), by the compiled model or eagerly; its loss and (N, classes) scores."""
    t = trainer
    if compiled and t.graphs:  # CUDA graphs may reuse the last step's buffers: nothing of it is kept
        torch.compiler.cudagraph_mark_step_begin()
    with t.speed.autocast(t.device):
        scores = (t.full_model if compiled else t.step_model)(x)
        loss = mean_loss(scores, y)
    t.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    t.optimizer.step()
    t.steps += 1
    if compiled and t.graphs_before is not None:  # the first compiled step: did it really compile?
        report_compiled(t.graphs_before, "the run's full batches")
        t.graphs_before = None
    return loss, scores


def mean_loss(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The batch's cross-entropy (float32 or wider), taken as the mean of its examples' losses: `fit_group` takes the
    same row means of a (runs, batch) table of them for all its runs in one call, and gets the same bits as `fit`.
    (``cross_entropy``'s own mean reduction sums in another order, so its loss differs in the last bits; its
    gradient, 1/N per example, is the same.)"""
    return nn.functional.cross_entropy(scores.float(), y, reduction="none").mean()


def group_mean_losses(scores: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """`mean_loss` of each run of a stack at once: `scores` (R·B, classes) with run r's rows r·B … (r+1)·B,
    `ys` (R, B); (R,) losses, each the bits `mean_loss` gives that run's rows alone."""
    per_example = nn.functional.cross_entropy(scores.float(), ys.reshape(-1), reduction="none")
    return per_example.view(ys.shape).mean(1)


def _end_epoch(trainer: _Trainer, run: RunProgress, splits: Splits, epoch: int, loss: float, train_acc: float,
               checkpoint_every: float) -> dict:
    """Step the schedule, record epoch `epoch` (validation accuracy, best epoch, snapshot) and write the
    checkpoint when it is due; the epoch's history record."""
    t, cfg = trainer, run.cfg
    t.scheduler.step()
    val_acc = accuracy(t.model, splits.val, batch_size=cfg.eval_batch_size, device=t.device, speed=t.speed,
                       shard=t.shard)
    record = run.record(epoch, loss, train_acc, val_acc, t.optimizer.param_groups[0]["lr"],
                        lambda: _cpu_state(t.model))
    if t.writes and (time.perf_counter() - t.last_save >= checkpoint_every or epoch == cfg.epochs
                         or _done_training(t, run)):
        _save(t, run, epoch)
    return record


def _save(trainer: _Trainer, run: RunProgress, epoch: int) -> None:
    t = trainer
    t.last_save = time.perf_counter()
    save_checkpoint(run.checkpoint, run.checkpoint_state(
        epoch, model=t.model.state_dict(), optimizer=t.optimizer.state_dict(), scheduler=t.scheduler.state_dict(),
        steps=t.steps, rng=torch.get_rng_state(),
        cuda_rng=torch.cuda.get_rng_state(t.device) if t.device.type == "cuda" else None,
        seconds=run.elapsed + time.perf_counter() - t.start, provenance=t.provenance))


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
