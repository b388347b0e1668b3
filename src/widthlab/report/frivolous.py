"""Frivolous units across a width family (the AAAI 2021 version of the paper): unit counts normalised by the
largest width's layer size, and the growth per doubling g.

Works on the study store's plain DataFrames; the per-layer counts are the metrics rows ``prunable_units``,
``non_prunable_units`` (per sampling of the zero-ablation curve), ``redundant_units``, ``non_redundant_units``
(per redundancy draw) and ``n_units`` that `widthlab.analyze` writes.

Choices (stated in docs/metrics.md):
- a layer's count is the mean over its samplings; the reference code's summary (max over samplings for
  prunable units, min for non-prunable) is kept beside it as ``<quantity>_ref``;
- a count is normalised by the same layer's size C_max at the variant's largest width (as the reference plots
  them); a run's value is the mean over its unit layers of the normalised count, a width's value the mean over
  its runs;
- g = the mean over consecutive widths w < w' of (value(w')/value(w))^(1/log2(w'/w)), i.e. value(2w)/value(w)
  for the paper's doublings; a width whose value is 0 gives no ratio. g = 2 is growth in proportion to width;
- its 95% interval is the percentile interval of 1,000 seeded bootstrap resamples of runs within each width, or
  of unit layers with one replicate per width (as the verdict's slopes); `pace` is "slower than width" when the
  interval lies below 2, "faster than width" above 2, "as width" when it holds 2, "not judged" without one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from widthlab.report.verdict import done_runs, final_rows
from widthlab.vocab import JOINT_SCOPE
from widthlab.seeding import numpy_generator

QUANTITIES = ("prunable_units", "non_prunable_units", "redundant_units", "non_redundant_units")
EFFECTIVE = ("non_prunable_units", "non_redundant_units")  # the "effective width" of a layer
# The reference code's summary of a layer's samplings.
REFERENCE_SUMMARY = {"prunable_units": "max", "non_prunable_units": "min", "redundant_units": "mean",
                     "non_redundant_units": "mean"}
LABELS = {"prunable_units": "prunable", "non_prunable_units": "non-prunable", "redundant_units": "redundant",
          "non_redundant_units": "non-redundant"}
GROWTH_COLUMNS = ("variant", "quantity", "g", "ci_low", "ci_high", "pace", "n_runs", "method")
PROPORTIONAL = 2.0


def layer_counts(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per done run and unit layer: its unit counts, their reference summaries and normalised values.

    Columns: run_id, variant, width, replicate, layer, n_units, c_max (the layer's n_units at the variant's
    largest width), then for each quantity q of QUANTITIES: q (mean over samplings), q_ref (the reference
    code's summary) and q_norm (q / c_max). Empty when no run has these metrics.

    Example: the 1/2x MLPs' relu1 has 64 units, so the layer size at the study's largest width is 64:
        >>> counts = layer_counts(res.runs, res.metrics)
        >>> counts[["run_id", "layer", "n_units", "c_max"]].values.tolist()
        [['default-w0.25-r0', 'relu1', 32.0, 64.0], ['default-w0.25-r1', 'relu1', 32.0, 64.0],
         ['default-w0.5-r0', 'relu1', 64.0, 64.0], ['default-w0.5-r1', 'relu1', 64.0, 64.0]]
        >>> counts.groupby("width")["non_prunable_units"].mean().index.tolist()
        [0.25, 0.5]
    """
    done = done_runs(runs)
    keys = ["run_id", "variant", "width", "replicate", "layer"]
    rows = final_rows(metrics)
    rows = rows[rows["run_id"].isin(done["run_id"]) & (rows["layer"] != JOINT_SCOPE)
                & rows["metric"].isin(("n_units", *QUANTITIES)) & rows["level"].isna()]
    if not rows["metric"].isin(QUANTITIES).any():
        return pd.DataFrame(columns=[*keys, "n_units", "c_max"])
    grouped = rows.groupby(["run_id", "layer", "metric"])["value"]
    mean = grouped.mean().unstack("metric")
    out = mean.reset_index()
    for quantity in QUANTITIES:
        if quantity in mean.columns:
            out[f"{quantity}_ref"] = grouped.agg(REFERENCE_SUMMARY[quantity]).unstack("metric")[quantity].to_numpy()
    out = done[["run_id", "variant", "width", "replicate"]].merge(out, on="run_id")
    out["width"] = out["width"].astype(float)
    largest = out[out["width"] == out.groupby("variant")["width"].transform("max")]
    c_max = largest.groupby(["variant", "layer"])["n_units"].mean().rename("c_max").reset_index()
    out = out.merge(c_max, on=["variant", "layer"], how="left")
    for quantity in QUANTITIES:
        if quantity in out.columns:
            out[f"{quantity}_norm"] = out[quantity] / out["c_max"]
    return out.sort_values(["variant", "width", "replicate", "layer"]).reset_index(drop=True)


