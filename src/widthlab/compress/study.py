"""`compress_study`: the compressed width of every measured run of a study, stored beside its other results.

The paper's claim is about a width family: if wider networks only add redundant units, the width a network can
be compressed to without losing accuracy — its **compressed width** — should grow more slowly than its width.
`compress` answers that for one model; this module asks it of every done run of a study, for pruning and for
merging, so the two can be compared across widths with the study's replicates and bootstrap (the report's
"Compression across widths" section, `widthlab.report.compression`).

Each run's trained model is rebuilt from its checkpoint (``checkpoints/RUN_ID.pt``, the weights it was measured
with), calibrated on the study's training split (at most `max_examples` examples) and evaluated on the split the
study measures on. The rows go into the store's ``compression`` table, one transaction per run, under the study
lock, so an interrupted call loses at most the run in progress and a second call with the same settings
compresses only what is missing (resume). Other settings (another `max_drop`, importance, calibration size) are
kept beside the first, never overwrite them.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from widthlab import files
from widthlab.compress.core import METHODS, compress
from widthlab.compress.select import IMPORTANCES
from widthlab.errors import WidthlabError, check_positive_int

log = logging.getLogger("widthlab")

CHECKPOINTS = "checkpoints"  # as `widthlab.study.runner` writes them


@dataclass
class CompressedStudy:
    """What `compress_study` returns.

    Attributes:
        rows: the store's compression rows of this call's settings (every done run compressed so far, the ones
            compressed before included), as `load_results(dir).compression` holds them.
        compressed: (run_id, method) pairs compressed by this call.
        resumed: (run_id, method) pairs already stored with these settings, not compressed again.
        missing: runs that are done but whose checkpoint is gone (they cannot be rebuilt; nothing is stored).
    """

    rows: pd.DataFrame
    compressed: list[tuple[str, str]] = field(default_factory=list)
    resumed: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def check_settings(max_drop: object, methods: object, importance: object, max_examples: object) -> tuple[str, ...]:
    """The settings checked before anything is read (a typo costs nothing); returns the methods as a tuple."""
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not math.isfinite(max_drop) \
            or not 0 <= max_drop < 1:
        raise WidthlabError(f"max_drop must be a share of examples in [0, 1) (e.g. 0.01 for one point of accuracy), "
                            f"got {max_drop!r}")
    methods = (methods,) if isinstance(methods, str) else tuple(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise WidthlabError(f"unknown method {bad[0]!r}; valid methods: {', '.join(METHODS)}" if bad else
                            f"name at least one method of {', '.join(METHODS)}")
    if importance not in IMPORTANCES:
        raise WidthlabError(f"unknown importance {importance!r}; valid: {', '.join(IMPORTANCES)}")
    check_positive_int("max_examples", max_examples)
    return tuple(dict.fromkeys(methods))


def check_study_dir(directory: Path) -> None:
    """One WidthlabError for a folder that is not a study: missing, a file, without a store, or with links where
    widthlab reads and writes (as `widthlab run` and `widthlab report` refuse them)."""
    from widthlab.study.store import STORE_NAME, check_study_folder

    if not directory.exists():
        raise WidthlabError(f"study folder {str(directory)!r} does not exist")
    check_study_folder(directory)
    if not (directory / STORE_NAME).is_file():
        raise WidthlabError(f"{str(directory)!r} is not a study folder (no {STORE_NAME}); name the --out folder of "
                            "a `widthlab run`, or a checkpoint (.pt) to compress one model")
    files.refuse_links(directory)


def _run_inputs(config: dict, allow_code: bool, cache: dict):
    """``(calibration inputs, evaluation inputs, evaluation split)`` of a run's stored config: the training split
    and the split its study measures on, of the data set loaded with the study's seed (once per data set)."""
    from widthlab.data import load_data

    data = dict(config.get("data") or {})
    name = data.pop("name", None)
    if not isinstance(name, str):
        raise WidthlabError("a stored run config names no data set; the store was edited, or written by a widthlab "
                            "too old to compress")
    if ":" in name and not allow_code:
        raise WidthlabError(f"the study's data set {name!r} is a module:function named by stored data, which "
                            "widthlab does not import; allow it with --allow-code")
    split = str((config.get("measure") or {}).get("split", "test"))
    seed = int(config.get("study_seed", 0) or 0)
    root = data.pop("root", None)
    key = json.dumps([name, root, seed, data], sort_keys=True, default=str)
    if key not in cache:
        cache[key] = load_data(name, root=root, seed=seed, **data)
    splits = cache[key]
    return splits.split("train"), splits.split(split), split


