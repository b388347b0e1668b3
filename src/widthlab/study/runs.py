"""One run, or a group of runs, built, trained and measured: the work every executor does.

A run is a pure function of its `RunConfig` (`execute_runs`); only the driver (`widthlab.study.runner`) writes
the store, so any executor can compute runs anywhere and hand the results back.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from dataclasses import dataclass

import pandas as pd
import torch

from widthlab.data import load_data
from widthlab.data.base import ArrayDataset, Splits
from widthlab.errors import WidthlabError, first_line
from widthlab.measure import analyze, check_measurable
from widthlab.measure.frivolous import frivolous_rows
from widthlab.memory import available_memory, weight_bytes
from widthlab.study.build import build_model, expected_input
from widthlab.study.config import RunConfig
from widthlab.threads import blas_threads
from widthlab.train import TrainConfig, fit
from widthlab.train.distributed import distributed_shard, gather_to_first
from widthlab.train.loop import resolve_device
from widthlab.train.stacked import stackable
from widthlab.train.vectorized import (
    MAX_MEMBERS,
    NotStackable,
    fit_group,
    group_key,
    member_bytes,
    worth_stacking,
)
from widthlab.vocab import FRIVOLOUS_METRICS

log = logging.getLogger("widthlab")
FINAL_STATUSES = ("done", "diverged")
TRAINED = "trained"  # a selection candidate trained but not measured (it was not, or not yet, chosen)


@dataclass(frozen=True)
class RunSpec:
    """One grid cell: a variant at a width and replicate (both read from its fully resolved config)."""

    run_id: str
    variant: str
    config: RunConfig
    cell: str | None = None  # with grid.select: the grid cell this candidate competes in
    candidate: str | None = None  # with grid.select: the candidate's name (``lr=0.1``)
    measure: bool = True  # False: train only, the run ends "trained" (a candidate not yet chosen)

    @property
    def width(self) -> float:
        return self.config.width

    @property
    def replicate(self) -> int:
        return self.config.replicate


def load_splits(config: RunConfig, cache: dict | None) -> Splits:
    """The run's data set, from `cache` when the previous run of this process loaded the same one."""
    key = json.dumps([config.study_seed, config.data.model_dump(mode="json")], sort_keys=True)
    if cache is not None and key in cache:
        return cache[key]
    splits = load_data(config.data.name, root=config.data.root, seed=config.study_seed, **config.data.options)
    if cache is not None:
        cache.clear()  # one data set at a time: a 10,000-d synthetic set is 120 MB
        cache[key] = splits
    return splits


# Training holds about this many copies of the weights: the weights, gradients, optimiser state, best-epoch copy.
WEIGHT_COPIES = 4


@torch.no_grad()
def check_takes_inputs(model: torch.nn.Module, splits: Splits, what: str) -> None:
    """Run `model` on the first two test inputs (moved to its device: on ``meta``, shapes only), so that a
    model whose input layer does not fit the data (``model.input_dim: 5`` on 10-d data) is one WidthlabError
    before any run is registered, not a failure of every run. An operation the ``meta`` device cannot run
    (a user's model calling ``.item()``) proves nothing either way: the run's own check on real data decides."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.stack([splits.test[i][0] for i in range(min(2, len(splits.test)))]).to(device)
    try:
        model.eval()(x)
    except NotImplementedError:
        return
    except Exception as exc:
        if device.type == "meta" and "meta" in str(exc):
            return
        expected = expected_input(model)
        raise WidthlabError(f"{what} cannot run on the data's inputs of shape {tuple(x.shape[1:])}: "
                            f"{first_line(exc)}" + (f" ({expected})" if expected else "")) from None


# Selectivity's class of largest mean (k*) is taken on at most this many training examples (one extra pass).
SELECTIVITY_EXAMPLES = 10_000


def selectivity_examples(train, seed: int):
    """The training examples selectivity takes k* from: all of them, or `SELECTIVITY_EXAMPLES` drawn without
    replacement (seeded by the study seed, so every run of a study uses the same ones). `train` is the training
    split as it is evaluated (`Splits.split("train")`: centre crops, not the augmented training inputs)."""
    n = len(train)
    if n <= SELECTIVITY_EXAMPLES:
        return train
    generator = torch.Generator().manual_seed(int(seed))
    index = torch.randperm(n, generator=generator)[:SELECTIVITY_EXAMPLES].sort().values
    if isinstance(train, ArrayDataset):
        return ArrayDataset(train.x[index], train.y[index])
    return torch.utils.data.Subset(train, index.tolist())


def _build(spec: RunSpec, splits: Splits) -> tuple[torch.nn.Module, TrainConfig, dict]:
    """The run's model (checked measurable on its training device), training config and checkpoint metadata."""
    cfg = spec.config
    model = build_model(cfg.model, spec.width, num_classes=splits.num_classes, seed=spec.replicate)
    train_cfg = cfg.train
    # A layer the measurement would refuse (e.g. weight noise on a residual sum) stops the study now, not after
    # hours of training; checked on the training device (a model may run only there).
    model.to(resolve_device(train_cfg.device))
    check_measurable(model, splits.split(cfg.measure.split), perturbations=cfg.measure.perturbations)
    model.to("cpu")  # a group's models wait on the CPU; training moves each to its device
    stored = cfg.stored()
    meta = {"run_id": spec.run_id, "width": spec.width, "replicate": spec.replicate, "model": stored["model"],
            "num_classes": splits.num_classes, "data": stored["data"], "study_seed": cfg.study_seed}
    return model, train_cfg, meta


