"""Run a study: plan the grid, execute each run (build → train → measure), store it, then report.

A run is a pure function of its resolved config (`execute_run`); only the driver (`run_study`) writes the
store, so any executor can compute runs anywhere and hand the results back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import distributed as dist
from tqdm.auto import tqdm

from widthlab import files
from widthlab.data import load_data
from widthlab.data.base import ArrayDataset, Splits
from widthlab.errors import WidthlabError, check_positive_int, check_seconds
from widthlab.measure import analyze, check_measurable
from widthlab.models import create_model
from widthlab.study.config import (StudyConfig, candidate_labels, load_config, normalized_run_config,
                                   resolved_measure)
from widthlab.study.executors import EXECUTORS, execute
from widthlab.study.store import STORE_NAME, Store, export_csv, left_out_note, select_runs, study_lock
from widthlab.threads import blas_threads
from widthlab.train import TrainConfig, fit
from widthlab.train.loop import resolve_device
from widthlab.train.stacked import stackable
from widthlab.train.vectorized import MAX_MEMBERS, NotStackable, fit_group, group_key, worth_stacking
from widthlab.train.distributed import distributed_shard, init_from_env

log = logging.getLogger("widthlab")
FINAL_STATUSES = ("done", "diverged")
TRAINED = "trained"  # a selection candidate trained but not measured (it was not, or not yet, chosen)
CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class RunSpec:
    """One grid cell: a variant at a width and replicate, with its fully resolved config."""

    run_id: str
    variant: str
    width: float
    replicate: int
    config: dict[str, Any]  # seed, threads, data, model, train, measure (+ select): JSON-ready
    cell: str | None = None  # with grid.select: the grid cell this candidate competes in
    candidate: str | None = None  # with grid.select: the candidate's name (``lr=0.1``)
    measure: bool = True  # False: train only, the run ends "trained" (a candidate not yet chosen)


def plan_runs(cfg: StudyConfig) -> list[RunSpec]:
    """The grid in a stable order: variant, then width, then replicate (replicate r trains with seed r), then,
    with ``grid.select``, the candidates in the order written (run id ``CELL-NAME``, e.g. ``default-w1-r0-lr=0.1``).
    """
    select = cfg.grid.select if cfg.grid.selecting else None
    candidates = [None] if select is None else list(select.candidates)
    labels = [None] if select is None else candidate_labels(select.candidates)
    specs = []
    for variant in cfg.grid.variants:
        per_candidate = [cfg.variant_sections(variant, candidate) for candidate in candidates]
        for width in cfg.grid.widths:
            for replicate in range(cfg.grid.replicates):
                cell = f"{variant}-w{width:g}-r{replicate}"
                for candidate, label, sections in zip(candidates, labels, per_candidate):
                    train = sections["train"].model_copy(update={"seed": replicate})
                    config = {"study_seed": cfg.seed, "threads": cfg.threads, "width": width, "replicate": replicate,
                              "data": sections["data"].model_dump(), "model": sections["model"].model_dump(),
                              "train": train.model_dump(), "measure": resolved_measure(sections["measure"])}
                    if candidate is None:
                        specs.append(RunSpec(cell, variant, width, replicate, config))
                        continue
                    config["select"] = {"cell": cell, "candidate": label, "overrides": candidate}
                    specs.append(RunSpec(f"{cell}-{label}", variant, width, replicate, config, cell=cell,
                                         candidate=label, measure=select.measure == "all"))
    return specs


def choose(runs: pd.DataFrame, specs: list[RunSpec]) -> tuple[dict[str, str], list[str]]:
    """``({cell: the chosen run id}, notes)`` for every cell whose candidates have all finished: the candidate with
    the best validation accuracy (ties: the first written), among those that did not diverge. A cell with a
    candidate still to run or failed is not chosen yet, and a cell whose candidates all diverged has no choice
    (both with a note). With random training labels the validation labels are random too, so the candidate that
    fits its training set best (training accuracy) is chosen instead.
    """
    status = dict(zip(runs["run_id"], runs["status"]))
    score = {"val_acc": dict(zip(runs["run_id"], runs["val_acc"].astype(float))),
             "train_acc": dict(zip(runs["run_id"], runs["train_acc"].astype(float)))}
    cells: dict[str, list[RunSpec]] = {}
    for spec in specs:
        if spec.cell is not None:
            cells.setdefault(spec.cell, []).append(spec)
    chosen, notes = {}, []
    for cell, members in cells.items():
        waiting = [m.candidate for m in members if status.get(m.run_id) not in (*FINAL_STATUSES, TRAINED)]
        if waiting:
            notes.append(f"cell {cell}: candidate(s) {', '.join(waiting)} failed or did not finish; the cell is not "
                         "chosen nor reported (rerun to retry them)")
            continue
        by = score["train_acc" if members[0].config["data"].get("random_labels") else "val_acc"]
        scores = [(by[m.run_id], -i, m.run_id) for i, m in enumerate(members)
                  if status[m.run_id] != "diverged" and np.isfinite(by[m.run_id])]
        if not scores:
            notes.append(f"cell {cell}: every candidate diverged; nothing is measured for it")
            continue
        chosen[cell] = max(scores)[2]
    return chosen, notes


def _load_splits(config: dict, cache: dict | None) -> Splits:
    data = dict(config["data"])
    key = json.dumps([config["study_seed"], data], sort_keys=True)
    if cache is not None and key in cache:
        return cache[key]
    name, root = data.pop("name"), data.pop("root")
    splits = load_data(name, root=root, seed=config["study_seed"], **data)
    if cache is not None:
        cache.clear()  # one data set at a time: a 10,000-d synthetic set is 120 MB
        cache[key] = splits
    return splits


# Training holds about this many copies of the weights: the weights, gradients, optimiser state, best-epoch copy.
WEIGHT_COPIES = 4


def available_memory(device: str) -> int | None:
    """Bytes free for a run on `device` (CUDA: the GPU's free memory; else the machine's available RAM)."""
    if device == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info()[0])
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def preflight(specs: list[RunSpec], cache: dict | None) -> None:
    """Before any run is registered: every data set loads and every model builds and fits in memory.

    A mistake found here (a data option, a ``module:function`` that does not import or raises, a width whose
    model needs more memory than there is) is one WidthlabError, and the corrected command starts afresh instead
    of being refused as "a different configuration". Models are built on the ``meta`` device (shapes only);
    a user's model that cannot be built there is built on the CPU at its smallest width instead.
    """
    built: set[str] = set()
    smallest: dict[str, RunSpec] = {}
    for spec in specs:
        key = json.dumps(spec.config["model"], sort_keys=True)
        if key not in smallest or spec.width < smallest[key].width:
            smallest[key] = spec
    for spec in specs:
        cfg = spec.config
        splits = _load_splits(cfg, cache)
        key = json.dumps([cfg["model"], spec.width], sort_keys=True)
        if key in built:
            continue
        built.add(key)
        model_spec = dict(cfg["model"])
        name, init, sigma = model_spec.pop("name"), model_spec.pop("init"), model_spec.pop("sigma")
        options = dict(init=init, sigma=sigma, num_classes=splits.num_classes, seed=spec.replicate, **model_spec)
        try:
            with torch.device("meta"):
                model = create_model(name, spec.width, **options)
        except WidthlabError:
            if ":" not in name:
                raise
            if smallest[json.dumps(cfg["model"], sort_keys=True)] is spec:
                create_model(name, spec.width, **options)  # a real error of the user's code surfaces here
            continue
        params = sum(p.numel() for p in model.parameters())
        dtype = next((p.dtype for p in model.parameters()), torch.float32)
        need = params * dtype.itemsize * WEIGHT_COPIES
        free = available_memory(cfg["train"]["device"])
        if free is not None and need > free:
            raise WidthlabError(f"{name} at width {spec.width:g} has {params:,} parameters: training needs about "
                                f"{need / 2 ** 30:.1f} GiB, more than the {free / 2 ** 30:.1f} GiB available; "
                                "use smaller grid.widths")


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
    model_spec = dict(cfg["model"])
    name, init, sigma = model_spec.pop("name"), model_spec.pop("init"), model_spec.pop("sigma")
    model = create_model(name, spec.width, init=init, sigma=sigma, num_classes=splits.num_classes,
                         seed=spec.replicate, **model_spec)
    train_cfg = TrainConfig(**cfg["train"])
    # A layer the measurement would refuse (e.g. weight noise on a residual sum) stops the study now, not after
    # hours of training; checked on the training device (a model may run only there).
    model.to(resolve_device(train_cfg.device))
    check_measurable(model, splits.split(cfg["measure"]["split"]), perturbations=cfg["measure"]["perturbations"])
    model.to("cpu")  # a group's models wait on the CPU; training moves each to its device
    meta = {"run_id": spec.run_id, "width": spec.width, "replicate": spec.replicate, "model": cfg["model"],
            "num_classes": splits.num_classes, "data": cfg["data"], "study_seed": cfg["study_seed"]}
    return model, train_cfg, meta


def group_runs(specs: list[RunSpec]) -> list[list[RunSpec]]:
    """`specs` packed into groups that may train as one stacked model (`widthlab.train.vectorized`): runs of one
    data set, architecture and width whose configs differ only in the seed and initial weights (replicates,
    initialisation variants), at most `MAX_MEMBERS` per group, in plan order. A run with ``train.vectorize:
    off`` is a group of its own. Whether a group really trains stacked is decided when it runs (`fit_group`)."""
    groups: dict[str, list[RunSpec]] = {}
    alone = []
    # Under torchrun every rank trains the runs together, in plan order (`_follow`): one by one.
    distributed = distributed_shard()[1] > 1
    for spec in specs:
        cfg = spec.config
        if distributed or cfg["train"].get("vectorize", "auto") == "off":
            alone.append([spec])
            continue
        model = {k: v for k, v in cfg["model"].items() if k not in ("init", "sigma")}
        key = json.dumps([cfg["study_seed"], cfg["threads"], cfg["data"], model, spec.width,
                          group_key(TrainConfig(**cfg["train"]))], sort_keys=True)
        groups.setdefault(key, []).append(spec)
    packed = [members[i:i + MAX_MEMBERS] for members in groups.values() for i in range(0, len(members), MAX_MEMBERS)]
    return sorted(packed + alone, key=lambda group: specs.index(group[0]))


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
        measure: False trains only (the non-zero ranks of a distributed run).
    """
    torch.set_num_threads(specs[0].config["threads"])
    with blas_threads(specs[0].config["threads"]):
        return _execute_runs(specs, data_cache, on_epoch, list(checkpoints or [None] * len(specs)),
                             checkpoint_every, measure)


