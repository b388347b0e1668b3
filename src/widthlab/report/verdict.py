"""The verdict: did robustness and redundancy grow with width? (docs/metrics.md, Verdict).

Works on the study store's plain DataFrames (`runs`, `metrics`); knows nothing of how they were made.

Choices docs/metrics.md does not spell out (also stated in the docstrings below):
- a run's value is the mean over its unit layers (never the joint scope "all") of each layer's mean over
  samplings, so a layer measured with more samplings does not weigh more;
- the bootstrap interval is the percentile interval (2.5%, 97.5%) of the resampled slopes; each
  (variant, metric) draws from its own stream, `numpy_generator(seed, "verdict", variant, metric)`, so a slope's
  interval does not depend on which other variants or metrics are in the table;
- resampling runs is chosen when some width has at least two done runs; a width left with a single run
  (the others failed or diverged) then contributes that run to every resample unchanged;
- resampling layers (one replicate per width) draws the same layers for every run, i.e. it bootstraps the
  trend over the population of layers (the slope of the layer mean is the mean of the per-layer slopes);
- no interval can be drawn (method "none": NaN interval, trend "flat", point slope still reported) when
  there are fewer than two widths, or one replicate per width and fewer than two layers (accuracy has no
  layers, so single-replicate accuracy is always "none");
- metrics rows with an `epoch` (snapshots taken during training, paper Figure C3) are not the final
  measurement: figures versus width and the verdict use the rows whose epoch is missing (or a table without
  an epoch column); `epoch_level` uses the others.

Calibrated similarity (not among the paper's four metrics, added because similarity counts similar units *per unit*): the verdict
also judges `similar_fraction` (share of similar pairs) and, when the permutation null was measured,
`similarity_excess` (observed − null on the same rows); `calibration` says whether a rising similarity survives
both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from widthlab.errors import WidthlabError
from widthlab.seeding import numpy_generator
from widthlab.vocab import AUC_METRIC, JOINT_SCOPE

RUN_COLUMNS = ("run_id", "variant", "width", "replicate", "status")
# The columns of the metrics table the verdict reads.
JUDGED_COLUMNS = ("run_id", "layer", "metric", "perturbation", "sampling", "value")
# What each run-level quantity is made of: (metric name in `metrics`, its perturbation).
LAYER_QUANTITIES = {
    "robustness": (AUC_METRIC, "zero"),
    "compressibility": ("compressibility", ""),
    "similarity": ("similarity", ""),
    "similar_fraction": ("similar_fraction", ""),
    "similarity_null": ("similarity_null", ""),
    "similar_fraction_null": ("similar_fraction_null", ""),
    "similarity_excess": ("similarity_excess", ""),
    # Class selectivity (Morcos et al. 2018), when the runs were measured with labels.
    "selectivity": ("selectivity", ""),
}
RUN_LEVEL_METRICS = ("accuracy", *LAYER_QUANTITIES)
VERDICT_COLUMNS = ("variant", "metric", "slope", "ci_low", "ci_high", "trend", "n_runs", "method")
HYPOTHESIS_METRICS = ("robustness", "compressibility", "similarity")
# Judged by default: the paper's four (accuracy, robustness, compressibility, similarity), then the calibration metrics whenever the metrics table holds them.
CORE_METRICS = ("accuracy", *HYPOTHESIS_METRICS)
CALIBRATION_METRICS = ("similar_fraction", "similarity_excess")
CALIBRATION_COLUMNS = ("variant", "survives", "reason")


def _require_columns(df: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise WidthlabError(f"the {name} table lacks columns {missing}; it needs {list(columns)}")


def done_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs whose status is "done" (the only ones figures and the verdict count); of a selection's candidates
    (``cell`` set) only the chosen ones (``chosen`` 1), never one of a cell not chosen yet.

    Args:
        runs: the study's runs table (run_id, variant, width, replicate, status, test_acc, ...).

    Example:
        >>> done_runs(res.runs)["run_id"].tolist()
        ['default-w0.25-r0', 'default-w0.25-r1', 'default-w0.5-r0', 'default-w0.5-r1']
    """
    _require_columns(runs, RUN_COLUMNS, "runs")
    done = runs[runs["status"] == "done"]
    if "chosen" in done.columns:  # grid.select: only a cell's chosen candidate counts (not one merely measured)
        candidate = done["cell"].notna() if "cell" in done.columns else pd.Series(False, index=done.index)
        done = done[~candidate | (done["chosen"].astype(float) == 1)]
    bad = done.loc[~(done["width"].astype(float) > 0), "width"]
    if len(bad):
        raise WidthlabError(f"width must be > 0 to be placed on a log2 axis; got {sorted(set(bad))}")
    return done.reset_index(drop=True)


