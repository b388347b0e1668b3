"""Run-level metrics against width (Figures 1, 3–5, C4–C6, C11–C14), the similarity calibration, the overview,
the layerwise panels (Figures C7–C10) and parameter counts (Figure A1)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from widthlab.errors import WidthlabError
from widthlab.report.figures.style import (
    AXIS_LABELS,
    NULLS,
    SHARE_METRICS,
    TITLES,
    ZOOMED_METRICS,
    figure_legend,
    has_data,
    mean_std,
    note_entry,
    outside_legend,
    point_counts,
    share_axis,
    spread_note,
    width_axis,
    zoom_axis,
)
from widthlab.report.verdict import RUN_LEVEL_METRICS

OVERVIEW_METRICS = ("accuracy", "robustness", "compressibility", "similarity")
LAYERWISE_METRICS = ("robustness", "compressibility", "similarity")


def _draw_variants(ax: Axes, data: pd.DataFrame, column: str) -> bool:
    """Mean ± std over replicates of `column` per variant vs width; its permutation null dashed when measured.

    Returns whether a null line was drawn.
    """
    null_column = NULLS.get(column)
    with_null = null_column is not None and has_data(data, null_column)
    for variant in pd.unique(data["variant"]):
        rows = data[data["variant"] == variant]
        stats = mean_std(rows, "width", column)
        if stats.empty:
            continue
        line = ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], marker="o", capsize=3,
                           label=str(variant))
        if with_null:
            nulls = mean_std(rows, "width", null_column)
            ax.plot(nulls.index, nulls["mean"], linestyle="--", marker="x", color=line.lines[0].get_color())
    return with_null


def plot_vs_width(run_level_df: pd.DataFrame, metric: str, ax: Axes | None = None, *, legend: bool = True) -> Axes:
    """One line per variant of a run-level metric against width: mean ± std (ddof 0) over replicates.

    For similarity and similar_fraction the permutation null (similarity_null, similar_fraction_null), when
    measured, is drawn as a dashed line in each variant's colour. The legend (right of the axes) names the
    variants, the null, and what the error bars are with the number of replicates per point (`spread_note`).
    Accuracy gets an axis zoomed to its data, labelled so (`zoom_axis`: a change of 0.02 is invisible on 0–1);
    similar_fraction gets a share axis (`share_limits`).

    Args:
        run_level_df: the output of `run_level` (variant, width, and the metric's column).
        metric: one of RUN_LEVEL_METRICS (accuracy, robustness, compressibility, similarity, similar_fraction,
            similarity_null, similar_fraction_null, similarity_excess).
        ax: the axes to draw on (default: a new figure's).
        legend: whether to draw the legend (titled "variant"); default True. Figures of several panels pass False
            and draw one legend right of all panels.

    Returns the axes.

    Example:
        >>> from widthlab.report.verdict import run_level
        >>> ax = plot_vs_width(run_level(runs, metrics), "robustness")
        >>> ax.figure.savefig("robustness.png")
        >>> ax.get_xlabel(), ax.get_ylabel()
        ('Model size factor (width)', 'Robustness (area under ablation curve)')
    """
    if metric not in RUN_LEVEL_METRICS or metric not in run_level_df.columns:
        raise WidthlabError(f"cannot plot {metric!r}; valid metrics: {list(RUN_LEVEL_METRICS)}")
    if ax is None:
        ax = Figure(figsize=(6.8, 3.8), layout="constrained").subplots()
    data = run_level_df.dropna(subset=[metric])
    with_null = _draw_variants(ax, run_level_df, metric)
    width_axis(ax, run_level_df["width"])
    ax.set_ylabel(AXIS_LABELS[metric])
    ax.set_title(TITLES[metric])
    ax.grid(alpha=0.3)
    if metric in ZOOMED_METRICS:
        zoom_axis(ax)
    elif metric in SHARE_METRICS:
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
    return spread_note(point_counts(run_level_df, ["variant", "width"], metrics))


def _panels_legend(fig: Figure, axes, run_level_df: pd.DataFrame, metrics) -> None:
    """One figure legend for panels drawn by `plot_vs_width(..., legend=False)`: variants, the permutation null
    when a panel drew one, and the error bars with n over all panels."""
    if run_level_df.dropna(subset=[m for m in metrics if m in run_level_df.columns], how="all").empty:
        return
    with_null = any(m in NULLS and has_data(run_level_df, NULLS[m]) for m in metrics)
    figure_legend(fig, axes, "variant", with_null, [note_entry(_variant_note(run_level_df, metrics))])


def plot_similarity_calibration(run_level_df: pd.DataFrame) -> Figure:
    """Similarity beside its calibration: (a) similarity, (b) similar fraction, each with the permutation null
    dashed, and (c) the excess over the null when it was measured.

    Args:
        run_level_df: the output of `run_level`.

    Returns the figure.

    Example: the study measured the null, so (c) is drawn:
        >>> from widthlab.report.verdict import run_level
        >>> figure = plot_similarity_calibration(run_level(runs, metrics))
        >>> figure.savefig("similarity_calibration.png")
        >>> [ax.get_title() for ax in figure.axes]
        ['(a) Similarity', '(b) Similar fraction', '(c) Similarity excess']
    """
    metrics = ["similarity", "similar_fraction"]
    if has_data(run_level_df, "similarity_excess"):
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

    Example:
        >>> from widthlab.report.verdict import run_level
        >>> figure = plot_overview(run_level(runs, metrics))
        >>> figure.savefig("overview.png")
        >>> [ax.get_title() for ax in figure.axes]
        ['(a) Accuracy', '(b) Robustness', '(c) Compressibility', '(d) Similarity']
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

    Example: one panel per unit layer (the mlp has one):
        >>> from widthlab.report.verdict import layer_level
        >>> figure = plot_layerwise(layer_level(runs, metrics), "robustness")
        >>> figure.savefig("layerwise_robustness.png")
        >>> [ax.get_title() for ax in figure.axes]
        ['relu1']
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
        width_axis(ax, wide["width"])
        ax.set_title(name)
        ax.grid(alpha=0.3)
    for ax in axes[len(order):]:
        ax.set_visible(False)
    for ax in axes[::columns]:
        ax.set_ylabel(AXIS_LABELS[metric])
    note = spread_note(point_counts(wide[wide["layer"].isin(order)], ["variant", "width", "layer"], [metric]))
    figure_legend(fig, axes[:len(order)], "variant", with_null, [note_entry(note)])
    fig.suptitle(f"{TITLES[metric]} per layer")
    return fig


def plot_params(params: pd.DataFrame) -> Axes:
    """Figure A1: trainable parameters (log scale) against width, one line per model.

    Args:
        params: a DataFrame with columns model (a label), width, params; duplicate rows are dropped.

    Returns the axes.

    Example:
        >>> ax = plot_params(pd.DataFrame({"model": "mlp", "width": [0.25, 1, 4], "params": [418, 1666, 6658]}))
        >>> ax.get_yscale(), ax.get_ylabel()
        ('log', 'Trainable parameters')
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
    width_axis(ax, table["width"])
    ax.set_yscale("log")
    ax.set_ylabel("Trainable parameters")
    ax.set_title("Parameters")
    ax.grid(alpha=0.3, which="both")
    outside_legend(ax, "model")
    return ax