def run_counts(runs: pd.DataFrame, metrics: pd.DataFrame, counts: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per done run: each quantity's normalised count averaged over unit layers (`layer_counts`), and
    the raw count averaged over them as ``<quantity>_units``.

    `counts` is `layer_counts(runs, metrics)` when the caller has it already (default None: computed here).

    Example: a run's redundant units, as a share of 64 and as a count (their mean over its one unit layer):
        >>> counts = run_counts(res.runs, res.metrics)
        >>> bool((counts["redundant_units"] * 64 == counts["redundant_units_units"]).all())
        True
        >>> counts.groupby(["variant", "width"])["non_prunable_units"].mean().index.tolist()
        [('default', 0.25), ('default', 0.5)]
    """
    layers = layer_counts(runs, metrics) if counts is None else counts
    present = [q for q in QUANTITIES if q in layers.columns]
    if not present:
        return pd.DataFrame(columns=["run_id", "variant", "width", "replicate", *QUANTITIES])
    agg = {**{q: (f"{q}_norm", "mean") for q in present}, **{f"{q}_units": (q, "mean") for q in present}}
    return layers.groupby(["run_id", "variant", "width", "replicate"], as_index=False).agg(**agg)


def _growth(widths: np.ndarray, values: np.ndarray) -> np.ndarray:
    """g of each column of `values` (W, B) over the sorted distinct `widths` (W,); NaN without a ratio."""
    steps = np.log2(widths[1:] / widths[:-1])[:, None]
    low, high = values[:-1], values[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = np.where((low > 0) & np.isfinite(low) & np.isfinite(high), (high / low) ** (1 / steps), np.nan)
    counted = np.isfinite(ratios).sum(axis=0)
    total = np.where(np.isfinite(ratios), ratios, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counted > 0, total / counted, np.nan)


def _width_means(x: np.ndarray, y: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """(W, B) means of the columns of y (runs, B) over the runs of each width, ignoring NaN."""
    out = np.full((len(widths), y.shape[1]), np.nan)
    for i, width in enumerate(widths):
        part = y[x == width]
        finite = np.isfinite(part)
        count = finite.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[i] = np.where(count > 0, np.where(finite, part, 0.0).sum(axis=0) / count, np.nan)
    return out


def _pace(low: float, high: float) -> str:
    if not (np.isfinite(low) and np.isfinite(high)):
        return "not judged"
    if high < PROPORTIONAL:
        return "slower than width"
    if low > PROPORTIONAL:
        return "faster than width"
    return "as width"


def growth(runs: pd.DataFrame, metrics: pd.DataFrame, *, quantities: Sequence[str] = QUANTITIES,
           resamples: int = 1000, seed: int = 0, counts: pd.DataFrame | None = None) -> pd.DataFrame:
    """Growth per doubling g of each frivolous-unit count per variant, with a bootstrap 95% interval.

    See the module docstring for the definition. Each (variant, quantity) draws from its own stream
    `numpy_generator(seed, "growth", variant, quantity)`.

    Returns a DataFrame with columns variant, quantity, g, ci_low, ci_high, pace, n_runs, method ("runs",
    "layers" or "none"); empty when no run has unit counts. `counts` is `layer_counts(runs, metrics)` when the
    caller has it already (default None: computed here).

    Example: g and its interval per quantity, from the study's two replicates per width:
        >>> table = growth(res.runs, res.metrics)
        >>> table["quantity"].tolist(), table["method"].unique().tolist()
        (['prunable_units', 'non_prunable_units', 'redundant_units', 'non_redundant_units'], ['runs'])
        >>> row = table.query("quantity == 'non_prunable_units'").iloc[0]
        >>> bool(row.ci_low <= row.g <= row.ci_high)
        True
    """
    layers = layer_counts(runs, metrics) if counts is None else counts
    rows = []
    for variant in pd.unique(layers["variant"]):
        mine = layers[layers["variant"] == variant]
        for quantity in quantities:
            column = f"{quantity}_norm"
            if column not in mine.columns or not mine[column].notna().any():
                continue
            table = mine.pivot_table(index="run_id", columns="layer", values=column, aggfunc="mean")
            keys = mine.drop_duplicates("run_id").set_index("run_id").loc[table.index]
            x = keys["width"].to_numpy(float)
            values = table.to_numpy(float)
            widths = np.unique(x)
            run_values = np.nanmean(values, axis=1) if values.size else np.array([])
            g = float(_growth(widths, _width_means(x, run_values[:, None], widths))[0]) if len(widths) > 1 \
                else np.nan
            row = dict(variant=variant, quantity=quantity, g=g, ci_low=np.nan, ci_high=np.nan, pace="not judged",
                       n_runs=len(x), method="none")
            rng = numpy_generator(seed, "growth", variant, quantity)
            samples = None
            if np.isfinite(g) and pd.Series(x).value_counts().max() >= 2:
                index = np.empty((resamples, len(x)), dtype=np.int64)
                for width in widths:
                    members = np.flatnonzero(x == width)
                    index[:, members] = rng.choice(members, size=(resamples, len(members)), replace=True)
                samples = _growth(widths, _width_means(x, run_values[index].T, widths))
                row["method"] = "runs"
            elif np.isfinite(g) and values.shape[1] >= 2:
                draws = rng.integers(0, values.shape[1], size=(resamples, values.shape[1]))
                counts = np.stack([np.bincount(d, minlength=values.shape[1]) for d in draws]).astype(float)
                present = np.isfinite(values)
                total = np.where(present, values, 0.0) @ counts.T
                weight = present.astype(float) @ counts.T
                with np.errstate(invalid="ignore", divide="ignore"):
                    y = np.where(weight > 0, total / weight, np.nan)
                samples = _growth(widths, _width_means(x, y, widths))
                row["method"] = "layers"
            if samples is not None and np.isfinite(samples).any():
                low, high = np.nanquantile(samples, [0.025, 0.975])
                row.update(ci_low=float(low), ci_high=float(high), pace=_pace(low, high))
            rows.append(row)
    return pd.DataFrame(rows, columns=list(GROWTH_COLUMNS)).astype({"g": float, "ci_low": float, "ci_high": float})


def _two(value: float) -> str:
    return f"{value:.2f}" if np.isfinite(value) else "n/a"


def effective_width(growth_df: pd.DataFrame) -> pd.DataFrame:
    """Per variant: does its effective width (non-prunable and non-redundant units) grow slower than width?

    ``slower`` is "yes" when both g intervals lie below 2, "no" when either holds or exceeds 2, "not judged"
    when either has no interval.

    Example:
        >>> effective_width(growth(res.runs, res.metrics)).columns.tolist()
        ['variant', 'slower', 'reason']
    """
    rows = []
    for variant, group in growth_df.groupby("variant", sort=False):
        paces = dict(zip(group["quantity"], group["pace"]))
        gs = {r.quantity: r for r in group.itertuples(index=False)}
        judged = "; ".join(f"{LABELS[q]} g = {_two(gs[q].g)} [{_two(gs[q].ci_low)}, {_two(gs[q].ci_high)}]"
                           for q in EFFECTIVE if q in gs)
        if any(paces.get(q, "not judged") == "not judged" for q in EFFECTIVE):
            slower = "not judged"
        else:
            slower = "yes" if all(paces[q] == "slower than width" for q in EFFECTIVE) else "no"
        rows.append(dict(variant=variant, slower=slower, reason=judged or "no unit counts"))
    return pd.DataFrame(rows, columns=["variant", "slower", "reason"])


def count_rows(runs: pd.DataFrame, metrics: pd.DataFrame, counts: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per variant × width: mean ± std over runs of each run's unit counts (raw, averaged over unit layers) and
    their normalised values; the table summary.md shows. `counts`: `layer_counts(runs, metrics)`, if at hand.

    Example: one row per width, over its two runs:
        >>> rows = count_rows(res.runs, res.metrics)
        >>> rows[["variant", "width", "runs"]].values.tolist()
        [['default', 0.25, 2], ['default', 0.5, 2]]
    """
    counts = run_counts(runs, metrics, counts)
    present = [q for q in QUANTITIES if q in counts.columns and counts[q].notna().any()]
    out = []
    for (variant, width), group in counts.groupby(["variant", "width"], sort=False):
        row = {"variant": variant, "width": float(width), "runs": len(group)}
        for q in present:
            row[q] = float(group[f"{q}_units"].mean())
            row[f"{q}_std"] = float(np.std(group[f"{q}_units"], ddof=0))
            row[f"{q}_norm"] = float(group[q].mean())
        out.append(row)
    return pd.DataFrame(out)