def final_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """The rows of the final measurement: all rows, or those whose `epoch` is missing when there is that column.

    Snapshots taken during training (paper Figure C3) carry their epoch; they must not be averaged into the
    trained network's numbers.

    Args:
        metrics: the metrics table, with or without an `epoch` column.

    Example: one similarity per run, the snapshot's left out:
        >>> snapshot = res.snapshots.query("metric == 'similarity'")
        >>> len(snapshot), len(final_rows(pd.concat([metrics, snapshot])).query("metric == 'similarity'"))
        (4, 4)
    """
    if "epoch" not in metrics.columns:
        return metrics
    return metrics[metrics["epoch"].isna()]


def layer_level(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Per-layer values of each done run, averaged over samplings (unit layers only, never "all").

    Args:
        runs: the runs table; only status "done" rows are kept.
        metrics: the metrics table (run_id, layer, metric, perturbation, sampling, value, ...).

    Returns a long DataFrame with columns run_id, variant, width, replicate, layer, metric, value, where
    metric is a key of LAYER_QUANTITIES: robustness (the "zero" ablation AUC), compressibility, similarity,
    similar_fraction, and the calibration metrics similarity_null, similar_fraction_null, similarity_excess
    when measured. Snapshot rows (with an epoch) are left out (`final_rows`).

    Example:
        >>> robustness = layer_level(runs, metrics).query("metric == 'robustness'")
        >>> robustness[["run_id", "layer"]].values.tolist()
        [['default-w0.25-r0', 'relu1'], ['default-w0.25-r1', 'relu1'], ['default-w0.5-r0', 'relu1'],
         ['default-w0.5-r1', 'relu1']]
    """
    done = done_runs(runs)
    _require_columns(metrics, JUDGED_COLUMNS, "metrics")
    long = _per_layer(final_rows(metrics), done, [])
    keys = done[["run_id", "variant", "width", "replicate"]]
    columns = ["run_id", "variant", "width", "replicate", "layer", "metric", "value"]
    return keys.merge(long, on="run_id", how="inner")[columns]


def _per_layer(metrics: pd.DataFrame, done: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Each LAYER_QUANTITIES value per run_id, `keys` and unit layer, averaged over samplings (long format)."""
    rows = metrics[metrics["run_id"].isin(done["run_id"]) & (metrics["layer"] != JOINT_SCOPE)]
    parts = []
    for name, (metric, perturbation) in LAYER_QUANTITIES.items():
        chosen = rows[(rows["metric"] == metric) & (rows["perturbation"].fillna("") == perturbation)]
        per_layer = chosen.groupby(["run_id", *keys, "layer"], as_index=False)["value"].mean()
        parts.append(per_layer.assign(metric=name))
    return pd.concat(parts, ignore_index=True)


def run_level(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per done run: its accuracy and its layer-averaged robustness and redundancy.

    accuracy = test_acc; robustness = mean over unit layers of the "zero" ablation AUC; compressibility,
    similarity, similar_fraction and the calibration metrics = means over unit layers. Each layer is first
    averaged over its samplings. The joint scope "all" and snapshot rows are excluded. A quantity a run never
    measured is NaN.

    Args:
        runs: the runs table; only status "done" rows are kept.
        metrics: the metrics table.

    Example: the mean robustness per width (the tiny study's narrower MLPs are the more robust):
        >>> by_width = run_level(runs, metrics).groupby("width")["robustness"].mean()
        >>> by_width.index.tolist(), bool(by_width[0.25] > by_width[0.5])
        ([0.25, 0.5], True)
    """
    done = done_runs(runs)
    per_layer = layer_level(runs, metrics)
    wide = per_layer.pivot_table(index="run_id", columns="metric", values="value", aggfunc="mean")
    out = done[["run_id", "variant", "width", "replicate"]].copy()
    out["width"] = out["width"].astype(float)
    out["accuracy"] = done["test_acc"].astype(float) if "test_acc" in done else np.nan
    for name in LAYER_QUANTITIES:
        column = wide[name] if name in wide.columns else pd.Series(dtype=float)
        out[name] = out["run_id"].map(column).astype(float)
    return out


def epoch_level(runs: pd.DataFrame, metrics: pd.DataFrame, history: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per done run and epoch of its snapshot measurements (paper Figure C3), averaged like `run_level`.

    Snapshot rows are the metrics rows with an `epoch`; each quantity is averaged over samplings, then over
    unit layers. With a training `history` (run_id, epoch, val_acc and/or test_acc), its accuracies are joined
    on (run_id, epoch) as columns val_acc / test_acc, so accuracy is drawn along the same epochs.

    Args:
        runs: the runs table; only status "done" rows are kept.
        metrics: a metrics table with an `epoch` column (no such column: an empty result).
        history: per-epoch training records (default None: no accuracy columns).

    Returns a DataFrame with columns run_id, variant, width, replicate, epoch, the LAYER_QUANTITIES names and
    any of val_acc, test_acc; empty when there is no snapshot.

    Example: the study's snapshot after epoch 1, with that epoch's validation accuracy:
        >>> epochs = epoch_level(runs, res.snapshots, res.history)
        >>> epochs[["run_id", "epoch"]].values.tolist()
        [['default-w0.25-r0', 1.0], ['default-w0.25-r1', 1.0], ['default-w0.5-r0', 1.0], ['default-w0.5-r1', 1.0]]
        >>> epochs.groupby(["width", "epoch"])["similarity"].mean().index.tolist(), "val_acc" in epochs
        ([(0.25, 1.0), (0.5, 1.0)], True)
    """
    done = done_runs(runs)
    keys = ["run_id", "variant", "width", "replicate", "epoch"]
    if "epoch" not in metrics.columns or metrics["epoch"].isna().all():
        return pd.DataFrame(columns=[*keys, *LAYER_QUANTITIES])
    _require_columns(metrics, JUDGED_COLUMNS, "metrics")
    long = _per_layer(metrics[metrics["epoch"].notna()], done, ["epoch"])
    wide = (long.groupby(["run_id", "epoch", "metric"])["value"].mean()
            .unstack("metric").reindex(columns=list(LAYER_QUANTITIES)).reset_index())
    if history is not None and len(history):
        accuracies = [c for c in ("val_acc", "test_acc") if c in history.columns]
        # History epochs are integers, snapshot epochs may be floats (NaN marks final rows): join as floats.
        records = history[["run_id", "epoch", *accuracies]].astype({"epoch": float})
        wide = wide.astype({"epoch": float}).merge(records, on=["run_id", "epoch"], how="left")
    wide.columns.name = None
    out = done[["run_id", "variant", "width", "replicate"]].merge(wide, on="run_id", how="inner")
    out["width"] = out["width"].astype(float)
    return out.reset_index(drop=True)


def _ols_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slopes of each column of y (n, B) on x (n,), ignoring NaN entries of that column.

    A column with fewer than two distinct x among its finite entries gives NaN. A slope whose fitted change
    over the x range is below 1e-12 of the column's largest |y| is rounding, and is returned as exactly 0.
    """
    valid = np.isfinite(y)  # (n, B)
    weight = valid.astype(float)
    y0 = np.where(valid, y, 0.0)
    count = weight.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        x_mean = (weight * x[:, None]).sum(axis=0) / count  # (B,)
        dx = (x[:, None] - x_mean) * weight  # (n, B)
        sxx = (dx**2).sum(axis=0)
        slopes = (dx * y0).sum(axis=0) / sxx
        # A constant y (accuracy 1.0 in every run) leaves a slope of ~1e-17 whose sign is rounding noise; its
        # bootstrap interval would be equally tiny and one-signed, and the trend "up" or "down" by chance.
        rounding = np.abs(slopes) * np.abs(dx).max(axis=0) <= 1e-12 * np.abs(y0).max(axis=0)
    slopes = np.where(rounding, 0.0, slopes)
    # Equal x can leave a rounding-sized sxx (the mean of n equal floats need not be exact); distinct
    # log2 widths give sxx far above the threshold.
    return np.where(sxx > 1e-12, slopes, np.nan)


def _resample_runs(x: np.ndarray, y: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap slopes, resampling runs with replacement within each width."""
    index = np.empty((resamples, len(x)), dtype=np.int64)
    for width in np.unique(x):
        members = np.flatnonzero(x == width)
        index[:, members] = rng.choice(members, size=(resamples, len(members)), replace=True)
    # Runs are only swapped for runs of the same width, so x stays as it is.
    return _ols_slopes(x, y[index].T)


def _resample_layers(x: np.ndarray, table: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap slopes, resampling layers (the same draw for every run) of a (runs, layers) table."""
    n_layers = table.shape[1]
    draws = rng.integers(0, n_layers, size=(resamples, n_layers))
    counts = np.stack([np.bincount(d, minlength=n_layers) for d in draws]).astype(float)  # (B, L)
    present = np.isfinite(table)
    total = np.where(present, table, 0.0) @ counts.T  # (runs, B)
    n_present = present.astype(float) @ counts.T
    with np.errstate(invalid="ignore", divide="ignore"):
        y = np.where(n_present > 0, total / n_present, np.nan)
    return _ols_slopes(x, y)


def _trend(ci_low: float, ci_high: float) -> str:
    if ci_low > 0:
        return "up"
    if ci_high < 0:
        return "down"
    return "flat"


def _one_verdict(
    variant: str,
    metric: str,
    run_level_df: pd.DataFrame,
    layers: pd.DataFrame,
    resamples: int,
    seed: int,
) -> dict:
    """The verdict row of one variant and metric (see the module docstring for the choices)."""
    run_level_df = run_level_df[np.isfinite(run_level_df[metric])]
    x = np.log2(run_level_df["width"].to_numpy(float))
    y = run_level_df[metric].to_numpy(float)
    slope = float(_ols_slopes(x, y[:, None])[0]) if len(x) else np.nan
    row = dict(variant=variant, metric=metric, slope=slope, ci_low=np.nan, ci_high=np.nan,
               trend="flat", n_runs=len(run_level_df), method="none")
    if np.isnan(slope):
        return row
    rng = numpy_generator(seed, "verdict", variant, metric)
    if run_level_df.groupby("width").size().max() >= 2:
        slopes = _resample_runs(x, y, resamples, rng)
        row["method"] = "runs"
    else:
        table = (
            layers[layers["metric"] == metric]
            .pivot_table(index="run_id", columns="layer", values="value", aggfunc="mean")
            .reindex(run_level_df["run_id"])
            .to_numpy(float)
        )
        if table.shape[1] < 2:
            return row
        slopes = _resample_layers(x, table, resamples, rng)
        row["method"] = "layers"
    ci_low, ci_high = np.nanquantile(slopes, [0.025, 0.975])
    row.update(ci_low=float(ci_low), ci_high=float(ci_high), trend=_trend(ci_low, ci_high))
    return row


def verdict(
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    *,
    quantities: Sequence[str] | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Slope of each metric on log2(width) per variant, with a bootstrap 95% interval and a trend label.

    slope = least squares of the run-level value (`run_level`) on log2(width) over the variant's done runs,
    i.e. the change per doubling of width. The interval resamples runs within each width ("runs"), or, with
    one replicate per width, the unit layers ("layers"); with neither possible it is NaN ("none").
    trend = "up" if ci_low > 0, "down" if ci_high < 0, else "flat" (also whenever the slope or interval is NaN,
    e.g. fewer than two widths).

    Args:
        runs: the runs table; only status "done" rows count.
        metrics: the metrics table.
        quantities: which run-level quantities (RUN_LEVEL_METRICS) to judge; default None: accuracy, robustness,
            compressibility, similarity, then similar_fraction and similarity_excess when the metrics table
            holds them (the calibration rows that `calibration` reads).
        resamples: bootstrap resamples (default 1000).
        seed: bootstrap seed (default 0); each (variant, metric) uses its own derived NumPy stream.

    Returns a DataFrame with columns variant, metric, slope, ci_low, ci_high, trend, n_runs, method.

    Example:
        >>> v = verdict(res.runs, res.metrics)
        >>> dict(zip(v["metric"], v["trend"]))
        {'accuracy': 'flat', 'robustness': 'down', 'compressibility': 'flat', 'similarity': 'up',
         'similar_fraction': 'flat', 'similarity_excess': 'up'}
        >>> v.query("trend == 'up'")["metric"].tolist()
        ['similarity', 'similarity_excess']
    """
    if quantities is None:
        measured = set(final_rows(metrics)["metric"]) if "metric" in metrics.columns else set()
        quantities = (*CORE_METRICS, *(m for m in CALIBRATION_METRICS if m in measured))
    unknown = [m for m in quantities if m not in RUN_LEVEL_METRICS]
    if unknown:
        raise WidthlabError(f"unknown verdict metric(s) {unknown}; valid: {list(RUN_LEVEL_METRICS)}")
    if resamples < 1:
        raise WidthlabError(f"resamples must be >= 1; got {resamples}")
    run_level_df = run_level(runs, metrics)
    layers = layer_level(runs, metrics)
    rows = [
        _one_verdict(variant, metric, run_level_df[run_level_df["variant"] == variant],
                     layers[layers["variant"] == variant], resamples, seed)
        for variant in pd.unique(run_level_df["variant"])
        for metric in quantities
    ]
    table = pd.DataFrame(rows, columns=list(VERDICT_COLUMNS))
    return table.astype({"slope": float, "ci_low": float, "ci_high": float, "n_runs": int})


def hypothesis(verdict_df: pd.DataFrame) -> pd.DataFrame:
    """Whether the robustness-redundancy hypothesis holds for each variant of a verdict table.

    It holds when accuracy is not "down" and robustness, compressibility or similarity is "up". It is not judged
    (judged False, holds False) when a trend it needs has no interval (method "none": one replicate per width
    and no unit layers to resample), or when the verdict lacks accuracy: a flat trend without an interval says
    nothing, and "does not hold" would overstate it. The reason then says what to change.

    Args:
        verdict_df: the output of `verdict`.

    Returns a DataFrame with columns variant, holds (bool), judged (bool), reason (str); `hypothesis_word` turns a
    row into "holds" / "does not hold" / "not judged".

    Example: accuracy is flat and similarity rises with width:
        >>> hypothesis(verdict(runs, metrics)).to_dict("records")
        [{'variant': 'default', 'holds': True, 'judged': True, 'reason': 'accuracy flat; similarity up'}]
    """
    _require_columns(verdict_df, ("variant", "metric", "trend"), "verdict")
    rows = []
    for variant, group in verdict_df.groupby("variant", sort=False):
        trends = dict(zip(group["metric"], group["trend"]))
        methods = dict(zip(group["metric"], group["method"])) if "method" in group else {}
        unjudged = [m for m in ("accuracy", *HYPOTHESIS_METRICS) if methods.get(m) == "none"]
        grown = [m for m in HYPOTHESIS_METRICS if trends.get(m) == "up" and m not in unjudged]
        judged = ", ".join(f"{m} {trends[m]}" for m in HYPOTHESIS_METRICS if m in trends) or "none judged"
        fix = (f"{', '.join(unjudged)} had no interval (one replicate per width): run grid.replicates >= 2, or "
               "measure a model with several unit layers")
        holds, known = False, True
        if "accuracy" not in trends:
            known, reason = False, "accuracy was not judged"
        elif "accuracy" in unjudged:
            known, reason = False, fix
        elif trends["accuracy"] == "down":
            reason = f"accuracy down ({judged})"
        elif grown:
            holds, reason = True, f"accuracy {trends['accuracy']}; {', '.join(grown)} up"
        elif unjudged:
            known, reason = False, f"nothing judged up; {fix}"
        else:
            reason = f"accuracy {trends['accuracy']}, but nothing up ({judged})"
        rows.append(dict(variant=variant, holds=holds, judged=known, reason=reason))
    return pd.DataFrame(rows, columns=["variant", "holds", "judged", "reason"]).astype({"holds": bool, "judged": bool})


def hypothesis_word(row) -> str:
    """"holds", "does not hold" or "not judged" for a row of `hypothesis`."""
    return "holds" if row.holds else "does not hold" if row.judged else "not judged"


def calibration(verdict_df: pd.DataFrame) -> pd.DataFrame:
    """Whether each variant's similarity trend survives calibration: similarity, similar_fraction and
    similarity_excess all "up".

    similarity counts similar units per unit, so it can rise with width while the share of similar pairs
    (similar_fraction) does not, and chance correlations inflate it (similarity_excess removes the permutation
    null). survives is "yes" when all three are up, "no" otherwise, and "not judged" when the verdict lacks any of
    them (e.g. no permutation null was measured).

    Args:
        verdict_df: the output of `verdict` (with its default metrics, or any including the three).

    Returns a DataFrame with columns variant, survives ("yes" | "no" | "not judged"), reason (str).

    Example: similarity rises, but the share of similar pairs does not:
        >>> table = calibration(verdict(runs, metrics))
        >>> table["survives"].tolist(), table.query("survives == 'yes'")["variant"].tolist()
        (['no'], [])
    """
    _require_columns(verdict_df, ("variant", "metric", "trend"), "verdict")
    needed = ("similarity", *CALIBRATION_METRICS)
    rows = []
    for variant, group in verdict_df.groupby("variant", sort=False):
        trends = dict(zip(group["metric"], group["trend"]))
        missing = [m for m in needed if m not in trends]
        judged = ", ".join(f"{m} {trends[m]}" for m in needed if m in trends)
        if missing:
            survives, reason = "not judged", f"{', '.join(missing)} not measured" + (f"; {judged}" if judged else "")
        elif all(trends[m] == "up" for m in needed):
            survives, reason = "yes", judged
        else:
            survives, reason = "no", judged
        rows.append(dict(variant=variant, survives=survives, reason=reason))
    return pd.DataFrame(rows, columns=list(CALIBRATION_COLUMNS))
