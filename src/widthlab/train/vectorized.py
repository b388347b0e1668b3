"""`fit_group`: train several runs of one architecture at once, as one stacked model, with the results of `fit`.

Runs that differ only in their seed and initial weights (replicates, initialisation variants) take the same
number of steps on batches of the same shape, so R of them can share every kernel launch: their batches are
concatenated and each linear layer is one batched matrix product (`widthlab.train.stacked`). Runs of different
widths share the rest of each step (loss, backward pass, optimiser step): one stacked part per width
(`widthlab.train.mixed`). Each run keeps its
own data order, augmentation stream, optimiser state (the optimiser's update is elementwise, so one optimiser
over the stacked parameters updates each run as its own would), divergence, early stopping, snapshots and its
own checkpoint file in `fit`'s format: a run can resume alone, and a group resumes from its runs' checkpoints.
On the CPU in float64 the results equal `fit`'s bit for bit; in float32 to rounding (1e-5).

Stacking and torch.compile compose: a compiled group compiles its stacked model (full batches only, as `fit`
does), so on CUDA, where ``compile: auto`` compiles every long run, replicates still share their kernels.
The unstacked member models wait on the CPU while their stacked model trains: the device holds each weight once.

`vectorizable` says whether a list of runs can train this way, and why not; `fit_group` then trains them.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from widthlab.data.base import Splits
from widthlab.seeding import torch_generator
from widthlab.train.batching import iterate_batches, on_device, planned_steps, prepare, stacked_batches
from widthlab.train.checkpoint import load_resume_point, save_checkpoint
from widthlab.train.config import TrainConfig
from widthlab.train.distributed import distributed_shard
from widthlab.train.loop import (
    CUDA_GRAPH_MODES,
    Speed,
    compile_for_run,
    compiled_graphs,
    group_mean_losses,
    make_optimizer,
    make_scheduler,
    report_compiled,
    resolve_device,
)
from widthlab.train.mixed import (
    load_members,
    member_models,
    member_optimizer_state,
    member_state,
    stack_mixed,
    stack_optimizer_states,
)
from widthlab.train.progress import FitResult, RunProgress, check_same_config, out_of_steps, provenance
from widthlab.train.stacked import check_stacked, stackable
from widthlab.train.standin import cuda_like

log = logging.getLogger("widthlab")


class NotStackable(ValueError):
    """These runs cannot train as one stacked model (the message says why); train them one by one."""


# At most this many runs share one stacked model (memory grows with it; the gain flattens well before).
MAX_MEMBERS = 32


def group_key(cfg: TrainConfig) -> str:
    """Runs whose training configs have the same key take the same steps: everything but the seed."""
    return cfg.model_copy(update={"seed": 0}).model_dump_json()


def vectorizable(models: list[nn.Module], splits: Splits, cfgs: list[TrainConfig]) -> str | None:
    """None when `models` can train as one stacked model, else the reason they train one by one."""
    if len(models) < 2:
        return "a single run"
    if any(cfg.vectorize == "off" for cfg in cfgs):
        return "train.vectorize is off"
    if len({group_key(cfg) for cfg in cfgs}) > 1:
        return "the runs' training configs differ in more than their seed"
    if distributed_shard()[1] > 1:
        return "distributed training (torchrun)"
    # channels_last (CUDA's default) is not used stacked: a speed switch, not a number. A compiled group
    # compiles its stacked model (`fit_group`).
    if not (hasattr(splits.train, "x") and hasattr(splits.train, "y")):
        return "the training split is not held in memory"
    why = stackable(models[0])
    if why is not None:
        return why
    # Widths may differ (shapes: one stacked part per width, `widthlab.train.mixed`); names and dtypes may not.
    layouts = {tuple((k, v.dim(), v.dtype) for k, v in m.state_dict().items()) for m in models}
    if len(layouts) > 1:
        return "the models' parameters differ in name, rank or dtype"
    return None


def worth_stacking(model: nn.Module, device: torch.device) -> str | None:
    """None when stacking `model`'s runs pays on `device`, else why they train one by one instead: on the CPU a
    convolution's runs are compute-bound and stacking them is no faster (benchmarks/vectorized_training.py:
    3 alexnet_cifar 1/4x 0.8x), while small dense models are bound by per-step overhead (15 MLPs 3.7x).
    The CPU standing in for CUDA (tests) stacks convolutions as CUDA does, with grouped convolutions."""
    if not cuda_like(device) and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return "convolutions train as fast one by one on the CPU"
    return None


@torch.no_grad()
def activation_bytes(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """Bytes of `model`'s activations per example and member, (training, evaluation), from one forward pass of
    `example` (one input, without its batch dimension) with a hook on every leaf module.

    Training keeps every leaf's output for the backward pass, and as much again for their gradients while it
    runs; evaluation (no gradients) holds about one layer's input and output at a time. A stacked group of R
    members runs R × batch examples through the model, so these, not only the weights, decide how many fit."""
    sizes = []

    def record(module, args, out):
        taken = sum(a.numel() * a.element_size() for a in args if torch.is_tensor(a))
        sizes.append((taken, out.numel() * out.element_size() if torch.is_tensor(out) else 0))

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(record) for m in leaves]
    was_training = model.training
    try:
        model.eval()(example.unsqueeze(0))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    given = example.numel() * example.element_size()
    training = 2 * (given + sum(out for _, out in sizes))
    evaluation = max((taken + out for taken, out in sizes), default=given)
    return training, evaluation


def member_bytes(model: nn.Module, splits: Splits, cfg: TrainConfig, weight_copies: int) -> int:
    """Device bytes one member of a stacked group of `model`'s runs takes: `weight_copies` copies of its weights
    (weights, gradients, optimiser state, ...) and the activations of its share of the largest batch, a training
    batch or an evaluation batch (`eval_batch_size` examples, or the largest split when it has fewer)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) * weight_copies
    probe = splits.split("train")[0][0]
    training, evaluation = activation_bytes(model, probe.to(next(model.parameters()).device))
    rows = min(cfg.eval_batch_size, max(len(splits.split(s)) for s in ("train", "val", "test")))
    return weights + max(cfg.effective_batch_size * training, rows * evaluation)


