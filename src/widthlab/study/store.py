"""The study store: one SQLite file per study directory, plus the lock that keeps a second writer out.

Tables: ``runs`` (one row per grid cell: resolved config, status, timings, accuracies), ``metrics`` (scalar
measurements: redundancy numbers, robustness AUCs), ``curves`` (points of perturbation curves) — both with an
``epoch`` column that is NULL for the trained model and the epoch for along-training snapshots — and
``history`` (per-epoch training records) and ``compression`` (`widthlab.compress.compress_study`: per run, unit
layer and setting, the units kept at a largest accuracy drop) and ``cka`` (`widthlab.study.cka`: per pair of runs
and pair of layers, their CKA). A run becomes ``done`` only in the transaction that
writes its measurements, so a crash leaves it pending and a rerun redoes it; nothing is half-written.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import sqlite3
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from widthlab import files
from widthlab.errors import WidthlabError, first_line
from widthlab.vocab import CURVE_METRICS, FRIVOLOUS_METRICS, STORED_METRIC_COLUMNS

STORE_NAME = "widthlab.sqlite"
LOCK_NAME = ".widthlab.lock"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, variant TEXT NOT NULL, width REAL NOT NULL, replicate INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending', config TEXT NOT NULL,
    seconds REAL, train_acc REAL, val_acc REAL, test_acc REAL, epochs INTEGER, best_epoch INTEGER,
    diverged_epoch INTEGER, error TEXT, checkpoint TEXT, started_at TEXT, finished_at TEXT,
    test_examples INTEGER, num_classes INTEGER, cell TEXT, candidate TEXT, chosen INTEGER);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(run_id), layer TEXT NOT NULL, metric TEXT NOT NULL,
    perturbation TEXT NOT NULL, level REAL, sampling INTEGER NOT NULL, value REAL, epoch REAL);
CREATE TABLE IF NOT EXISTS curves (
    run_id TEXT NOT NULL REFERENCES runs(run_id), layer TEXT NOT NULL, metric TEXT NOT NULL,
    perturbation TEXT NOT NULL, level REAL NOT NULL, sampling INTEGER NOT NULL, value REAL, epoch REAL);
CREATE TABLE IF NOT EXISTS history (
    run_id TEXT NOT NULL REFERENCES runs(run_id), epoch INTEGER NOT NULL, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS compression (
    run_id TEXT NOT NULL REFERENCES runs(run_id), layer TEXT NOT NULL, method TEXT NOT NULL,
    importance TEXT NOT NULL, max_drop REAL NOT NULL, calibration_examples INTEGER NOT NULL, split TEXT NOT NULL,
    method_used TEXT, units_before INTEGER NOT NULL, units_kept INTEGER NOT NULL, params_before INTEGER,
    params_after INTEGER, accuracy_before REAL, accuracy_after REAL, agreement REAL);
CREATE TABLE IF NOT EXISTS cka (
    run_a TEXT NOT NULL REFERENCES runs(run_id), run_b TEXT NOT NULL REFERENCES runs(run_id), kind TEXT NOT NULL,
    layer_a TEXT NOT NULL, layer_b TEXT NOT NULL, cka REAL, examples INTEGER NOT NULL, batches INTEGER NOT NULL,
    estimator TEXT NOT NULL, reduction_a TEXT, reduction_b TEXT, split TEXT NOT NULL, max_examples INTEGER NOT NULL,
    batch_size INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS metrics_run ON metrics(run_id);
CREATE INDEX IF NOT EXISTS curves_run ON curves(run_id);
"""
TABLES = ("runs", "metrics", "curves", "history")  # every store has these; `compression` and `cka` came later
COMPRESSION_COLUMNS = ("run_id", "layer", "method", "importance", "max_drop", "calibration_examples", "split",
                       "method_used", "units_before", "units_kept", "params_before", "params_after",
                       "accuracy_before", "accuracy_after", "agreement")