def group_runs(specs: list[RunSpec], *, widths_together: bool = True) -> list[list[RunSpec]]:
    """`specs` packed into groups that may train as one stacked model (`widthlab.train.vectorized`): runs of one
    data set and architecture whose configs differ only in the seed, initial weights (replicates, initialisation
    variants) and, with `widths_together` (the default), the width: one stacked part per width
    (`widthlab.train.mixed`), members ordered by width, at most `MAX_MEMBERS` of one width per group; groups in
    plan order. Without it, one group per width (executors that run groups in parallel: a group is their unit
    of work). A run with ``train.vectorize: off`` is a group of its own. Whether a group really trains stacked
    is decided when it runs (`fit_group`)."""
    groups: dict[str, list[RunSpec]] = {}
    alone = []
    # Under torchrun every rank trains the runs together, in plan order (`_follow`): one by one.
    distributed = distributed_shard()[1] > 1
    for spec in specs:
        cfg = spec.config
        if distributed or cfg.train.vectorize == "off":
            alone.append([spec])
            continue
        stored = cfg.stored()
        model = {k: v for k, v in stored["model"].items() if k not in ("init", "sigma")}
        key = json.dumps([cfg.study_seed, cfg.threads, stored["data"], model,
                          None if widths_together else spec.width, group_key(cfg.train)], sort_keys=True)
        groups.setdefault(key, []).append(spec)
    packed = [part for members in groups.values() for part in _pack_by_width(members)]
    return sorted(packed + alone, key=lambda group: specs.index(group[0]))


def _pack_by_width(members: list[RunSpec]) -> list[list[RunSpec]]:
    """`members` (plan order) in groups holding at most `MAX_MEMBERS` runs of each width, each group's runs
    ordered by width (stably: a width's runs stay in plan order), so that a width is one consecutive part."""
    packs: list[list[RunSpec]] = []
    for spec in members:
        pack = next((p for p in packs if sum(s.width == spec.width for s in p) < MAX_MEMBERS), None)
        if pack is None:
            packs.append(pack := [])
        pack.append(spec)
    return [sorted(pack, key=lambda s: s.width) for pack in packs]


def execute_runs(specs: list[RunSpec], *, data_cache: dict | None = None, on_epoch=None,
                 checkpoints: list[str | os.PathLike | None] | None = None, checkpoint_every: float = 0.0,
                 measure: bool = True) -> list[tuple[dict, pd.DataFrame | None] | Exception]:
    """Build, train and measure runs (a group of `group_runs`): trained as one stacked model when they can be
    (`fit_group`), else one by one with `fit`; the numbers are the same either way. One (outcome, metrics) per
    run, metrics None when training diverged, or the exception that broke that run alone (the others still
    count); an exception of the stacked training itself is raised.

    Args:
        data_cache: a dict reused across runs of one process so the data set is built once per study.
        on_epoch: ``on_epoch(index, record)`` after each epoch of run ``specs[index]`` (progress reporting).
        checkpoints: each run's checkpoint file; training resumes from it when it exists.
        checkpoint_every: seconds between checkpoints (see `fit`; default 0: every epoch).
        measure: False trains only (under torchrun every rank must pass the same: each measures its share).
    """
    torch.set_num_threads(specs[0].config.threads)
    with blas_threads(specs[0].config.threads):
        return _execute_runs(specs, data_cache, on_epoch, list(checkpoints or [None] * len(specs)),
                             checkpoint_every, measure)