class _Member(RunProgress):
    """One run's own bookkeeping inside a group; `final_state`: its weights when it stopped before the others."""

    def __init__(self, cfg: TrainConfig, checkpoint: str | os.PathLike | None, meta: dict | None):
        super().__init__(cfg, checkpoint, meta)
        self.final_state, self.finished = None, False

    def finish(self, stacked: nn.Module, r: int) -> None:
        """Stop training member `r` of `stacked` (diverged, at its target or out of steps), keeping its weights."""
        self.finished = True
        self.final_state = member_state(stacked, r)


def _resume_states(members: list[_Member]) -> list[dict] | None:
    """Every member's checkpoint when all of them have one of the same epoch; None when none has one.
    A mix (some runs further than others) is `NotStackable`: the caller trains them alone."""
    paths = [m.checkpoint for m in members]
    present = [p is not None and Path(p).is_file() for p in paths]
    if not any(present):
        return None
    if not all(present):
        raise NotStackable("only some runs of the group have checkpoints")
    states = [load_resume_point(p) for p in paths]
    if len({(s["epoch"], s["steps"]) for s in states}) > 1:
        raise NotStackable("the group's checkpoints are at different epochs")
    for member, state in zip(members, states):
        check_same_config(state, member.cfg, member.checkpoint)
    return states


