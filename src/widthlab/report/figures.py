"""The paper's figures from the study tables.

Metric vs width (Figures 1, 3–5, C4–C6, C11–C14), ablation curves (Figure 2), |r| distributions (Figure B2),
metrics along training epochs (Figure C3), layerwise curves (Figures C7–C10) and parameter counts (Figure A1),
plus the similarity calibration (share of similar pairs, permutation null, excess).

Every error bar and band is ± std (ddof 0) over replicates, and the legend says so with the number of replicates
per point (`spread_note`). Legends never sit on data: an axes-level plot puts its legend right of its axes, a
figure with several panels puts one legend right of all of them (`outside_legend`, `figure_legend`).
Accuracies and other shares get a y axis from 0 to 1.02 (`share_limits`), so a 0.001 difference never looks
like a collapse.

Figures are built as `matplotlib.figure.Figure` objects, not through pyplot, so no display or global backend
is involved (files are written by the Agg and PDF renderers) and nothing stays registered once they are saved.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, NullLocator

from widthlab import files
from widthlab.errors import WidthlabError
from widthlab.measure.perturbations import PERTURBATIONS
from widthlab.report.verdict import (
    RUN_LEVEL_METRICS,
    done_runs,
    epoch_level,
    final_rows,
    layer_level,
    run_level,
)
from widthlab.vocab import HISTOGRAM_METRIC, JOINT_SCOPE

log = logging.getLogger(__name__)

AXIS_LABELS = {
    "accuracy": "Test accuracy (top-1)",
    "robustness": "Robustness (area under ablation curve)",
    "compressibility": "Compressibility (1 − PCs for 95% variance / units)",
    "similarity": "Similarity (similar units per unit, |r| ≥ 0.5)",
    "similar_fraction": "Similar fraction (similarity / (units − 1))",
    "similarity_null": "Similarity of the permutation null",
    "similar_fraction_null": "Similar fraction of the permutation null",
    "similarity_excess": "Similarity excess (observed − permutation null)",
    "val_acc": "Validation accuracy (top-1)",
    "test_acc": "Test accuracy (top-1)",
}
TITLES = {
    "accuracy": "Accuracy",
    "robustness": "Robustness",
    "compressibility": "Compressibility",
    "similarity": "Similarity",
    "similar_fraction": "Similar fraction",
    "similarity_null": "Similarity null",
    "similar_fraction_null": "Similar fraction null",
    "similarity_excess": "Similarity excess",
    "val_acc": "Accuracy",
    "test_acc": "Accuracy",
}
# The permutation null drawn (dashed) beside each similarity quantity.
NULLS = {"similarity": "similarity_null", "similar_fraction": "similar_fraction_null"}
WIDTH_LABEL = "Model size factor (width)"
OVERVIEW_METRICS = ("accuracy", "robustness", "compressibility", "similarity")
LAYERWISE_METRICS = ("robustness", "compressibility", "similarity")
EPOCH_METRICS = ("robustness", "compressibility", "similarity")
ABS_R_WIDTHS = (0.25, 1.0, 4.0)
DPI = 150
FORMATS = ("png", "pdf")
DEFAULT_FORMATS = ("png", "pdf")
# Drawing processes at most: a report has about 20 figures, and each forked worker shares the caller's memory
# only until it writes to it.
MAX_WORKERS = 4
# Quantities in [0, 1] (accuracies, shares of pairs) drawn on a share axis (`share_limits`).
SHARE_METRICS = frozenset({"accuracy", "val_acc", "test_acc", "similar_fraction", "similar_fraction_null"})
SHARE_RANGE = (0.0, 1.02)
# Data whose highest point is below this would be a flat line along the bottom of (0, 1.02): zoom in.
SQUASHED_BELOW = 0.25
SHARE_PAD = 0.05


def width_label(width: float) -> str:
    """The paper's name for a width factor: 0.25 → "1/4", 0.75 → "3/4", 2 → "2"; others as a short decimal.

    Fractions are used only for power-of-two denominators (the paper's halvings), so 0.3 stays "0.3".

    Args:
        width: a width factor > 0.

    Example: ``width_label(0.5) == "1/2"``.
    """
    fraction = Fraction(float(width)).limit_denominator(64)
    power_of_two = fraction.denominator & (fraction.denominator - 1) == 0
    if not (power_of_two and np.isclose(float(fraction), width, rtol=1e-9, atol=0)):
        return f"{width:g}"
    return str(fraction.numerator) if fraction.denominator == 1 else f"{fraction.numerator}/{fraction.denominator}"


def _width_axis(ax: Axes, widths) -> None:
    """A log2 width axis with a tick (labelled "1/4", "1/2", "1", …) at each measured width."""
    ax.set_xscale("log", base=2)
    ticks = sorted(set(float(w) for w in widths))
    if ticks:
        ax.set_xticks(ticks, [width_label(w) for w in ticks])
        ax.minorticks_off()
    ax.set_xlabel(WIDTH_LABEL)


def _width_colours(widths) -> dict[float, tuple]:
    """A viridis colour per width, spaced on log2(width) so halvings look evenly apart."""
    widths = sorted(set(float(w) for w in widths))
    low, high = np.log2(widths[0]), np.log2(widths[-1])
    norm = Normalize(low, high if high > low else low + 1)
    # viridis ends in a pale yellow that vanishes on white; stop at its green.
    return {w: colormaps["viridis"](0.85 * norm(np.log2(w))) for w in widths}


def share_limits(values) -> tuple[float, float]:
    """The y range of an accuracy or share axis: (0, 1.02), or where every value is below 0.25 (it would be a
    flat line along the bottom) the data's range padded by 0.05 and clipped to (0, 1.02).

    The padding is in units of the share, not of the data's range, so a 0.001 difference stays small.

    Args:
        values: the plotted values (means ± std); NaNs are ignored.

    Example: ``share_limits([0.9, 0.95]) == (0.0, 1.02)``; ``share_limits([0.02, 0.04]) == (0.0, 0.09)``.
    """
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if not len(values) or values.max() >= SQUASHED_BELOW:
        return SHARE_RANGE
    low, high = SHARE_RANGE
    return max(low, float(values.min()) - SHARE_PAD), min(high, float(values.max()) + SHARE_PAD)


def share_axis(*axes: Axes) -> None:
    """An accuracy or share y axis: `share_limits` of the y data drawn on `axes` (lines, error bars, bands),
    set on each of them."""
    values = [np.ravel(line.get_ydata()) for ax in axes for line in ax.get_lines()]
    values += [path.vertices[:, 1] for ax in axes for drawn in ax.collections for path in drawn.get_paths()]
    limits = share_limits(np.concatenate(values) if values else [])
    for ax in axes:
        ax.set_ylim(*limits)


def spread_note(counts, over: str = "replicates", mark: str = "error bar") -> str:
    """What the error bars (or bands) are: "error bars: ± std over replicates (n = 3)".

    n is the number of values behind each point: "n = 2–3" when it differs between points, and
    "n = 1, no error bar" when every point has one.

    Args:
        counts: the number of values behind each plotted point.
        over: what the std is over (default "replicates"; "samplings" for one analysed model).
        mark: "error bar" (default) or "band".

    Example: ``spread_note([3, 3, 2], mark="band") == "bands: ± std over replicates (n = 2–3)"``.
    """
    counts = sorted({int(c) for c in counts if c > 0})
    if not counts:
        return ""
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    single = f", no {mark}" if counts == [1] else ""
    return f"{mark}s: ± std over {over} (n = {n}{single})"


def note_entry(note: str, mark: str = "error bar") -> tuple:
    """A grey legend entry (handle, label) explaining the error bars (a bar glyph) or bands (a pale patch)."""
    if mark == "band":
        return Patch(facecolor="grey", alpha=0.15), note
    return Line2D([], [], color="grey", marker="|", markersize=12, markeredgewidth=1.5, linestyle="none"), note


def _counts(data: pd.DataFrame, by: list[str], columns) -> list[int]:
    """The number of non-NaN values of each column per group of `by`: the n behind each plotted point."""
    return [int(n) for column in columns if column in data.columns
            for n in data.dropna(subset=[column]).groupby(by)[column].size()]


def _has_data(frame: pd.DataFrame, column: str) -> bool:
    return column in frame.columns and bool(np.isfinite(frame[column].to_numpy(float)).any())


def _mean_std(values: pd.DataFrame, by: str, column: str) -> pd.DataFrame:
    """Mean, std (ddof 0) and count n of `column` per value of `by`, sorted by it."""
    return (values.dropna(subset=[column]).groupby(by)[column]
            .agg(mean="mean", std=lambda v: float(np.std(v, ddof=0)), n="size").sort_index())


def _draw_variants(ax: Axes, data: pd.DataFrame, column: str) -> bool:
    """Mean ± std over replicates of `column` per variant vs width; its permutation null dashed when measured.

    Returns whether a null line was drawn.
    """
    null_column = NULLS.get(column)
    with_null = null_column is not None and _has_data(data, null_column)
    for variant in pd.unique(data["variant"]):
        rows = data[data["variant"] == variant]
        stats = _mean_std(rows, "width", column)
        if stats.empty:
            continue
        line = ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], marker="o", capsize=3,
                           label=str(variant))
        if with_null:
            nulls = _mean_std(rows, "width", null_column)
            ax.plot(nulls.index, nulls["mean"], linestyle="--", marker="x", color=line.lines[0].get_color())
    return with_null


def _entries(axes, with_null: bool, notes: Sequence[tuple]) -> tuple[list, list[str]]:
    """The legend entries of `axes` (one per label), then "permutation null" and the notes (`note_entry`)."""
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if with_null:
        # One grey entry explains every dashed line instead of doubling the variant entries.
        entries["permutation null"] = Line2D([], [], color="grey", linestyle="--", marker="x")
    for handle, label in notes:
        if label:
            entries[label] = handle
    return list(entries.values()), list(entries)


def outside_legend(ax: Axes, title: str, with_null: bool = False, notes: Sequence[tuple] = ()) -> None:
    """The legend of an axes-level plot, right of its axes (constrained layout makes room), never on its data."""
    handles, labels = _entries([ax], with_null, notes)
    ax.legend(handles, labels, title=title, fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1),
              borderaxespad=0)


def figure_legend(fig: Figure, axes, title: str, with_null: bool = False, notes: Sequence[tuple] = ()) -> None:
    """One legend for all panels of `fig`, right of them (the figure must use constrained layout)."""
    handles, labels = _entries(axes, with_null, notes)
    if handles:
        fig.legend(handles, labels, title=title, fontsize="small", loc="outside right upper")


def plot_vs_width(run_level_df: pd.DataFrame, metric: str, ax: Axes | None = None, *, legend: bool = True) -> Axes:
    """One line per variant of a run-level metric against width: mean ± std (ddof 0) over replicates.

    For similarity and similar_fraction the permutation null (similarity_null, similar_fraction_null), when
    measured, is drawn as a dashed line in each variant's colour. The legend (right of the axes) names the
    variants, the null, and what the error bars are with the number of replicates per point (`spread_note`).
    Accuracy and similar_fraction get a share axis (`share_limits`).

    Args:
        run_level_df: the output of `run_level` (variant, width, and the metric's column).
        metric: one of RUN_LEVEL_METRICS (accuracy, robustness, compressibility, similarity, similar_fraction,
            similarity_null, similar_fraction_null, similarity_excess).
        ax: the axes to draw on (default: a new figure's).
        legend: whether to draw the legend (titled "variant"); default True. Figures of several panels pass False
            and draw one legend right of all panels.

    Returns the axes.

    Example: ``plot_vs_width(run_level(runs, metrics), "robustness").figure.savefig("robustness.png")``.
    """
    if metric not in RUN_LEVEL_METRICS or metric not in run_level_df.columns:
        raise WidthlabError(f"cannot plot {metric!r}; valid metrics: {list(RUN_LEVEL_METRICS)}")
    if ax is None:
        ax = Figure(figsize=(6.8, 3.8), layout="constrained").subplots()
    data = run_level_df.dropna(subset=[metric])
    with_null = _draw_variants(ax, run_level_df, metric)
    _width_axis(ax, run_level_df["width"])
    ax.set_ylabel(AXIS_LABELS[metric])
    ax.set_title(TITLES[metric])
    ax.grid(alpha=0.3)
    if metric in SHARE_METRICS:
        share_axis(ax)
    if metric == "similarity_excess":
        ax.axhline(0.0, color="grey", linewidth=0.8)
    if data.empty:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="grey")
    elif legend:
        outside_legend(ax, "variant", with_null, [note_entry(_variant_note(run_level_df, [metric]))])
    return ax


def _variant_note(run_level_df: pd.DataFrame, metrics) -> str:
    """`spread_note` for run-level metrics drawn per variant and width."""
    return spread_note(_counts(run_level_df, ["variant", "width"], metrics))


def _panels_legend(fig: Figure, axes, run_level_df: pd.DataFrame, metrics) -> None:
    """One figure legend for panels drawn by `plot_vs_width(..., legend=False)`: variants, the permutation null
    when a panel drew one, and the error bars with n over all panels."""
    if run_level_df.dropna(subset=[m for m in metrics if m in run_level_df.columns], how="all").empty:
        return
    with_null = any(m in NULLS and _has_data(run_level_df, NULLS[m]) for m in metrics)
    figure_legend(fig, axes, "variant", with_null, [note_entry(_variant_note(run_level_df, metrics))])


def plot_similarity_calibration(run_level_df: pd.DataFrame) -> Figure:
    """Similarity beside its calibration: (a) similarity, (b) similar fraction, each with the permutation null
    dashed, and (c) the excess over the null when it was measured.

    Args:
        run_level_df: the output of `run_level`.

    Returns the figure.

    Example: ``plot_similarity_calibration(run_level(runs, metrics)).savefig("similarity_calibration.png")``.
    """
    metrics = ["similarity", "similar_fraction"]
    if _has_data(run_level_df, "similarity_excess"):
        metrics.append("similarity_excess")
    fig = Figure(figsize=(4.6 * len(metrics) + 2.2, 3.9), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    for index, (ax, metric) in enumerate(zip(axes, metrics)):
        plot_vs_width(run_level_df, metric, ax, legend=False)
        ax.set_title(f"({'abc'[index]}) {TITLES[metric]}")
    _panels_legend(fig, axes, run_level_df, metrics)
    return fig


def plot_overview(run_level_df: pd.DataFrame) -> Figure:
    """The four metric panels (a) accuracy, (b) robustness, (c) compressibility, (d) similarity vs width (paper
    Figure C5), with one legend right of them: variants, the permutation null (dashed in (d), when measured)
    and the error bars with n.

    Args:
        run_level_df: the output of `run_level`.

    Returns the figure.

    Example: ``plot_overview(run_level(runs, metrics)).savefig("overview.png")``.
    """
    fig = Figure(figsize=(12, 7.6), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    for index, (ax, metric) in enumerate(zip(axes, OVERVIEW_METRICS)):
        plot_vs_width(run_level_df, metric, ax, legend=False)
        ax.set_title(f"({'abcd'[index]}) {TITLES[metric]}")
    _panels_legend(fig, axes, run_level_df, OVERVIEW_METRICS)
    return fig


def plot_layerwise(layer_level_df: pd.DataFrame, metric: str, layers: Sequence[str] | None = None) -> Figure:
    """Figures C7–C10: a metric against width with one panel per unit layer; variants as lines (mean ± std).

    Panels share the y axis so layers can be compared; similarity panels carry their permutation null dashed.
    One legend right of the panels names the variants, the null and the error bars with n (`spread_note`).

    Args:
        layer_level_df: the output of `layer_level` (long: run_id, variant, width, layer, metric, value).
        metric: a quantity of `layer_level` (robustness, compressibility, similarity, …).
        layers: panel order (default: as the layers first appear in the table); unknown layers are skipped.

    Returns the figure.

    Example: ``plot_layerwise(layer_level(runs, metrics), "robustness").savefig("layerwise_robustness.png")``.
    """
    wide = layer_level_df.pivot_table(index=["run_id", "variant", "width", "layer"], columns="metric",
                                      values="value", aggfunc="mean", sort=False).reset_index()
    if metric not in wide.columns:
        raise WidthlabError(f"no layer values of {metric!r}; measured: {sorted(set(layer_level_df['metric']))}")
    present = list(pd.unique(wide["layer"]))
    order = [name for name in (layers if layers is not None else present) if name in present]
    if not order:
        raise WidthlabError(f"none of the layers {list(layers or [])} was measured; measured: {present}")
    columns = min(len(order), 4)
    rows = -(-len(order) // columns)
    fig = Figure(figsize=(3.7 * columns + 2.2, 3.3 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, sharey=True, squeeze=False)).ravel()
    with_null = False
    for ax, name in zip(axes, order):
        with_null |= _draw_variants(ax, wide[wide["layer"] == name], metric)
        _width_axis(ax, wide["width"])
        ax.set_title(name)
        ax.grid(alpha=0.3)
    for ax in axes[len(order):]:
        ax.set_visible(False)
    for ax in axes[::columns]:
        ax.set_ylabel(AXIS_LABELS[metric])
    note = spread_note(_counts(wide[wide["layer"].isin(order)], ["variant", "width", "layer"], [metric]))
    figure_legend(fig, axes[:len(order)], "variant", with_null, [note_entry(note)])
    fig.suptitle(f"{TITLES[metric]} per layer")
    return fig


def ablation_curve_table(
    metrics: pd.DataFrame, runs: pd.DataFrame, perturbation: str = "zero", layer: str | None = None
) -> pd.DataFrame:
    """Mean and std (ddof 0, over replicates) of the fraction of labels unchanged per variant, width and level.

    Each run's curve is first averaged over samplings, then over unit layers (or taken at `layer`), then
    runs are averaged per width, so every replicate weighs the same. Snapshot rows (with an epoch) are left out.

    Args:
        metrics: the metrics table (rows with metric "unchanged").
        runs: the runs table; only status "done" rows count.
        perturbation: which perturbation's curves (default "zero").
        layer: a single layer, or "all" for the joint scope (default None: mean over unit layers).

    Returns a DataFrame with columns variant, width, level, unchanged, std.

    Example: ``ablation_curve_table(metrics, runs).query("width == 1")``.
    """
    return _curve_stats(_curve_runs(metrics, runs, perturbation, layer)).drop(columns="n")


def _curve_runs(metrics: pd.DataFrame, runs: pd.DataFrame, perturbation: str, layer: str | None) -> pd.DataFrame:
    """Each done run's curve (run_id, level, value, variant, width), as `ablation_curve_table` describes."""
    done = done_runs(runs)
    metrics = final_rows(metrics)
    rows = metrics[
        metrics["run_id"].isin(done["run_id"])
        & (metrics["metric"] == "unchanged")
        & (metrics["perturbation"] == perturbation)
    ]
    rows = rows[rows["layer"] != JOINT_SCOPE] if layer is None else rows[rows["layer"] == layer]
    if rows.empty:
        where = "unit layers" if layer is None else f"layer {layer!r}"
        raise WidthlabError(
            f"no 'unchanged' curve points for perturbation {perturbation!r} on {where} of a done run; "
            f"perturbations present: {sorted(metrics.loc[metrics['metric'] == 'unchanged', 'perturbation'].unique())}"
        )
    per_layer = rows.groupby(["run_id", "layer", "level"], as_index=False)["value"].mean()
    per_run = per_layer.groupby(["run_id", "level"], as_index=False)["value"].mean()
    return per_run.merge(done[["run_id", "variant", "width"]], on="run_id")


def _curve_stats(per_run: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof 0) and number of runs n per variant, width and level of `_curve_runs`' curves."""
    table = per_run.groupby(["variant", "width", "level"], as_index=False, sort=False)["value"].agg(
        unchanged="mean", std=lambda v: float(np.std(v, ddof=0)), n="size")
    return table.sort_values(["width", "level"], kind="stable")


def plot_ablation_curves(
    metrics: pd.DataFrame, runs: pd.DataFrame, perturbation: str = "zero", layer: str | None = None
) -> Figure:
    """Figure 2: fraction of labels unchanged vs fraction of units ablated, one line per width, one panel per variant.

    Curves are averaged over samplings, unit layers (unless `layer` is given) and replicates; the band is
    ± std over replicates, and the legend (right of the panels) says so with n per point (`spread_note`).

    Args:
        metrics: the metrics table (rows with metric "unchanged").
        runs: the runs table; only status "done" rows count.
        perturbation: which perturbation's curves (default "zero").
        layer: a single layer, or "all" for the joint scope (default None: mean over unit layers).

    Returns the figure (not shown, not registered with pyplot).

    Example: ``plot_ablation_curves(metrics, runs).savefig("ablation_curves.png")``.
    """
    table = _curve_stats(_curve_runs(metrics, runs, perturbation, layer))
    noise = perturbation in PERTURBATIONS and PERTURBATIONS[perturbation].noise
    # Panels follow the runs table's order (the study grid's), not the alphabet.
    variants = [v for v in pd.unique(done_runs(runs)["variant"]) if v in set(table["variant"])]
    colours = _width_colours(table["width"])
    fig = Figure(figsize=(4.2 * len(variants) + 2.2, 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(variants), sharey=True))
    for ax, variant in zip(axes, variants):
        for width, colour in colours.items():
            curve = table[(table["variant"] == variant) & (table["width"] == width)]
            if curve.empty:
                continue
            ax.plot(curve["level"], curve["unchanged"], marker=".", color=colour, label=width_label(width))
            ax.fill_between(curve["level"], curve["unchanged"] - curve["std"], curve["unchanged"] + curve["std"],
                            color=colour, alpha=0.15, linewidth=0)
        ax.set_title(str(variant))
        if noise:
            ax.set_xlabel("Noise level (σ multiples)")
            ax.set_xlim(0, float(table["level"].max()))
        else:
            ax.set_xlabel("Fraction of units ablated")
            ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Fraction of labels unchanged")
    share_axis(*axes)
    figure_legend(fig, axes, "width", notes=[note_entry(spread_note(table["n"], mark="band"), "band")])
    scope = "mean over unit layers" if layer is None else f"layer {layer}"
    fig.suptitle(f"Ablation curves ({perturbation}, {scope})")
    return fig


def abs_r_table(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """The |r| distribution (share of unit pairs per bin) per variant, width and unit layer (Figure B2's data).

    Each run's `abs_r_count` rows (level = bin centre) are summed over samplings and divided by their total, so
    every run's distribution sums to 1; runs are then averaged per width. Snapshot rows are left out.

    Args:
        runs: the runs table; only status "done" rows count.
        metrics: the metrics table (rows with metric "abs_r_count").

    Returns a DataFrame with columns variant, width, layer, level (bin centre), share; empty without histograms.

    Example: ``abs_r_table(runs, metrics).query("level >= 0.5").groupby("width")["share"].sum()``.
    """
    done = done_runs(runs)
    metrics = final_rows(metrics)
    rows = metrics[metrics["run_id"].isin(done["run_id"]) & (metrics["metric"] == HISTOGRAM_METRIC)
                   & (metrics["layer"] != JOINT_SCOPE)]
    counts = rows.groupby(["run_id", "layer", "level"], as_index=False, sort=False)["value"].sum()
    totals = counts.groupby(["run_id", "layer"])["value"].transform("sum")
    # A layer with fewer than two live units has no pair: its empty histogram is dropped, not divided by 0.
    counts = counts[totals > 0].assign(share=counts["value"] / totals)
    counts = counts.merge(done[["run_id", "variant", "width"]], on="run_id")
    table = counts.groupby(["variant", "width", "layer", "level"], as_index=False, sort=False)["share"].mean()
    return table.astype({"width": float}).sort_values(["width", "level"], kind="stable").reset_index(drop=True)


def _pick_widths(available, wanted: Sequence[float]) -> list[float]:
    """The wanted widths that were measured; with fewer than two of them, the smallest, a middle and the largest."""
    available = sorted(set(float(w) for w in available))
    chosen = [w for w in available if any(np.isclose(w, x) for x in wanted)]
    if len(chosen) >= 2 or len(available) < 2:
        return chosen or available
    return sorted({available[0], available[len(available) // 2], available[-1]})


def plot_abs_r(runs: pd.DataFrame, metrics: pd.DataFrame, *, widths: Sequence[float] = ABS_R_WIDTHS,
               layers: Sequence[str] | None = None, threshold: float = 0.5) -> Figure:
    """Figure B2: distributions of |r| between units, one panel per layer (rows) and variant (columns).

    Each panel overlays the chosen widths (share of pairs per bin, log scale so the tails show); a dashed
    vertical line in the width's colour marks the mean |r|, a dotted grey one the similarity threshold.

    Args:
        runs: the runs table; only status "done" rows count.
        metrics: the metrics table (rows with metric "abs_r_count").
        widths: widths to overlay (default 1/4, 1, 4; with fewer than two of them measured, the smallest, a
            middle and the largest measured width).
        layers: row order (default: as the layers first appear in the table).
        threshold: the |r| marked as the similarity threshold (default 0.5).

    Returns the figure.

    Example: ``plot_abs_r(runs, metrics).savefig("abs_r_distributions.png")``.
    """
    table = abs_r_table(runs, metrics)
    if table.empty:
        raise WidthlabError("no |r| histogram (metric 'abs_r_count') of a done run in the metrics table")
    chosen = _pick_widths(table["width"], widths)
    colours = _width_colours(chosen)
    present = list(pd.unique(table["layer"]))
    order = [name for name in (layers if layers is not None else present) if name in present]
    variants = [v for v in pd.unique(done_runs(runs)["variant"]) if v in set(table["variant"])]
    # Rows are layers and columns variants (as the paper); a single layer wraps its variants, three a row.
    columns = len(variants) if len(order) > 1 else min(3, len(variants))
    panels = [(layer, variant) for layer in order for variant in variants]
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=(3.8 * columns + 1.6, 2.7 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, columns, sharex=True, sharey=True, squeeze=False).ravel()
    levels = np.unique(table["level"].to_numpy(float))
    half = float(np.diff(levels).min()) / 2 if len(levels) > 1 else 0.01
    for index, (ax, (layer, variant)) in enumerate(zip(axes, panels)):
        for width in chosen:
            dist = table[(table["variant"] == variant) & (table["layer"] == layer)
                         & np.isclose(table["width"], width)].sort_values("level")
            if dist.empty:
                continue
            centres = dist["level"].to_numpy(float)
            edges = np.append(centres - half, centres[-1] + half)
            ax.stairs(dist["share"].to_numpy(float), edges, color=colours[width], linewidth=1.4,
                      label=width_label(width))
            ax.axvline(float((centres * dist["share"]).sum()), color=colours[width], linestyle="--", linewidth=1)
        ax.axvline(threshold, color="grey", linestyle=":", linewidth=1)
        ax.set_yscale("log")
        # No minor ticks on the shared log axis: laying out their ~20 per panel was half of this figure's time.
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        if index < columns or len(order) == 1:
            ax.set_title(str(variant))
        if index >= len(panels) - columns:
            ax.set_xlabel("|r| between units")
            ax.tick_params(labelbottom=True)
        if index % columns == 0:
            ax.set_ylabel(f"{layer}\nshare of unit pairs")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    figure_legend(fig, axes[:len(panels)], "width")
    fig.suptitle(f"|r| distributions (dashed: mean |r|, dotted: threshold {threshold:g})")
    return fig


def plot_vs_epoch(epoch_level_df: pd.DataFrame) -> Figure:
    """Figure C3: metrics along training epochs, one line per width (mean ± std over replicates).

    Rows are variants; columns are the quantities with data: accuracy (test_acc, else val_acc, from the
    training history, on a share axis), robustness, compressibility, similarity. Bands are ± std over
    replicates; the legend right of the panels says so with n per point (`spread_note`).

    Args:
        epoch_level_df: the output of `epoch_level` (run_id, variant, width, epoch and the quantities).

    Returns the figure.

    Example: ``plot_vs_epoch(epoch_level(runs, snapshots, history)).savefig("epochs.png")``.
    """
    if epoch_level_df.empty:
        raise WidthlabError("no snapshot measurements (metrics rows with an epoch) of a done run")
    accuracy = next((c for c in ("test_acc", "val_acc") if _has_data(epoch_level_df, c)), None)
    quantities = [q for q in (accuracy, *EPOCH_METRICS) if q is not None and _has_data(epoch_level_df, q)]
    if not quantities:
        raise WidthlabError(f"the snapshots hold none of {['accuracy', *EPOCH_METRICS]}")
    variants = list(pd.unique(epoch_level_df["variant"]))
    colours = _width_colours(epoch_level_df["width"])
    fig = Figure(figsize=(4.2 * len(quantities) + 2.2, 3.4 * len(variants) + 0.4), layout="constrained")
    axes = fig.subplots(len(variants), len(quantities), sharex=True, squeeze=False)
    counts = []
    for i, variant in enumerate(variants):
        for j, quantity in enumerate(quantities):
            ax = axes[i, j]
            for width, colour in colours.items():
                rows = epoch_level_df[(epoch_level_df["variant"] == variant) & (epoch_level_df["width"] == width)]
                stats = _mean_std(rows, "epoch", quantity)
                if stats.empty:
                    continue
                counts += list(stats["n"])
                ax.plot(stats.index, stats["mean"], marker=".", color=colour, label=width_label(width))
                ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"],
                                color=colour, alpha=0.15, linewidth=0)
            ax.set_title(f"({'abcd'[j]}) {TITLES[quantity]}" + (f" — {variant}" if len(variants) > 1 else ""))
            # The full labels of the width figures overflow a grid of panels; accuracy says which split it is.
            ax.set_ylabel(AXIS_LABELS[quantity] if quantity == accuracy else TITLES[quantity])
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if quantity == accuracy:
                share_axis(ax)
            if i == len(variants) - 1:
                ax.set_xlabel("Epoch")
    figure_legend(fig, axes.ravel(), "width", notes=[note_entry(spread_note(counts, mark="band"), "band")])
    return fig


def plot_params(params: pd.DataFrame) -> Axes:
    """Figure A1: trainable parameters (log scale) against width, one line per model.

    Args:
        params: a DataFrame with columns model (a label), width, params; duplicate rows are dropped.

    Returns the axes.

    Example: ``plot_params(pd.DataFrame({"model": "mlp", "width": [0.25, 1, 4], "params": [418, 1666, 6658]}))``.
    """
    missing = [c for c in ("model", "width", "params") if c not in params.columns]
    if missing:
        raise WidthlabError(f"the params table lacks columns {missing}; it needs ['model', 'width', 'params']")
    if params.empty:
        raise WidthlabError("the params table has no rows")
    ax = Figure(figsize=(6.2, 3.8), layout="constrained").subplots()
    table = params.drop_duplicates(["model", "width"]).astype({"width": float, "params": float})
    for model in pd.unique(table["model"]):
        rows = table[table["model"] == model].sort_values("width")
        ax.plot(rows["width"], rows["params"], marker="o", label=str(model))
    _width_axis(ax, table["width"])
    ax.set_yscale("log")
    ax.set_ylabel("Trainable parameters")
    ax.set_title("Parameters")
    ax.grid(alpha=0.3, which="both")
    outside_legend(ax, "model")
    return ax


def figure_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    """The figure file formats named by `formats`, in order, without repeats.

    Args:
        formats: a comma-separated string ("png,pdf") or a sequence of names from FORMATS; case and spaces are
            ignored.

    A name outside FORMATS, or no name at all, is a WidthlabError naming the value and the valid formats.

    Example: ``figure_formats("PNG, pdf") == ("png", "pdf")``.
    """
    names = formats.split(",") if isinstance(formats, str) else list(formats)
    chosen = list(dict.fromkeys(str(name).strip().lower() for name in names))
    shown = formats if isinstance(formats, str) else ",".join(map(str, formats))
    bad = [name for name in chosen if name not in FORMATS]
    if bad and bad != [""]:
        raise WidthlabError(f"unknown figure format {bad[0]!r} in {shown!r}; valid: {', '.join(FORMATS)} "
                            f"(comma-separated, e.g. {','.join(DEFAULT_FORMATS)})")
    if bad or not chosen:
        raise WidthlabError(f"no figure format in {shown!r}; give a comma-separated list of {', '.join(FORMATS)} "
                            f"(e.g. {','.join(DEFAULT_FORMATS)})")
    return tuple(chosen)


def _save(fig: Figure, stem: Path, formats: Sequence[str]) -> Path:
    """Write `fig` as stem.FORMAT for each format; returns the first file's path."""
    # Each format lays the figure out again with its own renderer's text metrics: a PDF laid out by the PNG's
    # (measured: axes up to 8 pt wider) could push its outside legend off the page.
    paths = [stem.with_name(f"{stem.name}.{fmt}") for fmt in formats]
    for path in paths:
        with files.atomic_path(path) as tmp:
            fig.savefig(tmp, **({"dpi": DPI} if path.suffix == ".png" else {}))
    # Figures made here are not registered with pyplot; clearing frees their artists at once.
    fig.clear()
    return paths[0]


def _width_figure(levels: pd.DataFrame, metric: str) -> Figure:
    return plot_vs_width(levels, metric).figure


def _params_figure(params: pd.DataFrame) -> Figure:
    return plot_params(params).figure


def _epochs_figure(runs: pd.DataFrame, snapshots: pd.DataFrame, history: pd.DataFrame | None) -> Figure:
    return plot_vs_epoch(epoch_level(runs, snapshots, history))


def figure_jobs(runs: pd.DataFrame, metrics: pd.DataFrame, *, snapshots: pd.DataFrame | None = None,
                history: pd.DataFrame | None = None, params: pd.DataFrame | None = None,
                growth_df: pd.DataFrame | None = None) -> list[tuple[str, Callable[[], Figure]]]:
    """(name, builder) of every figure `write_figures` tries, in its order; each builder returns a Figure or raises
    WidthlabError when its data is missing. Builders are picklable (partials of module functions), so worker
    processes can run them.

    Args: as `write_figures`; `growth_df` (default None: computed when drawn) gives the frivolous figure its g.
    """
    from widthlab.report.frivolous import plot_frivolous  # it draws on this module's width axis

    levels = run_level(runs, metrics)
    single = [*OVERVIEW_METRICS, "similar_fraction"]
    if _has_data(levels, "similarity_excess"):
        single.append("similarity_excess")
    jobs = [(metric, partial(_width_figure, levels, metric)) for metric in single]
    jobs += [("similarity_calibration", partial(plot_similarity_calibration, levels)),
             ("overview", partial(plot_overview, levels))]
    order = [name for name in pd.unique(final_rows(metrics)["layer"]) if name != JOINT_SCOPE]
    jobs += [("ablation_curves", partial(plot_ablation_curves, metrics, runs)),
             ("abs_r_distributions", partial(plot_abs_r, runs, metrics, layers=order)),
             ("epochs", partial(_epochs_figure, runs, metrics if snapshots is None else snapshots, history)),
             ("frivolous", partial(plot_frivolous, runs, metrics, growth_df))]
    per_layer = layer_level(runs, metrics)
    if per_layer["layer"].nunique() >= 2:
        jobs += [(f"layerwise_{metric}", partial(plot_layerwise, per_layer, metric, order))
                 for metric in LAYERWISE_METRICS]
    else:
        log.info("layerwise figures not written: fewer than two unit layers were measured")
    if params is not None:
        jobs.append(("params", partial(_params_figure, params)))
    return jobs


def _draw(name: str, build: Callable[[], Figure], out: Path, formats: Sequence[str]) -> Path | str:
    """One figure written (its first file's path), or why it was not (its data is missing)."""
    try:
        fig = build()
    except WidthlabError as error:
        return f"{name}.{formats[0]} not written: {error}"
    return _save(fig, out / name, formats)


def drawing_workers(jobs: int) -> int:
    """How many processes draw `jobs` figures: one per idle CPU this process may use (its CPUs less the 1-minute
    load average of the others), at most MAX_WORKERS and `jobs`; 1 (draw here) where none is idle or processes
    cannot be forked (forking is what makes a worker cheap: it starts with matplotlib and the tables loaded).

    Measured on a 2-CPU machine kept busy by other jobs (load 3): two workers took as long as one process and
    40% more CPU time, so only idle CPUs get a worker. The files are the same whichever number draws them.
    """
    if sys.platform != "linux" or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    cpus = len(os.sched_getaffinity(0))
    idle = cpus - max(0.0, os.getloadavg()[0] - 1.0)  # this process, busy until now, is part of the load
    return max(1, min(jobs, MAX_WORKERS, int(idle)))


class Drawing:
    """Figures being written, by worker processes while the caller does other work; `paths()` waits for them.

    With one worker (or one figure) nothing starts until `paths()`, which draws them here.
    """

    def __init__(self, jobs: list[tuple[str, Callable[[], Figure]]], out: Path, formats: Sequence[str],
                 workers: int | None = None):
        self._jobs, self._out, self._formats = jobs, out, tuple(formats)
        workers = drawing_workers(len(jobs)) if workers is None else max(1, min(int(workers), len(jobs) or 1))
        self._pool = None
        self._futures = []
        if workers > 1:
            self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
            with warnings.catch_warnings():
                # Python ≥ 3.12 warns that forking a threaded process (torch's thread pools) may deadlock a child
                # that uses those threads; the children only draw with matplotlib and exit.
                warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
                self._futures = [self._pool.submit(_draw, name, build, out, self._formats) for name, build in jobs]

    def paths(self) -> list[Path]:
        """Wait for every figure; returns each written figure's path in its first format (PNG by default)."""
        try:
            if self._pool is None:
                results = [_draw(name, build, self._out, self._formats) for name, build in self._jobs]
            else:
                results = [future.result() for future in self._futures]
        finally:
            self.close()
        for result in results:
            if isinstance(result, str):
                log.info("%s", result)
        return [result for result in results if isinstance(result, Path)]

    def close(self) -> None:
        """Stop the workers (figures not started yet are not drawn); safe to call twice."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def start_figures(runs: pd.DataFrame, metrics: pd.DataFrame, out_dir: str | Path, *,
                  snapshots: pd.DataFrame | None = None, history: pd.DataFrame | None = None,
                  params: pd.DataFrame | None = None, formats: str | Sequence[str] = DEFAULT_FORMATS,
                  workers: int | None = None, growth_df: pd.DataFrame | None = None) -> Drawing:
    """Start writing the figures of `write_figures` in worker processes and return at once; ``.paths()`` waits.

    Args: as `write_figures`.

    Example: ``drawing = start_figures(runs, metrics, "out/figures"); v = verdict(runs, metrics); drawing.paths()``
    """
    formats = figure_formats(formats)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = figure_jobs(runs, metrics, snapshots=snapshots, history=history, params=params, growth_df=growth_df)
    return Drawing(jobs, out, formats, workers)


def write_figures(runs: pd.DataFrame, metrics: pd.DataFrame, out_dir: str | Path, *,
                  snapshots: pd.DataFrame | None = None, history: pd.DataFrame | None = None,
                  params: pd.DataFrame | None = None, formats: str | Sequence[str] = DEFAULT_FORMATS,
                  workers: int | None = None, pdf: bool | None = None) -> list[Path]:
    """Write every figure the data allows, as NAME.png and NAME.pdf (or the given `formats`); returns the path of
    each figure in its first format (the PNGs by default).

    Always: accuracy, robustness, compressibility, similarity, similar_fraction, similarity_calibration and
    overview (the four metric panels as (a)–(d), like paper Figure C5). When the data holds them:
    similarity_excess (permutation null measured), ablation_curves ("zero" curves), layerwise_{robustness,
    compressibility, similarity} (two or more unit layers), abs_r_distributions (|r| histograms), epochs
    (snapshot measurements), frivolous (frivolous-unit counts vs width) and params (a params table given). A figure
    without data is skipped with a log message.

    Figures are drawn in parallel by forked worker processes where CPUs are idle (`drawing_workers`); the files are
    the same as drawn one by one here.

    Args:
        runs: the runs table; only status "done" rows count.
        metrics: the metrics table; rows with an `epoch` (if it has that column) count as snapshots.
        out_dir: the folder to write into (created if missing).
        snapshots: measurements along training, the metrics columns plus `epoch` (default None: the epoch rows
            of `metrics`, if any).
        history: per-epoch training records for the accuracy panel of epochs.png (default None).
        params: model/width/params rows for params.png (default None: not drawn).
        formats: file formats, "png,pdf" or a sequence of FORMATS (default ("png", "pdf")); a bad one is a
            WidthlabError naming it.
        workers: drawing processes (default None: `drawing_workers`, one per idle CPU; 1 draws in this process).
        pdf: deprecated; False is formats=("png",), True is ("png", "pdf").

    Example: ``write_figures(res.runs, res.metrics, "study/figures", formats="png")``.
    """
    formats = _legacy_pdf(formats, pdf)
    return start_figures(runs, metrics, out_dir, snapshots=snapshots, history=history, params=params,
                         formats=formats, workers=workers).paths()


def _legacy_pdf(formats: str | Sequence[str], pdf: bool | None) -> str | Sequence[str]:
    """The formats the deprecated `pdf=` flag names when it is given (it replaces `formats`), else `formats`."""
    if pdf is None:
        return formats
    warnings.warn("pdf= is deprecated; use formats=('png', 'pdf') or formats=('png',)", DeprecationWarning,
                  stacklevel=3)
    return ("png", "pdf") if pdf else ("png",)