def _execute_runs(specs, data_cache, on_epoch, checkpoints, checkpoint_every, measure) -> list:
    splits = load_splits(specs[0].config, data_cache)
    first = _build(specs[0], splits)

    def alone(i: int, built=None):  # run i trained with `fit` and measured; its failure is its own
        return _guarded(_alone, specs[i], built, splits, checkpoints[i], checkpoint_every, measure,
                        None if on_epoch is None else functools.partial(on_epoch, i))

    why = None
    if len(specs) > 1:
        why = stackable(first[0]) or worth_stacking(first[0], resolve_device(first[1].device))
        if why is not None:
            log.info("runs %s train one by one: %s", ", ".join(s.run_id for s in specs), why)
    if len(specs) == 1 or why is not None:  # one model at a time: no more memory than a single run
        return [alone(i, first if i == 0 else None) for i in range(len(specs))]
    built = [first, *(_build(spec, splits) for spec in specs[1:])]
    models, cfgs, metas = (list(column) for column in zip(*built))
    done = []
    for part in _stackable_parts(specs, models, cfgs, splits):
        chunk = slice(part[0], part[-1] + 1)
        results = _fit_stacked(specs[chunk], models[chunk], splits, cfgs[chunk], checkpoints[chunk], metas[chunk],
                               on_epoch=None if on_epoch is None else (lambda i, record, first=part[0]:
                                                                       on_epoch(first + i, record)),
                               checkpoint_every=checkpoint_every)
        if results is None:
            done += [alone(i, built[i]) for i in part]
        else:
            done += [_guarded(_finish, specs[i], models[i], result, splits, measure)
                     for i, result in zip(part, results)]
    return done


def _guarded(step, *args):
    """`step(*args)`, or the exception it raised: one broken run of a group does not fail the others."""
    try:
        return step(*args)
    except Exception as exc:  # handed back per run; the executor turns it into that run's failure
        return exc


def _alone(spec: RunSpec, built, splits: Splits, checkpoint, checkpoint_every: float, measure: bool, on_epoch):
    """One run built (unless `built` is its `_build`), trained with `fit` and measured."""
    model, cfg, meta = built if built is not None else _build(spec, splits)
    result = fit(model, splits, cfg, on_epoch=on_epoch, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                 meta=meta)
    return _finish(spec, model, result, splits, measure)