@torch.no_grad()
def _accuracies(stacked: nn.Module, dataset, members: int, cfg: TrainConfig, device, speed) -> torch.Tensor:
    """Top-1 accuracy of every member on `dataset` (evaluation mode), as `accuracy` computes it per run."""
    was_training = stacked.training
    stacked.eval()
    correct = torch.zeros(members, dtype=torch.int64, device=device)
    total = 0
    # On the CPU member by member (the same bits, activations in cache); on a GPU all members in one pass.
    alone = member_models(stacked) if device.type == "cpu" else None
    with speed.autocast(device):
        for x, y in iterate_batches(dataset, cfg.eval_batch_size, shuffle=False, device=device,
                                    workers=speed.workers, pin_memory=speed.pin_memory):
            if alone is not None:
                scores = torch.stack([model(x) for model in alone])
            else:
                scores = stacked(x.repeat(members, *[1] * (x.dim() - 1)))
            correct += (scores.reshape(members, len(y), -1).argmax(-1) == y).sum(1)
            total += len(y)
    stacked.train(was_training)
    return correct.double().cpu() / max(total, 1)


def fit_group(models: list[nn.Module], splits: Splits, cfgs: list[TrainConfig],
              on_epoch: Callable[[int, dict], None] | None = None, *,
              checkpoints: list[str | os.PathLike | None] | None = None, checkpoint_every: float = 0.0,
              metas: list[dict | None] | None = None) -> list[FitResult]:
    """Train `models` (one architecture, configs equal but for the seed) together; one `FitResult` per model,
    equal to what `fit(models[r], splits, cfgs[r], ...)` returns. Each model is left with its trained weights.

    Raises `NotStackable` when the models cannot train stacked (see `vectorizable`, and a stacked forward pass
    that does not compute the members' own), or when their checkpoints are at different epochs; the caller then
    trains them one by one with `fit`, which resumes each from its own checkpoint.
    `on_epoch(r, record)` is called after each of run r's epochs.
    """
    why = vectorizable(models, splits, cfgs)
    if why is not None:
        raise NotStackable(f"cannot train these runs together: {why}")
    count = len(models)
    members = [_Member(cfg, path, meta) for cfg, path, meta in
               zip(cfgs, checkpoints or [None] * count, metas or [None] * count)]
    cfg = cfgs[0]
    device = resolve_device(cfg.device)
    speed = Speed.resolve(cfg, device, steps=planned_steps(cfg, len(splits.train)))
    for model in models:
        model.to(device)
    train_set = on_device(splits.train, device) if speed.data_on_device else splits.train
    stacked = _stack(models, splits, cfg.effective_batch_size * count, device)
    for model in models:  # the stacked model holds their weights now: the device keeps one copy while it trains
        model.to("cpu")
    states = _resume_states(members)
    optimizer = make_optimizer(stacked.parameters(), cfg)
    log.info("%d runs train stacked as one model, %s", count,
             "compiled (stacking and torch.compile compose)" if speed.compile else "eagerly")
    group = _Group(stacked, optimizer, make_scheduler(optimizer, cfg), members, device, speed, train_set,
                   # No stacked layer draws from the global RNG, so each run's stream stays where `fit` seeds it.
                   rng_states=[torch_generator(c.seed, "train-global").get_state() for c in cfgs],
                   provenance=provenance(any(m.checkpoint is not None for m in members)),
                   full=compile_for_run(stacked, cfg) if speed.compile else stacked,
                   graphs=speed.compile and cfg.compile_mode in CUDA_GRAPH_MODES,
                   graphs_before=compiled_graphs() if speed.compile else None)
    first_epoch = _resume_group(group, states)
    group.start = group.last_save = time.perf_counter()
    # A run that reached its target accuracy before its checkpoint (a resumed run) trains no further.
    for r, member in enumerate(members):
        if member.reached_target() or out_of_steps(cfg, group.steps):
            member.finish(stacked, r)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for epoch in range(first_epoch, cfg.epochs + 1):
            if all(m.finished for m in members):
                break
            losses, train_acc = _train_group_epoch(group, splits, cfg, epoch)
            if _end_group_epoch(group, splits, cfg, epoch, losses, train_acc, checkpoint_every, on_epoch):
                break
    results = _measure_group(group, models, splits, cfg)
    del group, stacked, optimizer  # the stacked weights and optimiser state leave the device before the members
    for model in models:  # each model is left on the training device, as `fit` leaves it
        model.to(device)
    return results