def compress_study(study_dir: str | os.PathLike, *, max_drop: float = 0.01,
                   methods: Sequence[str] | str = ("prune", "merge"), importance: str = "ablation",
                   max_examples: int = 2048, allow_code: bool = False,
                   on_run: Callable[[str, str, pd.DataFrame | None], None] | None = None) -> CompressedStudy:
    """Find the compressed width at `max_drop` of every done run of the study in `study_dir`, per unit layer
    and method, and store it in the study's store (``load_results(dir).compression``).

    Args:
        study_dir: a study folder written by `widthlab run` (holding widthlab.sqlite and checkpoints/).
        max_drop: the largest fall in accuracy on the measurement split allowed, a share of examples in [0, 1)
            (default 0.01: one point); per layer the fewest units that keep within it (`compress`'s search).
        methods: ``"prune"`` and/or ``"merge"`` (default both).
        importance: the importance that orders pruning and breaks merging's ties (default ``"ablation"``).
        max_examples: calibration examples, the first of the training split (default 2048).
        allow_code: import a ``module:function`` model or data set that the stored config names (default False:
            a store is data; such a study is refused).
        on_run: called as ``on_run(run_id, method, table)`` after each run and method (`table` None: resumed),
            for progress.

    Returns a `CompressedStudy`. A second call with the same settings compresses nothing again.

    Example: each of the study's 4 runs by both methods, stored in its results:
        >>> study = compress_study("widthlab-runs/mlp-10d")
        >>> study.rows.groupby(["method", "width"])["units_kept"].size().to_dict()
        {('merge', 0.25): 2, ('merge', 0.5): 2, ('prune', 0.25): 2, ('prune', 0.5): 2}
        >>> bool((study.rows["units_kept"] <= study.rows["units_before"]).all())
        True
        >>> len(load_results("widthlab-runs/mlp-10d").compression), len(compress_study("widthlab-runs/mlp-10d").rows)
        (8, 8)
    """
    from widthlab.study.build import checkpoint_model
    from widthlab.study.store import Store, study_lock
    from widthlab.train.checkpoint import load_checkpoint

    methods = check_settings(max_drop, methods, importance, max_examples)
    max_drop = float(max_drop)
    directory = Path(study_dir)
    check_study_dir(directory)
    outcome = CompressedStudy(rows=pd.DataFrame())
    cache: dict = {}
    with study_lock(directory):
        with Store(directory, create=False) as store:
            runs = store.runs()
            done = runs[runs["status"] == "done"]
            stored = store.compressed_settings()
            for run in done.itertuples(index=False):
                config = json.loads(run.config)
                split = str((config.get("measure") or {}).get("split", "test"))
                setting = (importance, max_drop, int(max_examples), split)
                todo = [m for m in methods if (run.run_id, m, *setting) not in stored]
                outcome.resumed += [(run.run_id, m) for m in methods if m not in todo]
                for method in methods:
                    if method not in todo and on_run is not None:
                        on_run(run.run_id, method, None)
                if not todo:
                    continue
                path = directory / CHECKPOINTS / f"{files.file_name(run.run_id)}.pt"
                if not path.is_file():
                    log.warning("run %s is done but its checkpoint %s is gone: not compressed", run.run_id, path)
                    outcome.missing.append(run.run_id)
                    continue
                model = checkpoint_model(load_checkpoint(path), str(path), import_code=allow_code).eval()
                calibration, evaluation, split = _run_inputs(config, allow_code, cache)
                rows = []
                for method in todo:
                    result = compress(model, calibration, max_drop=max_drop, method=method, importance=importance,
                                      eval_inputs=evaluation, max_examples=max_examples, seed=int(run.replicate))
                    table = result.table
                    rows += [dict(layer=r.layer, method=method, importance=importance, max_drop=max_drop,
                                  calibration_examples=int(max_examples), split=split, method_used=r.method_used,
                                  units_before=int(r.units_before), units_kept=int(r.units_after),
                                  params_before=int(r.params_before), params_after=int(r.params_after),
                                  accuracy_before=r.accuracy_before, accuracy_after=r.accuracy_after,
                                  agreement=r.agreement) for r in table.itertuples(index=False)]
                    if on_run is not None:
                        on_run(run.run_id, method, table)
                store.add_compression(run.run_id, rows)  # all of a run's methods or none of them
                outcome.compressed += [(run.run_id, m) for m in todo]
            frame = store.results().compression
    mine = (frame["importance"] == importance) & (frame["max_drop"] == max_drop) \
        & (frame["calibration_examples"].astype(int) == int(max_examples)) & frame["method"].isin(methods)
    outcome.rows = frame[mine].reset_index(drop=True)
    return outcome