def _stackable_parts(specs: list[RunSpec], models: list, cfgs: list[TrainConfig], splits: Splits) -> list[range]:
    """`specs` split into consecutive parts whose stacked training fits in memory: a part's weights, gradients
    and optimiser state and the activations of its largest batch (evaluation runs `eval_batch_size` examples
    per member at once) take at most half of what the device has free (`member_bytes`), every member counted
    as the widest when the widths differ."""
    free = available_memory(resolve_device(cfgs[0].device).type)
    if free is None:
        return [range(len(specs))]
    widest = max(models, key=weight_bytes)
    try:
        per_member = member_bytes(widest, splits, cfgs[0], WEIGHT_COPIES)
    except Exception as exc:  # a forward the CPU cannot run: the stacked check on the device decides
        log.info("runs %s: activation memory not estimated (%s); sized by their weights",
                 ", ".join(s.run_id for s in specs), first_line(exc))
        per_member = weight_bytes(widest) * WEIGHT_COPIES
    size = max(1, min(len(specs), int(free / 2 // max(per_member, 1))))
    return [range(i, min(i + size, len(specs))) for i in range(0, len(specs), size)]


def _fit_stacked(specs, models, splits, cfgs, checkpoints, metas, *, on_epoch, checkpoint_every: float):
    """`FitResult`s of a part of a group trained as one stacked model, or None when it is a single run or
    `fit_group` finds it cannot be stacked (the caller then trains its runs one by one)."""
    if len(specs) < 2:
        return None
    try:
        return fit_group(models, splits, cfgs, on_epoch=on_epoch, checkpoints=checkpoints,
                         checkpoint_every=checkpoint_every, metas=metas)
    except NotStackable as exc:  # e.g. a forward that mixes examples, or checkpoints at different epochs
        log.info("runs %s train one by one: %s", ", ".join(s.run_id for s in specs), exc)
        return None


def execute_run(spec: RunSpec, *, data_cache: dict | None = None, on_epoch=None,
                checkpoint: str | os.PathLike | None = None, checkpoint_every: float = 0.0,
                measure: bool = True) -> tuple[dict, pd.DataFrame | None]:
    """Build, train and measure one run (see `execute_runs`). Returns (outcome, metrics)."""
    done = execute_runs([spec], data_cache=data_cache, checkpoints=[checkpoint], checkpoint_every=checkpoint_every,
                        on_epoch=None if on_epoch is None else (lambda index, record: on_epoch(record)),
                        measure=measure)[0]
    if isinstance(done, Exception):
        raise done
    return done


def _finish(spec: RunSpec, model: torch.nn.Module, result, splits: Splits,
            measure: bool) -> tuple[dict, pd.DataFrame | None]:
    """A trained run's outcome, and its measurement (snapshots first, then the trained weights)."""
    outcome = {"status": result.status, "seconds": result.seconds, "train_acc": result.train_acc,
               "val_acc": result.val_acc, "test_acc": result.test_acc, "epochs": len(result.history),
               "best_epoch": result.best_epoch, "diverged_epoch": result.diverged_epoch, "history": result.history,
               "resumed_from": result.resumed_from}
    outcome["test_examples"], outcome["num_classes"] = len(splits.test), splits.num_classes
    if result.status != "done" or not measure:
        return outcome, None
    if not spec.measure:  # a selection candidate: measured only if it is chosen
        outcome["status"] = TRAINED
        return outcome, None
    start = time.perf_counter()
    frame = _measure_run(spec, model, result, splits)
    outcome["seconds"] += time.perf_counter() - start
    return outcome, frame


def _measure_run(spec: RunSpec, model: torch.nn.Module, result, splits: Splits) -> pd.DataFrame | None:
    """The run's measurement: each snapshot (along-training figures), then the trained weights, whose rows have
    epoch NaN. Under torchrun every process measures its share (`_measure_share`) and rank 0, alone, gets the
    whole (None on the others)."""
    cfg = spec.config
    plan = cfg.measure  # its levels spelled out per perturbation by plan_runs
    evaluation = splits.split(plan.split)
    labels = evaluation.y if hasattr(evaluation, "y") else None
    train_inputs = selectivity_examples(splits.split("train"), cfg.study_seed) if plan.split != "train" else None

    def measure_now(perturbations: list[str]) -> pd.DataFrame:
        return analyze(model, evaluation, labels=labels, perturbations=perturbations,
                       levels={name: list(plan.levels[name]) for name in perturbations},
                       samplings=plan.samplings, seed=spec.replicate, max_rows=plan.max_rows,
                       train_inputs=train_inputs)

    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    states = [(float(epoch), state) for epoch, state in sorted(result.snapshots.items())]
    states.append((float("nan"), trained))
    perturbations = list(plan.perturbations)
    rank, world = distributed_shard()
    if world > 1:
        return _measure_share(model, states, perturbations, measure_now, rank, world)
    frames = []
    for epoch, state in states:
        model.load_state_dict(state)
        frames.append(measure_now(perturbations).assign(epoch=epoch))
    model.load_state_dict(trained)
    return pd.concat(frames, ignore_index=True)


def _measure_share(model: torch.nn.Module, states: list, perturbations: list[str], measure_now, rank: int,
                   world: int) -> pd.DataFrame | None:
    """Rank `rank`'s share of a run's measurement, gathered on rank 0 into the frame one process measures, row
    for row (`_assemble`); None on the other ranks. The model is left with the last of `states`, its trained
    weights.

    The pieces, (weights, perturbation) pairs, are dealt round-robin: every random draw of `analyze` is named by
    the layer, sampling and perturbation, never by what else is measured, so a piece's numbers do not depend on
    the process that measures it. A process whose share fails still joins the gathering, with the exception, so
    none waits forever; rank 0 raises it, failing the run alone.
    """
    pieces = [(i, perturbation) for i in range(len(states)) for perturbation in perturbations]
    mine: list[tuple[int, pd.DataFrame]] | Exception = []
    try:
        for index in range(rank, len(pieces), world):
            i, perturbation = pieces[index]
            model.load_state_dict(states[i][1])
            mine.append((index, measure_now([perturbation])))
    except Exception as exc:  # handed to rank 0 (below), which fails the run
        mine = exc
    finally:
        model.load_state_dict(states[-1][1])
    gathered = gather_to_first(mine)
    if gathered is None:
        return None
    failed = next((share for share in gathered if isinstance(share, Exception)), None)
    if failed is not None:
        raise failed
    frames = dict(item for share in gathered for item in share)
    per_state = len(perturbations)
    return pd.concat([_assemble([frames[i * per_state + j] for j in range(per_state)]).assign(epoch=epoch)
                      for i, (epoch, _) in enumerate(states)], ignore_index=True)


def _assemble(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """The `analyze` frame of several perturbations from the frames of each alone, in its row order: the rows
    without a perturbation (redundancy, similarity null, selectivity: the same in every part) once, the curves
    in perturbation order, then the frivolous-unit rows derived from them (as `analyze` derives them)."""
    derived = [part["metric"].isin(FRIVOLOUS_METRICS) for part in parts]
    body = pd.concat([parts[0][~derived[0]],
                      *(part[~out & (part["perturbation"] != "")] for part, out in zip(parts[1:], derived[1:]))],
                     ignore_index=True)
    return pd.concat([body, frivolous_rows(body)], ignore_index=True)