@dataclass
class _Group:
    """What `fit_group` carries from step to step and epoch to epoch: the stacked model, its optimiser, the
    members' bookkeeping, the step count and the checkpoint clock."""

    stacked: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    members: list[_Member]
    device: torch.device
    speed: Speed
    train_set: Dataset
    rng_states: list[torch.Tensor]  # each run's global RNG state, stored in its checkpoint as `fit` would
    provenance: dict  # the code versions the checkpoints store
    full: nn.Module  # the stacked model compiled for full batches, or the stacked model itself
    graphs: bool  # the compiled model replays CUDA graphs
    graphs_before: int | None  # Dynamo's graph count before the first compiled step (None: reported)
    steps: int = 0
    start: float = 0.0  # perf_counter when this (possibly resumed) session of training started
    last_save: float = 0.0  # perf_counter of the last checkpoint (or of the start)


def _stack(models: list[nn.Module], splits: Splits, rows: int, device: torch.device) -> nn.Module:
    """The models as one stacked model, checked on `rows` training inputs to compute each member's own outputs;
    `NotStackable` when it cannot be built or does not."""
    # The probe has the inputs' evaluation form (a crop augmentation makes training inputs smaller than stored).
    probe = next(iterate_batches(splits.split("train"), rows, shuffle=False, device=device))[0]
    try:
        # One grouped convolution for every member on CUDA (one launch), and on the CPU standing in for it.
        stacked = stack_mixed(models, grouped=cuda_like(device))
        mismatch = check_stacked(stacked, models, probe)
    except Exception as exc:  # a model that cannot be copied, or whose stacked forward pass fails
        raise NotStackable(f"cannot train these runs together: {type(exc).__name__}: {exc}") from exc
    if mismatch is not None:
        raise NotStackable(f"cannot train these runs together: {mismatch}")
    return stacked


def _resume_group(group: _Group, states: list[dict] | None) -> int:
    """Load the members' checkpoints `states` (None: a fresh start) into the group; the first epoch to train."""
    if states is None:
        return 1
    load_members(group.stacked, [s["model"] for s in states])
    group.optimizer.load_state_dict(stack_optimizer_states(group.stacked, [s["optimizer"] for s in states]))
    group.scheduler.load_state_dict(states[0]["scheduler"])
    group.steps = states[0]["steps"]
    for member, state in zip(group.members, states):
        member.restore(state)
    return states[0]["epoch"] + 1


def _train_group_epoch(group: _Group, splits: Splits, cfg: TrainConfig, epoch: int) -> tuple[list, list]:
    """One epoch of stacked optimiser steps (fewer when `cfg.max_steps` is reached); each member's mean loss and
    training accuracy."""
    g, device, count = group, group.device, len(group.members)
    g.stacked.train()
    loss_sum = torch.zeros(count, device=device, dtype=torch.float64)
    correct = torch.zeros(count, device=device, dtype=torch.int64)
    seen = 0
    seeds = [m.cfg.seed for m in g.members]
    # Each run's augmentation stream (none to draw without augmentation: 45 runs x 50 epochs of seeding add up).
    augment = [torch_generator(seed, "augment", epoch) for seed in seeds] if splits.augment is not None else []
    for x, ys in stacked_batches(g.train_set, cfg.effective_batch_size, seeds, epoch, device):
        if splits.augment is not None:
            x = torch.cat([prepare(splits.augment(part, gen), None, False)
                           for part, gen in zip(x.chunk(count), augment)])
        # Only full batches run compiled: the epoch's last, smaller one runs eagerly on the same weights.
        compiled = g.speed.compile and ys.shape[1] == cfg.effective_batch_size
        if compiled and g.graphs:  # CUDA graphs may reuse the last step's buffers: nothing of it is kept
            torch.compiler.cudagraph_mark_step_begin()
        with g.speed.autocast(device):
            scores = (g.full if compiled else g.stacked)(x)
            losses = group_mean_losses(scores, ys)
        g.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        g.optimizer.step()
        g.steps += 1
        if compiled and g.graphs_before is not None:  # the first compiled step: did it really compile?
            report_compiled(g.graphs_before, "the stacked runs' full batches")
            g.graphs_before = None
        loss_sum += losses.detach().double() * ys.shape[1]
        correct += (scores.reshape(count, ys.shape[1], -1).argmax(-1) == ys).sum(1)
        seen += ys.shape[1]
        if out_of_steps(cfg, g.steps):
            break
    return (loss_sum / max(seen, 1)).tolist(), (correct.double().cpu() / max(seen, 1)).tolist()


