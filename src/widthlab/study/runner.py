"""Run a study: plan the grid, execute each run (build → train → measure), store it, then report.

A run is a pure function of its resolved config (`execute_run`); only the driver (`run_study`) writes the
store, so any executor can compute runs anywhere and hand the results back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import distributed as dist
from tqdm.auto import tqdm

from widthlab import files
from widthlab.errors import WidthlabError, check_positive_int, check_seconds
from widthlab.memory import check_memory, weight_bytes
from widthlab.study.build import build_model, parameter_count, parameter_counts
from widthlab.study.config import (
    RunConfig,
    Selection,
    StudyConfig,
    candidate_labels,
    load_config,
    resolve_levels,
    run_identity,
    width_tag,
)
from widthlab.study.executors import check_executor, execute
from widthlab.study.runs import (
    FINAL_STATUSES,
    TRAINED,
    WEIGHT_COPIES,
    RunSpec,
    check_takes_inputs,
    execute_run,
    load_splits,
)
from widthlab.study.store import (
    STORE_NAME,
    Results,
    Store,
    check_measured,
    check_study_folder,
    export_csv,
    left_out_note,
    select_runs,
    study_lock,
)
from widthlab.train.distributed import broadcast_from_first, init_from_env

log = logging.getLogger("widthlab")
CHECKPOINTS = "checkpoints"


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
                cell = f"{variant}-{width_tag(width)}-r{replicate}"
                for candidate, label, sections in zip(candidates, labels, per_candidate):
                    config = RunConfig(study_seed=cfg.seed, threads=cfg.threads, width=width, replicate=replicate,
                                       data=sections["data"], model=sections["model"],
                                       train=sections["train"].model_copy(update={"seed": replicate}),
                                       measure=resolve_levels(sections["measure"]),
                                       select=None if candidate is None else
                                       Selection(cell=cell, candidate=label, overrides=candidate))
                    if candidate is None:
                        specs.append(RunSpec(cell, variant, config))
                        continue
                    specs.append(RunSpec(f"{cell}-{label}", variant, config, cell=cell,
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
        by = score["train_acc" if members[0].config.data.options.get("random_labels") else "val_acc"]
        scores = [(by[m.run_id], -i, m.run_id) for i, m in enumerate(members)
                  if status[m.run_id] != "diverged" and np.isfinite(by[m.run_id])]
        if not scores:
            notes.append(f"cell {cell}: every candidate diverged; nothing is measured for it")
            continue
        chosen[cell] = max(scores)[2]
    return chosen, notes


def unchosen_without_checkpoint(runs: pd.DataFrame, out_dir: Path) -> list[str]:
    """The candidates not chosen whose checkpoint is gone (deleted to save space, say). Nothing trains them again:
    only the chosen candidates are measured and reported, and their stored training results stay."""
    unchosen = runs[(runs["status"] == TRAINED) & (runs["chosen"] == 0)]
    return [run.run_id for run in unchosen.itertuples(index=False)
            if run.checkpoint and not (out_dir / run.checkpoint).is_file()]


def lost_checkpoints_note(run_ids: list[str]) -> str:
    """The line the log, summary.md and `widthlab status` give for `unchosen_without_checkpoint`."""
    shown = ", ".join(run_ids[:5]) + (" ..." if len(run_ids) > 5 else "")
    return (f"{len(run_ids)} candidate(s) not chosen have no checkpoint in checkpoints/ and are not rebuilt (only the "
            f"chosen ones are measured; grid.select.measure=all would train them again): {shown}")


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
        key = spec.config.model.model_dump_json()
        if key not in smallest or spec.width < smallest[key].width:
            smallest[key] = spec
    for spec in specs:
        cfg = spec.config
        splits = load_splits(cfg, cache)
        key = json.dumps([cfg.model.model_dump(mode="json"), spec.width], sort_keys=True)
        if key in built:
            continue
        built.add(key)
        name = cfg.model.name
        options = dict(num_classes=splits.num_classes, seed=spec.replicate)
        try:
            model = build_model(cfg.model, spec.width, device="meta", **options)
        except WidthlabError:
            if ":" not in name:
                raise
            if smallest[cfg.model.model_dump_json()] is spec:
                build_model(cfg.model, spec.width, **options)  # a real error of the user's code surfaces here
            continue
        check_takes_inputs(model, splits, f"{name} at width {spec.width:g}")
        check_memory(weight_bytes(model) * WEIGHT_COPIES, cfg.train.device, f"{name} at width {spec.width:g} has "
                     f"{parameter_count(model):,} parameters: training", "use smaller grid.widths")


@dataclass(frozen=True, eq=False)
class StudyOutcome:
    """What `run_study` did: the study folder, the results of this config's grid, and the report it wrote.

    It stands for its folder where a path is expected (``os.fspath(outcome)``, ``str(outcome)``, ``outcome /
    "summary.md"``), as `run_study`'s earlier return value, a `Path`, did; for anything else use ``outcome.path``.
    Two outcomes are equal only when they are the same object (their DataFrames have no one truth value).

    Attributes:
        path: the study directory.
        results: the stored runs, metrics, snapshots and history of this grid (None on a non-zero torchrun rank,
            which writes nothing).
        report: what `write_report` returned (figures, summary, verdict, caveats, growth, html), or None with
            ``report=False``.
        notes: what the study said about itself (stored runs left out of this grid, selection cells not chosen).
    """

    path: Path
    results: Results | None = None
    report: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()

    @property
    def runs(self) -> pd.DataFrame | None:
        return None if self.results is None else self.results.runs

    @property
    def verdict(self) -> pd.DataFrame | None:
        return None if self.report is None else self.report["verdict"]

    @property
    def failed(self) -> list[str]:
        """Run ids that failed (a rerun retries them)."""
        runs = self.runs
        return [] if runs is None else runs.loc[runs["status"] == "failed", "run_id"].tolist()

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __truediv__(self, other: str | os.PathLike) -> Path:
        return self.path / other


def run_study(config: str | os.PathLike | dict | StudyConfig, out_dir: str | os.PathLike, *,
              executor: str = "local", workers: int = 2, address: str | None = None,
              gpus_per_run: float | None = None, progress: bool | None = None, report: bool = True,
              checkpoint_every: float = 60.0,
              formats: str | list[str] | tuple[str, ...] = ("png", "pdf")) -> StudyOutcome:
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
        gpus_per_run: GPUs a Ray task declares (default: 1 when training on ``cuda``, or on ``auto`` in a Ray
            cluster with GPUs; else 0).
        progress: show progress bars (None: only on a terminal).
        report: write figures and the summary when the runs are finished.
        checkpoint_every: seconds between a run's checkpoints (default 60: a crash redoes at most a minute and
            an epoch of training; 0 writes one after every epoch).
        formats: figure file formats, "png,pdf" or a sequence of ``png``/``pdf`` (default ("png", "pdf")).

    Returns the `StudyOutcome` (its runs, verdict and paths).

    Example: ``run_study("mlp-10d", "widthlab-runs/mlp-10d", executor="processes", workers=2)`` runs the preset in two
    worker processes. Run again, a finished study trains nothing (here the stored config of a tiny one, no report):
        >>> outcome = run_study("widthlab-runs/mlp-10d/config.yaml", "widthlab-runs/mlp-10d", report=False)
        >>> outcome.runs["status"].tolist(), outcome.failed
        (['done', 'done', 'done', 'done'], [])
    """
    cfg = load_config(config)
    if report:
        from widthlab.report.figures import figure_formats

        formats = figure_formats(formats)  # a bad value fails now, not after the training
    check_executor(executor)
    check_positive_int("workers", workers)
    check_seconds("checkpoint_every", checkpoint_every)
    out_dir = Path(out_dir)
    specs = plan_runs(cfg)
    distributed = _distributed(cfg, specs, executor)
    if distributed and dist.get_rank() != 0:
        _follow(specs, out_dir)
        return StudyOutcome(out_dir)
    # The preflight's data set is reused by the local executor's first runs.
    options = dict(workers=workers, address=address, gpus_per_run=gpus_per_run, progress=progress,
                   checkpoint_every=checkpoint_every, data_cache={})
    check_study_folder(out_dir)
    if report:
        from widthlab.report import check_report_folder

        check_report_folder(out_dir)  # now, not after the training
    with study_lock(out_dir), _sharing_todo(distributed) as share, _study_log(out_dir):
        for caveat in cfg.caveats:
            log.warning("caveat: %s", caveat)
        _register(cfg, specs, out_dir, options["data_cache"])
        with Store(out_dir) as store:
            notes = _compute_all(cfg, specs, store, out_dir, share, executor, options)
            _cka_pass(specs, store, out_dir)
            results = store.results()
        export_csv(results, out_dir)
        results, others = select_runs(results, [s.run_id for s in specs])
        notes = (*([left_out_note(others)] if others else []), *notes)
        for note in notes:
            log.warning(note)
        if report:
            check_measured(results, out_dir)
        written = _write_report(cfg, results, out_dir, notes, formats) if report else None
    return StudyOutcome(out_dir, results, written, notes)