def _execute_runs(specs, data_cache, on_epoch, checkpoints, checkpoint_every, measure) -> list:
    splits = _load_splits(specs[0].config, data_cache)
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
    for part in _stackable_parts(specs, models, cfgs):
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


def _stackable_parts(specs: list[RunSpec], models: list, cfgs: list[TrainConfig]) -> list[range]:
    """`specs` split into consecutive parts whose stacked training fits in memory: the weights, gradients and
    optimiser state of a part take at most half of what the device has free (activations grow with it too)."""
    params = sum(p.numel() * p.element_size() for p in models[0].parameters())
    free = available_memory(resolve_device(cfgs[0].device).type)
    size = len(specs) if free is None else max(1, min(len(specs), int(free / 2 // max(params * WEIGHT_COPIES, 1))))
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
    cfg = spec.config
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
    plan = cfg["measure"]
    levels = plan["levels"]  # spelled out per perturbation by plan_runs
    evaluation = splits.split(plan["split"])
    labels = evaluation.y if hasattr(evaluation, "y") else None
    train_inputs = selectivity_examples(splits.split("train"), cfg["study_seed"]) if plan["split"] != "train" else None
    start = time.perf_counter()

    def measure_now(epoch: float) -> pd.DataFrame:
        frame = analyze(model, evaluation, labels=labels, perturbations=tuple(plan["perturbations"]),
                        levels=levels, samplings=plan["samplings"], seed=spec.replicate,
                        max_rows=plan["max_rows"], train_inputs=train_inputs)
        return frame.assign(epoch=epoch)

    # Snapshots first (along-training figures), then the trained weights, whose rows have epoch NaN.
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    frames = []
    for epoch, state in sorted(result.snapshots.items()):
        model.load_state_dict(state)
        frames.append(measure_now(float(epoch)))
    model.load_state_dict(trained)
    frames.append(measure_now(float("nan")))
    outcome["seconds"] += time.perf_counter() - start
    return outcome, pd.concat(frames, ignore_index=True)


def parameter_counts(runs: pd.DataFrame, *, import_code: bool = False) -> pd.DataFrame | None:
    """Trainable parameters per model and width (paper Figure A1), built on the meta device from each variant's
    stored model config; None (the figure is skipped) when a model cannot be built there.

    The readout has the model's default number of classes: the data set is not loaded just to count it. A store
    is data, not code: a ``module:function`` model named in it is imported only with `import_code` (the user's
    own config, or ``widthlab report --allow-code``); otherwise the figure is skipped.
    """
    rows = []
    for (variant, width), group in runs.groupby(["variant", "width"], sort=False):
        spec = dict(json.loads(group["config"].iloc[0])["model"])
        name = spec.pop("name")
        if ":" in name and not import_code:
            log.warning("parameter counts skipped: the store names user code %r, which is imported only with "
                        "--allow-code", name)
            return None
        try:
            # On the meta device parameters have shapes but no storage: a 4x Inception-v3 costs no memory.
            with torch.device("meta"):
                model = create_model(name, float(width), **spec)
        except Exception as exc:  # a user's model may not build without data or on meta; the figure is optional
            log.info("parameter counts skipped: %s cannot be built on meta: %s", name, exc)
            return None
        rows.append(dict(variant=variant, name=name, width=float(width),
                         params=sum(p.numel() for p in model.parameters() if p.requires_grad)))
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    # One line per model, unless variants change its architecture: then one per variant.
    per_variant = frame.groupby(["name", "width"])["params"].nunique().gt(1).any()
    frame["model"] = frame["name"] + (" (" + frame["variant"].astype(str) + ")" if per_variant else "")
    return frame[["model", "width", "params"]].drop_duplicates()


def _setup_log(out_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(out_dir / "widthlab.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def run_study(config: str | os.PathLike | dict | StudyConfig, out_dir: str | os.PathLike, *,
              executor: str = "local", workers: int = 2, address: str | None = None,
              gpus_per_run: float | None = None, progress: bool | None = None, report: bool = True,
              checkpoint_every: float = 60.0, formats: str | list[str] | tuple[str, ...] = ("png", "pdf")) -> Path:
    """Run every unfinished run of a study into `out_dir`, then write its figures and summary.

    Safe to kill at any moment: rerunning the same call skips finished runs and resumes partial ones from
    their last checkpoint (`out_dir/checkpoints/`), with the same result; a run is stored whole or not at all.

    Args:
        config: a preset name, a YAML path, a mapping or a `StudyConfig`.
        out_dir: the study directory (SQLite store, config.yaml, CSVs, figures/, summary.md, widthlab.log,
            checkpoints/). A second process writing to it at the same time is refused.
        executor: ``local`` (default), ``processes`` or ``ray`` (see `widthlab.study.executors`).
        workers: worker processes for ``processes`` (default 2).
        address: Ray cluster address for ``ray`` (default: start a local one).
        gpus_per_run: GPUs a Ray task declares (default: 1 when training on CUDA, else 0).
        progress: show progress bars (None: only on a terminal).
        report: write figures and the summary when the runs are finished.
        checkpoint_every: seconds between a run's checkpoints (default 60: a crash redoes at most a minute and
            an epoch of training; 0 writes one after every epoch).
        formats: figure file formats, "png,pdf" or a sequence of ``png``/``pdf`` (default ("png", "pdf")).

    Example: ``run_study("mlp-10d", "widthlab-runs/mlp-10d", executor="processes", workers=2)``
    """
    cfg = load_config(config)
    if report:
        from widthlab.report.figures import figure_formats

        formats = figure_formats(formats)  # a bad value fails now, not after the training
    if executor not in EXECUTORS:
        raise WidthlabError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    check_positive_int("workers", workers)
    check_seconds("checkpoint_every", checkpoint_every)
    out_dir = Path(out_dir)
    specs = plan_runs(cfg)
    if gpus_per_run is None:
        gpus_per_run = 1.0 if any(s.config["train"]["device"] == "cuda" for s in specs) else 0.0
    distributed = init_from_env(cuda=any(s.config["train"]["device"] != "cpu" for s in specs))
    if distributed and cfg.grid.selecting:
        raise WidthlabError("grid.select under torchrun is not supported: every process would have to measure the "
                            "chosen candidates together; run the selection without torchrun, or without grid.select")
    if distributed and executor != "local":
        raise WidthlabError(f"under torchrun every process trains the same run together: use the local executor, "
                            f"not {executor!r}")
    if distributed and dist.get_rank() != 0:
        _follow(specs, out_dir)
        return out_dir
    with study_lock(out_dir), _sharing_todo(distributed) as share:
        handler = _setup_log(out_dir)
        try:
            for caveat in cfg.caveats:
                log.warning("caveat: %s", caveat)
            checkpoints = out_dir / CHECKPOINTS
            finished = set()
            if (out_dir / STORE_NAME).is_file():
                with Store(out_dir, readonly=True) as peek:
                    finished = {run_id for run_id, status in peek.statuses().items() if status in FINAL_STATUSES}
            data_cache: dict = {}  # the preflight's data set, reused by the local executor's first runs
            preflight([s for s in specs if s.run_id not in finished], data_cache)
            with Store(out_dir) as store:
                store.add_runs([{"run_id": s.run_id, "variant": s.variant, "width": s.width,
                                 "replicate": s.replicate, "config": s.config, "cell": s.cell,
                                 "candidate": s.candidate,
                                 "checkpoint": f"{CHECKPOINTS}/{files.file_name(s.run_id)}.pt"} for s in specs],
                               normalize=normalized_run_config)
                # Only a config the store accepted replaces config.yaml: a refused rerun leaves the old one.
                files.write_text(out_dir / "config.yaml", _dump_yaml(cfg))
                checkpoints.mkdir(exist_ok=True)
                for stale in (*files.remove_stale_temps(checkpoints), *files.remove_stale_temps(out_dir),
                              *files.remove_stale_temps(out_dir / "figures")):
                    log.info("removed %s, left by a process that died while writing it", stale)
                statuses = store.statuses()
                # A candidate trained earlier but now to be measured (`measure: all` after `chosen`) is measured.
                todo = [s for s in specs if statuses.get(s.run_id) not in (*FINAL_STATUSES, TRAINED)
                        or (s.measure and statuses.get(s.run_id) == TRAINED)]
                share([s.run_id for s in todo])
                log.info("study %s: %d runs, %d to do, executor %s", cfg.name, len(specs), len(todo), executor)

                def compute(batch: list[RunSpec], total: int, desc: str) -> None:
                    results = execute(executor, batch, checkpoints, workers=workers, address=address,
                                      gpus_per_run=gpus_per_run, progress=progress, checkpoint_every=checkpoint_every,
                                      started=lambda spec: store.mark(spec.run_id, "running"), data_cache=data_cache)
                    _drive(store, batch, results, total, desc, progress)

                compute(todo, len(specs), cfg.name)
                notes = []
                if cfg.grid.selecting:
                    # Each cell keeps its best-validation candidate; a chosen one not measured yet is measured now
                    # (its finished checkpoint resumes without training).
                    chosen, notes = choose(store.runs(), specs)
                    store.choose(chosen, cells={s.cell for s in specs})
                    statuses = store.statuses()
                    by_id = {s.run_id: s for s in specs}
                    pending = [dataclasses.replace(by_id[run_id], measure=True) for run_id in chosen.values()
                               if statuses[run_id] == TRAINED]
                    log.info("selection: %d of %d cells chosen, %d chosen candidates to measure", len(chosen),
                             len({s.cell for s in specs}), len(pending))
                    if pending:
                        compute(pending, len(chosen), f"{cfg.name}: measure chosen")
                results = store.results()
            export_csv(results, out_dir)
            results, others = select_runs(results, [s.run_id for s in specs])
            notes = [*([left_out_note(others)] if others else []), *notes]
            for note in notes:
                log.warning(note)
            if report:
                from widthlab.report import write_report

                write_report(results.runs, results.metrics, out_dir, title=cfg.name, config=cfg.model_dump(mode="json"),
                             seed=cfg.seed, snapshots=results.snapshots, history=results.history,
                             params=parameter_counts(results.runs, import_code=True), notes=notes,
                             formats=formats)
        finally:
            log.removeHandler(handler)
            handler.close()
    return out_dir


@contextlib.contextmanager
def _sharing_todo(distributed: bool):
    """On rank 0 of a torchrun job, hand the list of runs to do to the other ranks (or None if the study fails
    before it gets there, so they stop instead of waiting)."""
    shared = []

    def share(run_ids: list[str]) -> None:
        if distributed:
            dist.broadcast_object_list([run_ids], src=0)
        shared.append(run_ids)

    try:
        yield share
    finally:
        if distributed and not shared:
            dist.broadcast_object_list([None], src=0)


def _follow(specs: list[RunSpec], out_dir: Path) -> None:
    """A non-zero rank of a torchrun job: train the runs rank 0 names, in its order; rank 0 alone measures and
    writes the store, checkpoints and report."""
    message = [None]
    dist.broadcast_object_list(message, src=0)
    if message[0] is None:
        raise WidthlabError("rank 0 stopped before starting the runs; see its error")
    by_id = {s.run_id: s for s in specs}
    cache: dict = {}
    for run_id in message[0]:
        checkpoint = out_dir / CHECKPOINTS / f"{files.file_name(run_id)}.pt"
        execute_run(by_id[run_id], data_cache=cache, checkpoint=checkpoint, measure=False)


def _drive(store: Store, todo: list[RunSpec], results, total: int, name: str, progress: bool | None) -> None:
    """Store each run's result as it arrives; a user error stops the study, a broken run does not."""
    bar = tqdm(total=total, initial=total - len(todo), desc=name, unit="run", position=0, dynamic_ncols=True,
               disable=None if progress is None else not progress)
    try:
        for spec, result in results:
            if result.kind == "user_error":
                raise WidthlabError(f"run {spec.run_id}: {result.error}")
            if result.kind == "failed":
                log.error("run %s failed: %s", spec.run_id, result.error)
                store.mark(spec.run_id, "failed", error=result.error.splitlines()[0])
            else:
                store.finish(spec.run_id, result.outcome, result.metrics)
                resumed = result.outcome.get("resumed_from")
                log.info("run %s %s: test_acc=%.4f (%.1fs)%s", spec.run_id, result.outcome["status"],
                         result.outcome["test_acc"], result.outcome["seconds"],
                         f", resumed from epoch {resumed}" if resumed is not None else "")
            bar.set_postfix_str(spec.run_id)
            bar.update(1)
    finally:
        bar.close()


def _dump_yaml(cfg: StudyConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