def _end_group_epoch(group: _Group, splits: Splits, cfg: TrainConfig, epoch: int, losses: list, train_acc: list,
                     checkpoint_every: float, on_epoch: Callable[[int, dict], None] | None) -> bool:
    """Finish diverged members, step the schedule, record epoch `epoch` for every member still training, write
    the checkpoints when due and finish the members that are done; whether every member has finished."""
    g = group
    for r, member in enumerate(g.members):
        if not member.finished and not math.isfinite(losses[r]):
            member.diverge(epoch)
            member.finish(g.stacked, r)
    if all(m.finished for m in g.members):
        return True
    g.scheduler.step()
    val = _accuracies(g.stacked, splits.val, len(g.members), cfg, g.device, g.speed).tolist()
    done = out_of_steps(cfg, g.steps)
    due = time.perf_counter() - g.last_save >= checkpoint_every or epoch == cfg.epochs
    for r, member in enumerate(g.members):
        if member.finished:
            continue
        member.record(epoch, losses[r], train_acc[r], val[r], g.optimizer.param_groups[0]["lr"],
                      functools.partial(member_state, g.stacked, r))
        if member.reached_target() or done:
            due = True
    if due:
        _save_group(g, epoch)
    for r, member in enumerate(g.members):
        if not member.finished and (member.reached_target() or done):
            member.finish(g.stacked, r)
        if on_epoch is not None and member.result.history and member.result.history[-1]["epoch"] == epoch:
            on_epoch(r, member.result.history[-1])
    return False


def _save_group(group: _Group, epoch: int) -> None:
    """Each member still training writes its own checkpoint, in `fit`'s format, with an equal share of the time."""
    g = group
    g.last_save = time.perf_counter()
    share = (time.perf_counter() - g.start) / len(g.members)
    for r, member in enumerate(g.members):
        if member.checkpoint is None or member.finished:
            continue
        save_checkpoint(member.checkpoint, member.checkpoint_state(
            epoch, model=member_state(g.stacked, r), optimizer=member_optimizer_state(g.stacked, g.optimizer, r),
            scheduler=g.scheduler.state_dict(), steps=g.steps, rng=g.rng_states[r], cuda_rng=None,
            seconds=member.elapsed + share, provenance=g.provenance))


def _measure_group(group: _Group, models: list[nn.Module], splits: Splits, cfg: TrainConfig) -> list[FitResult]:
    """Give each model its final weights (its best epoch's under early stopping) and each run's result its
    accuracies on the three splits and its share of the time."""
    g, count = group, len(group.members)
    share = (time.perf_counter() - g.start) / count
    finals = []
    for r, member in enumerate(g.members):
        state = member.final_state if member.final_state is not None else member_state(g.stacked, r)
        best = member.early_stopped_weights()
        finals.append(state if best is None else best)
    load_members(g.stacked, finals)
    accuracies = {split: _accuracies(g.stacked, splits.split(split), count, cfg, g.device, g.speed).tolist()
                  for split in ("train", "val", "test")}
    results = []
    for r, (member, model) in enumerate(zip(g.members, models)):
        model.load_state_dict(finals[r])
        if member.result.status == "done":
            for split, values in accuracies.items():
                setattr(member.result, f"{split}_acc", values[r])
        member.result.seconds = member.elapsed + share
        results.append(member.result)
    return results