# One row per pair of runs (or a run with itself, kind "layers") and pair of layers (`widthlab.study.cka`).
CKA_STORED_COLUMNS = ("run_a", "run_b", "kind", "layer_a", "layer_b", "cka", "examples", "batches", "estimator",
                      "reduction_a", "reduction_b", "split", "max_examples", "batch_size")
CKA_SETTING = ("split", "max_examples", "batch_size")  # a pair stored with another setting is computed again
CKA_COLUMNS = ("variant", "kind", "run_a", "run_b", "width_a", "width_b", "replicate_a", "replicate_b",
               *CKA_STORED_COLUMNS[3:])


# (table, column, type) added after the first stores were written: snapshot epochs; the test set's size and
# class count (the chance-level check); grid.select's cell, candidate name and choice (1 chosen, 0 not, NULL:
# no selection or not chosen yet).
ADDED_COLUMNS = (("metrics", "epoch", "REAL"), ("curves", "epoch", "REAL"), ("runs", "test_examples", "INTEGER"),
                 ("runs", "num_classes", "INTEGER"), ("runs", "cell", "TEXT"), ("runs", "candidate", "TEXT"),
                 ("runs", "chosen", "INTEGER"))


@dataclass(frozen=True)
class Results:
    """A study's results as DataFrames: `runs` (one row per run), `metrics` (tidy, one row per number of the
    trained model: run_id, variant, width, replicate, layer, metric, perturbation, level, sampling, value),
    `history` (one row per run and epoch) and `snapshots` (the `metrics` columns plus ``epoch``, for weights
    kept along training by `TrainConfig.snapshot_epochs`; empty otherwise) and `compression` (one row per run,
    unit layer and compression setting written by `compress_study`, with the run's variant, width and replicate;
    empty when the study was never compressed)."""

    runs: pd.DataFrame
    metrics: pd.DataFrame
    history: pd.DataFrame
    snapshots: pd.DataFrame
    compression: pd.DataFrame = field(default_factory=lambda: empty_compression())
    cka: pd.DataFrame = field(default_factory=lambda: empty_cka())


def empty_compression() -> pd.DataFrame:
    """The `Results.compression` of a study never compressed: no rows, the columns a compressed one has."""
    return pd.DataFrame(columns=["run_id", "variant", "width", "replicate", *COMPRESSION_COLUMNS[1:]])


def empty_cka() -> pd.DataFrame:
    """The `Results.cka` of a study without CKA rows: no rows, the columns one with them has."""
    return pd.DataFrame(columns=list(CKA_COLUMNS))


SQLITE_HEADER = b"SQLite format 3\x00"
REBUILD = ("move it away (e.g. rename it to widthlab.sqlite.bad) and rerun `widthlab run` with the same config "
           "and --out: finished runs are rebuilt from their checkpoints/ without training again")


def _not_a_store(path: Path) -> WidthlabError:
    return WidthlabError(f"{str(path)!r} is a directory, not a widthlab store; {REBUILD}")