def _distributed(cfg: StudyConfig, specs: list[RunSpec], executor: str) -> bool:
    """Whether this is a torchrun job (joining its process group), refusing what it cannot run."""
    distributed = init_from_env(cuda=any(s.config.train.device != "cpu" for s in specs))
    if distributed and cfg.grid.selecting:
        raise WidthlabError("grid.select under torchrun is not supported: every process would have to measure the "
                            "chosen candidates together; run the selection without torchrun, or without grid.select")
    if distributed and executor != "local":
        raise WidthlabError(f"under torchrun every process trains the same run together: use the local executor, "
                            f"not {executor!r}")
    return distributed


class _OneLineFormatter(logging.Formatter):
    """One log record, one line: control characters in a message (a file name from a data folder, say) are
    escaped, so nothing a study reads can forge a line of the log."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        return line if line.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)


@contextlib.contextmanager
def _study_log(out_dir: Path):
    """widthlab's log written to ``out_dir/widthlab.log`` for the block."""
    # Opened without following a link (a handed-over folder's widthlab.log -> ~/.bashrc must not grow).
    stream = os.fdopen(files.open_own(out_dir / "widthlab.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND), "a",
                       encoding="utf-8")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_OneLineFormatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()
        stream.close()


def _register(cfg: StudyConfig, specs: list[RunSpec], out_dir: Path, data_cache: dict) -> None:
    """Check the unfinished runs (`preflight`), then register every run in the store (refused when the stored
    study is a different one) and write config.yaml; stale temporary files of a dead process are removed."""
    finished = set()
    if (out_dir / STORE_NAME).is_file():
        with Store(out_dir, readonly=True) as peek:
            finished = {run_id for run_id, status in peek.statuses().items() if status in FINAL_STATUSES}
    preflight([s for s in specs if s.run_id not in finished], data_cache)
    with Store(out_dir) as store:
        store.add_runs([{"run_id": s.run_id, "variant": s.variant, "width": s.width, "replicate": s.replicate,
                         "config": s.config.stored(), "cell": s.cell, "candidate": s.candidate,
                         "checkpoint": f"{CHECKPOINTS}/{files.file_name(s.run_id)}.pt"} for s in specs],
                       normalize=run_identity)
    # Only a config the store accepted replaces config.yaml: a refused rerun leaves the old one.
    files.write_text(out_dir / "config.yaml", _dump_yaml(cfg))
    checkpoints = out_dir / CHECKPOINTS
    checkpoints.mkdir(exist_ok=True)
    for stale in (*files.remove_stale_temps(checkpoints), *files.remove_stale_temps(out_dir),
                  *files.remove_stale_temps(out_dir / "figures")):
        log.info("removed %s, left by a process that died while writing it", stale)


def _compute_all(cfg: StudyConfig, specs: list[RunSpec], store: Store, out_dir: Path, share, executor: str,
                 options: dict) -> list[str]:
    """Compute every run still to do, then, with grid.select, choose each cell's candidate and measure the chosen
    ones not measured yet; returns the selection's notes."""

    def compute(batch: list[RunSpec], total: int, desc: str) -> None:
        results = execute(executor, batch, out_dir / CHECKPOINTS, **options,
                          started=lambda spec: store.mark(spec.run_id, "running"),
                          stopped=lambda spec: store.unstart([spec.run_id]))
        try:
            with contextlib.closing(results):  # a stopped study stops its workers before its runs are unmarked
                _drive(store, batch, results, total, desc, options["progress"])
        finally:  # SIGTERM, Ctrl-C, a user error: no worker is on the runs left, which a rerun resumes
            store.unstart([s.run_id for s in batch])

    # The study lock is held: a run still "running" was left by a process that died without unmarking it.
    store.unstart()
    statuses = store.statuses()
    # A candidate trained earlier but now to be measured (`measure: all` after `chosen`) is measured.
    todo = [s for s in specs if statuses.get(s.run_id) not in (*FINAL_STATUSES, TRAINED)
            or (s.measure and statuses.get(s.run_id) == TRAINED)]
    share([s.run_id for s in todo])
    log.info("study %s: %d runs, %d to do, executor %s", cfg.name, len(specs), len(todo), executor)
    compute(todo, len(specs), cfg.name)
    if not cfg.grid.selecting:
        return []
    # Each cell keeps its best-validation candidate; a chosen one not measured yet is measured now (its finished
    # checkpoint resumes without training).
    chosen, notes = choose(store.runs(), specs)
    store.choose(chosen, cells={s.cell for s in specs})
    lost = unchosen_without_checkpoint(store.runs(), out_dir)
    if lost:
        notes.append(lost_checkpoints_note(lost))
    statuses = store.statuses()
    by_id = {s.run_id: s for s in specs}
    pending = [dataclasses.replace(by_id[run_id], measure=True) for run_id in chosen.values()
               if statuses[run_id] == TRAINED]
    log.info("selection: %d of %d cells chosen, %d chosen candidates to measure", len(chosen),
             len({s.cell for s in specs}), len(pending))
    if pending:
        compute(pending, len(chosen), f"{cfg.name}: measure chosen")
    return notes


def _cka_pass(specs: list[RunSpec], store: Store, out_dir: Path) -> None:
    """With ``measure.cka`` on (for any variant), the CKA pairs of the done runs not stored yet
    (`widthlab.study.cka`); the study lock is held. A study's own config may import its own code."""
    wanted: dict[str, Any] = {}
    for spec in specs:
        wanted.setdefault(spec.variant, spec.config.measure.cka)
    if not any(spec.enabled for spec in wanted.values()):
        return
    from widthlab.study.cka import study_cka

    outcome = study_cka(store, out_dir, wanted, import_code=True, run_ids=[s.run_id for s in specs])
    log.info("cka: %d pair(s) computed, %d already stored%s", len(outcome.computed), len(outcome.resumed),
             f", {len(outcome.missing)} run(s) without a checkpoint" if outcome.missing else "")


def _write_report(cfg: StudyConfig, results: Results, out_dir: Path, notes, formats) -> dict[str, Any]:
    from widthlab.report import write_report

    return write_report(results.runs, results.metrics, out_dir, title=cfg.name, config=cfg.model_dump(mode="json"),
                        seed=cfg.seed, snapshots=results.snapshots, history=results.history,
                        params=parameter_counts(results.runs, import_code=True), notes=list(notes), formats=formats,
                        compression=results.compression, cka=results.cka)


@contextlib.contextmanager
def _sharing_todo(distributed: bool):
    """On rank 0 of a torchrun job, hand the list of runs to do to the other ranks (or None if the study fails
    before it gets there, so they stop instead of waiting). They wait in the patient group: rank 0 first checks
    every data set and model (`preflight`), which may take longer than the training group's timeout."""
    shared = []

    def share(run_ids: list[str]) -> None:
        if distributed:
            broadcast_from_first(run_ids)
        shared.append(run_ids)

    try:
        yield share
    finally:
        if distributed and not shared:
            broadcast_from_first(None)


def _follow(specs: list[RunSpec], out_dir: Path) -> None:
    """A non-zero rank of a torchrun job: train the runs rank 0 names, in its order, and measure its share of
    each (handed to rank 0, which alone writes the store, checkpoints and report)."""
    run_ids = broadcast_from_first(None)
    if run_ids is None:
        raise WidthlabError("rank 0 stopped before starting the runs; see its error")
    by_id = {s.run_id: s for s in specs}
    cache: dict = {}
    for run_id in run_ids:
        checkpoint = out_dir / CHECKPOINTS / f"{files.file_name(run_id)}.pt"
        execute_run(by_id[run_id], data_cache=cache, checkpoint=checkpoint)


def _drive(store: Store, todo: list[RunSpec], results, total: int, name: str, progress: bool | None) -> None:
    """Store each run's result as it arrives; a user error stops the study, a broken run does not."""
    bar = tqdm(total=total, initial=total - len(todo), desc=name, unit="run", position=0, dynamic_ncols=True,
               disable=None if progress is None else not progress)
    try:
        for spec, result in results:
            if result.kind == "user_error":  # e.g. a corrupt image met mid-run: the run failed, the study stops
                store.mark(spec.run_id, "failed", error=result.error.splitlines()[0])
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