class Store:
    """The SQLite file of one study directory (WAL mode).

    `readonly` opens an existing store without writing anything to it, for `load_results` and the read-only
    commands: ``mode=ro`` where SQLite can create its ``-shm`` beside it; in a folder that is not writable (an
    archived study on a read-only mount) ``immutable=1``, or, when a ``-wal`` holds runs not yet copied into the
    main file (a study killed mid-run), ``mode=ro`` on a private copy of the file and its ``-wal``. A store that
    is a directory, empty, not SQLite, short of a table, or fails SQLite's integrity check is a WidthlabError
    saying so, raised before anything is written.
    """

    def __init__(self, directory: str | os.PathLike, *, create: bool = True, readonly: bool = False):
        self.path = Path(directory) / STORE_NAME
        for path in (self.path, *(self.path.with_name(STORE_NAME + end) for end in ("-wal", "-shm", "-journal"))):
            if path.is_symlink():  # SQLite would read and write through it, outside the study folder
                raise files.link_error(path)
        self._copy: Path | None = None  # the private copy a read-only store with a -wal is read from
        if self.path.exists() and not self.path.is_file():
            raise _not_a_store(self.path)
        if (readonly or not create) and not self.path.is_file():
            raise WidthlabError(f"{str(directory)!r} holds no widthlab study (no {STORE_NAME}); "
                                "run `widthlab run` with --out pointing there first")
        if self.path.is_file():
            self._check_file()
        try:
            self._open(readonly)
        except BaseException:
            if hasattr(self, "_db"):
                self._db.close()
            self._remove_copy()
            raise

    def _open(self, readonly: bool) -> None:
        try:
            if readonly:
                self._db = self._connect_readonly()
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, isolation_level=None)
            self._check_integrity()
            if not readonly:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
                # Columns added by later versions (stores written before them lack them).
                for table, column, kind in ADDED_COLUMNS:
                    columns = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
                    if column not in columns:
                        self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        except sqlite3.OperationalError as exc:
            raise store_error(self.path, exc) from None
        except sqlite3.DatabaseError as exc:
            raise WidthlabError(f"{str(self.path)!r} is damaged ({exc}); {REBUILD}") from None

    def _check_file(self) -> None:
        """A clear error for a store file that is empty or not SQLite (checked before SQLite would write it)."""
        with open(self.path, "rb") as handle:
            head = handle.read(len(SQLITE_HEADER))
        if not head:
            raise WidthlabError(f"{str(self.path)!r} is empty (0 bytes), not a widthlab store; {REBUILD}")
        if head != SQLITE_HEADER:
            raise WidthlabError(f"{str(self.path)!r} is not an SQLite database (it starts with {head[:8]!r}); "
                                f"{REBUILD}")

    def _connect_readonly(self) -> sqlite3.Connection:
        if os.access(self.path.parent, os.W_OK):
            return sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None)
        wal = self.path.with_name(STORE_NAME + "-wal")
        if not (wal.is_file() and wal.stat().st_size):
            return sqlite3.connect(self.path.resolve().as_uri() + "?immutable=1", uri=True, isolation_level=None)
        # `immutable` would ignore the -wal, and with it every run committed since the last checkpoint; `mode=ro`
        # needs a -shm it cannot create here. A copy of both in a folder of our own reads them all.
        self._copy = Path(tempfile.mkdtemp(prefix="widthlab-ro-"))
        try:
            shutil.copyfile(self.path, self._copy / STORE_NAME)
            shutil.copyfile(wal, self._copy / wal.name)
        except OSError as exc:
            self._remove_copy()
            raise WidthlabError(f"{str(self.path)!r} is in a read-only folder and its {wal.name} holds runs not yet in "
                                f"the main file; copying both to {tempfile.gettempdir()!r} to read them failed "
                                f"({exc.strerror or exc}); copy the study folder somewhere writable and open "
                                "the copy") from None
        return sqlite3.connect((self._copy / STORE_NAME).as_uri() + "?mode=ro", uri=True, isolation_level=None)

    def _remove_copy(self) -> None:
        if self._copy is not None:
            shutil.rmtree(self._copy, ignore_errors=True)
            self._copy = None

    def _check_integrity(self) -> None:
        if self.path.is_file() and self.path.stat().st_size:
            problems = [row[0] for row in self._db.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                raise WidthlabError(f"{str(self.path)!r} is damaged ({problems[0]}); {REBUILD}")
            tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and "runs" not in tables:
                raise WidthlabError(f"{str(self.path)!r} is an SQLite database but not a widthlab store (tables: "
                                    f"{', '.join(sorted(tables))})")
            missing = sorted(set(TABLES) - tables) if tables else []
            if missing:  # every version of the store had all four: one was dropped by hand
                raise WidthlabError(f"{str(self.path)!r} is damaged (its table(s) {', '.join(missing)} are missing); "
                                    f"{REBUILD}")

    def close(self) -> None:
        self._db.close()
        self._remove_copy()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self):
        """All or nothing; a full disk or a lost write permission is a WidthlabError with the store intact."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise store_error(self.path, exc) from None

    def add_runs(self, runs: list[dict], normalize=None) -> None:
        """Register grid cells (run_id, variant, width, replicate, config, optional checkpoint path relative to
        the study directory); existing runs are left alone, except that a changed config is an error (the grid
        must not drift silently). `normalize(config) -> config | None` fills a stored config with the current
        defaults before comparing, so a field added by an upgrade is not a change (None: no longer valid)."""

        def canonical(config) -> str | None:
            config = config if normalize is None else normalize(config)
            return None if config is None else json.dumps(config, sort_keys=True)

        with self.transaction() as db:
            for run in runs:
                config = json.dumps(run["config"], sort_keys=True)
                row = db.execute("SELECT config FROM runs WHERE run_id = ?", (run["run_id"],)).fetchone()
                if row is None:
                    db.execute("INSERT INTO runs (run_id, variant, width, replicate, config, checkpoint, cell, "
                               "candidate) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                               (run["run_id"], run["variant"], run["width"], run["replicate"], config,
                                run.get("checkpoint"), run.get("cell"), run.get("candidate")))
                elif row[0] != config and canonical(json.loads(row[0])) != canonical(run["config"]):
                    raise WidthlabError(
                        f"run {run['run_id']!r} is stored with a different configuration in {str(self.path)!r}; "
                        "use a new --out directory for a changed study")

    def statuses(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT run_id, status FROM runs").fetchall())

    def runs(self) -> pd.DataFrame:
        """The runs table alone (no metrics)."""
        return pd.read_sql_query("SELECT * FROM runs ORDER BY variant, width, replicate, run_id", self._db)

    def choose(self, chosen: dict[str, str], cells=()) -> None:
        """Mark each cell's chosen candidate (``{cell: run_id}``): chosen = 1 for it, 0 for the cell's others; the
        other `cells` (not chosen this time, e.g. a candidate failed) lose any earlier choice (chosen NULL)."""
        with self.transaction() as db:
            for cell, run_id in chosen.items():
                db.execute("UPDATE runs SET chosen = (run_id = ?) WHERE cell = ?", (run_id, cell))
            for cell in set(cells) - set(chosen):
                db.execute("UPDATE runs SET chosen = NULL WHERE cell = ?", (cell,))

    def mark(self, run_id: str, status: str, error: str | None = None) -> None:
        """Set a run's status (``running``, ``failed`` ...) outside the result transaction."""
        stamp = "started_at" if status == "running" else "finished_at"
        with self.transaction() as db:
            db.execute(f"UPDATE runs SET status = ?, error = ?, {stamp} = datetime('now') WHERE run_id = ?",
                       (status, error, run_id))

    def unstart(self, run_ids=None) -> None:
        """Runs still ``running`` (of `run_ids`, or all) back to ``pending``: no worker is on them any more (the
        study stopped, or their worker died and they wait to be retried)."""
        with self.transaction() as db:
            if run_ids is None:
                db.execute("UPDATE runs SET status = 'pending', started_at = NULL WHERE status = 'running'")
            else:
                db.executemany("UPDATE runs SET status = 'pending', started_at = NULL "
                               "WHERE run_id = ? AND status = 'running'", [(run_id,) for run_id in run_ids])

    def finish(self, run_id: str, outcome: dict, metrics: pd.DataFrame | None) -> None:
        """Write a run's results and its final status in one transaction (all or nothing)."""
        with self.transaction() as db:
            # Compression rows describe the weights measured before: a run measured again is compressed again.
            for table in ("metrics", "curves", "history", "compression"):
                db.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
            db.execute("DELETE FROM cka WHERE run_a = ? OR run_b = ?", (run_id, run_id))
            db.execute(
                "UPDATE runs SET status = ?, seconds = ?, train_acc = ?, val_acc = ?, test_acc = ?, epochs = ?, "
                "best_epoch = ?, diverged_epoch = ?, test_examples = ?, num_classes = ?, error = NULL, "
                "finished_at = datetime('now') WHERE run_id = ?",
                (outcome["status"], outcome["seconds"], _num(outcome.get("train_acc")), _num(outcome.get("val_acc")),
                 _num(outcome.get("test_acc")), outcome.get("epochs"), outcome.get("best_epoch"),
                 outcome.get("diverged_epoch"), outcome.get("test_examples"), outcome.get("num_classes"), run_id))
            db.executemany("INSERT INTO history (run_id, epoch, record) VALUES (?, ?, ?)",
                           [(run_id, rec["epoch"], json.dumps(rec)) for rec in outcome.get("history", [])])
            if metrics is not None and len(metrics):
                rows = metrics if "epoch" in metrics else metrics.assign(epoch=math.nan)
                rows = rows[list(STORED_METRIC_COLUMNS)]
                is_curve = rows["metric"].isin(CURVE_METRICS)
                for table, part in (("curves", rows[is_curve]), ("metrics", rows[~is_curve])):
                    db.executemany(
                        f"INSERT INTO {table} (run_id, layer, metric, perturbation, level, sampling, value, epoch) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [(run_id, r.layer, r.metric, r.perturbation, _num(r.level), int(r.sampling), _num(r.value),
                          _num(r.epoch)) for r in part.itertuples(index=False)])

    def results(self) -> Results:
        """Every table, read in one transaction: a consistent snapshot while a run may be writing."""
        self._db.execute("BEGIN")
        try:
            return self._results()
        except (sqlite3.DatabaseError, pd.errors.DatabaseError) as exc:
            raise WidthlabError(f"{str(self.path)!r} cannot be read ({first_line(exc)}); {REBUILD}") from None
        finally:
            if self._db.in_transaction:  # pandas rolls back the transaction of a query that failed
                self._db.execute("COMMIT")

    def _results(self) -> Results:
        runs = self.runs()
        # In grid order, whatever order the runs finished in (executors and stacked groups differ in that).
        keys = "r.run_id, r.variant, r.width, r.replicate"
        parts = [pd.read_sql_query(f"SELECT {keys}, t.layer, t.metric, t.perturbation, t.level, t.sampling, t.value, "
                                   f"t.epoch FROM {table} t JOIN runs r USING (run_id) "
                                   "ORDER BY r.variant, r.width, r.replicate, r.run_id, t.rowid", self._db)
                 for table in ("metrics", "curves")]
        metrics = pd.concat(parts, ignore_index=True)
        metrics[["level", "epoch"]] = metrics[["level", "epoch"]].astype(float)
        metrics = _with_frivolous(metrics)
        final = metrics["epoch"].isna()
        snapshots = metrics[~final].reset_index(drop=True)
        metrics = metrics[final].drop(columns="epoch").reset_index(drop=True)
        history = pd.read_sql_query("SELECT run_id, record FROM history ORDER BY run_id, epoch", self._db)
        history = pd.DataFrame([{"run_id": rid, **json.loads(rec)} for rid, rec in history.itertuples(index=False)])
        return Results(runs=runs, metrics=metrics, history=history, snapshots=snapshots,
                       compression=self._compression(keys), cka=self._cka())

    def _compression(self, keys: str) -> pd.DataFrame:
        """The compression table joined with the runs' keys; empty for a store written before it existed (opened
        read-only, nothing has added it)."""
        if self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'compression'").fetchone() \
                is None:
            return empty_compression()
        columns = ", ".join(f"c.{c}" for c in COMPRESSION_COLUMNS[1:])
        frame = pd.read_sql_query(f"SELECT {keys}, {columns} FROM compression c JOIN runs r USING (run_id) "
                                  "ORDER BY r.variant, r.width, r.replicate, r.run_id, c.rowid", self._db)
        return frame.astype({"width": float, "max_drop": float, "accuracy_before": float, "accuracy_after": float,
                             "agreement": float})

    def _has_table(self, name: str) -> bool:
        return self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() \
            is not None

    def _cka(self) -> pd.DataFrame:
        """The cka table with each run's variant, width and replicate, in grid order; empty for a store written
        before it existed (opened read-only, nothing has added it)."""
        if not self._has_table("cka"):
            return empty_cka()
        columns = ", ".join(f"c.{c}" for c in CKA_STORED_COLUMNS[3:])
        frame = pd.read_sql_query(
            f"SELECT a.variant, c.kind, c.run_a, c.run_b, a.width AS width_a, b.width AS width_b, "
            f"a.replicate AS replicate_a, b.replicate AS replicate_b, {columns} FROM cka c "
            "JOIN runs a ON a.run_id = c.run_a JOIN runs b ON b.run_id = c.run_b "
            "ORDER BY a.variant, c.kind, a.width, b.width, a.replicate, b.replicate, c.rowid", self._db)
        return frame.astype({"width_a": float, "width_b": float, "cka": float})

    def cka_settings(self) -> dict[tuple[str, str, str], tuple]:
        """``{(run_a, run_b, kind): (split, max_examples, batch_size)}`` of every pair stored (what `cka_study`
        skips when it resumes with the same setting)."""
        if not self._has_table("cka"):
            return {}
        rows = self._db.execute(f"SELECT DISTINCT run_a, run_b, kind, {', '.join(CKA_SETTING)} FROM cka").fetchall()
        return {tuple(row[:3]): tuple(row[3:]) for row in rows}

    def add_cka(self, run_a: str, run_b: str, kind: str, rows: list[dict]) -> None:
        """Store one pair's CKA rows in one transaction, replacing what the pair held before (another setting)."""
        with self.transaction() as db:
            db.execute("DELETE FROM cka WHERE run_a = ? AND run_b = ? AND kind = ?", (run_a, run_b, kind))
            columns = CKA_STORED_COLUMNS
            fixed = {"run_a": run_a, "run_b": run_b, "kind": kind}
            db.executemany(f"INSERT INTO cka ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                           [tuple(_cell(fixed[c] if c in fixed else row.get(c)) for c in columns) for row in rows])

    def compressed_settings(self) -> set[tuple]:
        """``(run_id, method, importance, max_drop, calibration_examples, split)`` of every run compressed so far
        (what `compress_study` skips when it resumes)."""
        return set(self._db.execute("SELECT DISTINCT run_id, method, importance, max_drop, calibration_examples, "
                                    "split FROM compression").fetchall())

    def add_compression(self, run_id: str, rows: list[dict]) -> None:
        """Store one run's compression rows (all its methods) in one transaction; rows of the same run and setting
        stored before are replaced, never duplicated."""
        columns = COMPRESSION_COLUMNS
        with self.transaction() as db:
            for key in {(r["method"], r["importance"], float(r["max_drop"]), int(r["calibration_examples"]),
                         r["split"]) for r in rows}:
                db.execute("DELETE FROM compression WHERE run_id = ? AND method = ? AND importance = ? AND "
                           "max_drop = ? AND calibration_examples = ? AND split = ?", (run_id, *key))
            db.executemany(f"INSERT INTO compression ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                           [tuple(_cell(row.get(c)) if c != "run_id" else run_id for c in columns) for row in rows])


def _with_frivolous(metrics: pd.DataFrame) -> pd.DataFrame:
    """`metrics` plus the frivolous-unit rows of runs stored before widthlab measured them (derived from their
    stored curves and redundancy rows, as `analyze` derives them), so an old study reports them too."""
    from widthlab.measure.frivolous import frivolous_rows

    have = set(metrics.loc[metrics["metric"].isin(FRIVOLOUS_METRICS), "run_id"])
    old = metrics[~metrics["run_id"].isin(have)]
    if old.empty:
        return metrics
    derived = [frivolous_rows(group) for _, group in old.groupby(["run_id", "epoch"], dropna=False, sort=False)]
    derived = [frame for frame in derived if len(frame)]
    return pd.concat([metrics, *derived], ignore_index=True) if derived else metrics


def store_error(path: Path, exc: sqlite3.OperationalError) -> WidthlabError:
    """One line for an SQLite failure to write: which file, why, and the free space where it lies."""
    try:
        free = shutil.disk_usage(path.parent).free
        space = f"{free / 2 ** 20:.0f} MiB free there"
    except OSError:
        space = "free space unknown"
    hint = "free some space" if "full" in str(exc) else "check the folder's permissions"
    return WidthlabError(f"cannot write the study store {str(path)!r} ({exc}; {space}); nothing was half-written: "
                         f"{hint} and rerun")


def select_runs(results: Results, run_ids) -> tuple[Results, list[str]]:
    """``(the results of the runs in `run_ids` only, the stored run ids left out)``: a report and a verdict are
    drawn from the runs of the current grid; runs of an earlier grid stay in the store. When `run_ids` names none
    of the stored runs (a config.yaml that does not describe this store), every run is kept."""
    keep = set(run_ids)
    stored = set(results.runs["run_id"])
    others = sorted(stored - keep)
    if not others or not stored & keep:  # a config that names none of the stored runs does not describe them
        return results, []

    def only(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[frame["run_id"].isin(keep)].reset_index(drop=True) if "run_id" in frame else frame

    cka = results.cka
    cka = cka[cka["run_a"].isin(keep) & cka["run_b"].isin(keep)].reset_index(drop=True)
    return Results(runs=only(results.runs), metrics=only(results.metrics), history=only(results.history),
                   snapshots=only(results.snapshots), compression=only(results.compression), cka=cka), others


def left_out_note(others: list[str]) -> str:
    """The line a log and summary.md give for stored runs that are not in the current grid."""
    shown = ", ".join(others[:10]) + (" ..." if len(others) > 10 else "")
    return (f"{len(others)} stored run(s) are not in this config's grid (grid.* changed) and are left out of this "
            f"report; they stay in the store: {shown}")


def check_measured(results: Results, directory: str | os.PathLike) -> None:
    """A WidthlabError when a run the store calls done has no measurement (every done run has some: its rows were
    deleted by hand), raised before a report draws anything: figures of nothing beside an older summary.md would
    be a report that contradicts itself."""
    done = results.runs.loc[results.runs["status"] == "done", "run_id"]
    stored = results.metrics[~results.metrics["metric"].isin(FRIVOLOUS_METRICS)]  # those may be derived (old runs)
    is_curve = stored["metric"].isin(CURVE_METRICS)
    # A measured run has rows in both tables: scalars (redundancy, AUCs) in metrics, perturbation curves in curves.
    measured = set(stored.loc[~is_curve, "run_id"]) & set(stored.loc[is_curve, "run_id"])
    bare = sorted(set(done) - measured)
    if bare:
        shown = ", ".join(bare[:5]) + (" ..." if len(bare) > 5 else "")
        raise WidthlabError(f"{len(bare)} of the {len(done)} done run(s) in {str(Path(directory) / STORE_NAME)!r} lack "
                            f"their measurements in its metrics or curves table ({shown}), so no report is drawn; "
                            f"{REBUILD}")


# What widthlab keeps in a study folder, by kind. A path holding the other kind (a directory named config.yaml, a
# file named checkpoints) is refused in one line before anything is read or written, not met as an OSError midway.
STUDY_FOLDERS = ("checkpoints",)
STUDY_FILES = (LOCK_NAME, "config.yaml", "widthlab.log", "runs.csv", "metrics.csv", "history.csv",
               "snapshots.csv")


def check_study_folder(directory: str | os.PathLike) -> None:
    """A WidthlabError naming the first of widthlab's paths in the study folder `directory` that holds the wrong
    kind of file (`widthlab.report.check_report_folder` checks the report's own)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise WidthlabError(f"{str(directory)!r} is a file, not a study folder; name a folder (--out)")
    if (directory / STORE_NAME).exists() and not (directory / STORE_NAME).is_file():
        raise _not_a_store(directory / STORE_NAME)
    for name in STUDY_FOLDERS:
        if (directory / name).exists() and not (directory / name).is_dir():
            raise WidthlabError(f"{str(directory / name)!r} is a file where widthlab keeps its {name} folder; move "
                                "it away and rerun")
    for name in STUDY_FILES:
        if (directory / name).is_dir():
            raise WidthlabError(f"{str(directory / name)!r} is a directory where widthlab keeps its {name} file; "
                                "move it away and rerun")


def _cell(value):
    """A value as SQLite stores it: NaN as NULL, NumPy scalars as Python numbers."""
    if isinstance(value, str) or value is None:
        return value
    if isinstance(value, (bool, int)) or hasattr(value, "dtype") and value.dtype.kind in "iub":
        return int(value)
    return _num(value)


def _num(value) -> float | None:
    """SQLite stores NaN as NULL; read back as NaN by pandas."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


@contextmanager
def study_lock(directory: str | os.PathLike, *, report: bool = False):
    """Hold an exclusive OS lock on a study directory; a second holder gets a clear error saying whether a run or
    a report holds it (`report`: the holder is ``widthlab report``, writing into the study's own folder).

    `fcntl.flock` locks die with their process, so a killed study never leaves a stale lock behind.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files.refuse_links(directory)  # every writer takes this lock first: nothing is written through a link
    handle = os.fdopen(files.open_own(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_APPEND), "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            if handle.read().strip() == "report":  # the holder says what it is (below)
                raise WidthlabError(f"another `widthlab report` is being written into {str(directory)!r} now; wait "
                                    "for it to finish" + (", or use --out to draw this one elsewhere" if report else
                                                          "")) from None
            if report:
                raise WidthlabError(f"a widthlab run is writing {str(directory)!r} now and writes its report when it "
                                    "finishes; use --out to draw one elsewhere now") from None
            raise WidthlabError(f"another widthlab process is writing to {str(directory)!r}; "
                                "wait for it to finish or use another --out directory") from None
        # Whoever is refused reads this to say who holds the folder.
        handle.truncate(0)
        handle.write("report\n" if report else "run\n")
        handle.flush()
        yield
    finally:
        handle.close()


def load_results(directory: str | os.PathLike) -> Results:
    """The runs and metrics of the study in `directory` as pandas DataFrames (for notebooks).

    Example:
        >>> res = load_results("widthlab-runs/mlp-10d")
        >>> res.runs["run_id"].tolist()
        ['default-w0.25-r0', 'default-w0.25-r1', 'default-w0.5-r0', 'default-w0.5-r1']
        >>> res.metrics.query("metric == 'auc'").groupby("perturbation").size().to_dict()
        {'mean': 4, 'zero': 4}
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise WidthlabError(f"study directory {str(directory)!r} does not exist")
    with Store(directory, readonly=True) as store:
        return store.results()


def export_csv(results: Results, directory: str | os.PathLike) -> list[Path]:
    """Write runs.csv, metrics.csv, history.csv and (when there are any) snapshots.csv into `directory`."""
    directory = Path(directory)
    paths = []
    for name in ("runs", "metrics", "history", "snapshots")[:4 if len(results.snapshots) else 3]:
        path = directory / f"{name}.csv"
        with files.atomic_path(path) as tmp:
            getattr(results, name).to_csv(tmp, index=False)
        paths.append(path)
    return paths
