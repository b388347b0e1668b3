"""The paper's figures from the study tables.

Metric vs width (Figures 1, 3–5, C4–C6, C11–C14), ablation curves (Figure 2), |r| distributions (Figure B2),
metrics along training epochs (Figure C3), layerwise curves (Figures C7–C10) and parameter counts (Figure A1),
plus the similarity calibration (share of similar pairs, permutation null, excess).

Figures are built as `matplotlib.figure.Figure` objects, not through pyplot, so no display or global backend
is involved (files are written by the Agg and PDF renderers) and nothing stays registered once they are saved.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from widthlab import files
from widthlab.errors import WidthlabError
from widthlab.measure.perturbations import PERTURBATIONS
from widthlab.report.verdict import (
    JOINT_SCOPE,
    RUN_LEVEL_METRICS,
    done_runs,
    epoch_level,
    final_rows,
    layer_level,
    run_level,
)

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
ABS_R_METRIC = "abs_r_count"
ABS_R_WIDTHS = (0.25, 1.0, 4.0)
DPI = 150


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


def _has_data(frame: pd.DataFrame, column: str) -> bool:
    return column in frame.columns and bool(np.isfinite(frame[column].to_numpy(float)).any())


def _mean_std(values: pd.DataFrame, by: str, column: str) -> pd.DataFrame:
    """Mean and std (ddof 0) of `column` per value of `by`, sorted by it."""
    return (values.dropna(subset=[column]).groupby(by)[column]
            .agg(mean="mean", std=lambda v: float(np.std(v, ddof=0))).sort_index())


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


def _legend(ax: Axes, title: str, with_null: bool) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if with_null:
        # One grey entry explains every dashed line instead of doubling the variant entries.
        handles.append(Line2D([], [], color="grey", linestyle="--", marker="x"))
        labels.append("permutation null")
    ax.legend(handles, labels, title=title, fontsize="small")


def plot_vs_width(run_level_df: pd.DataFrame, metric: str, ax: Axes | None = None, *, legend: bool = True) -> Axes:
    """One line per variant of a run-level metric against width: mean ± std (ddof 0) over replicates.

    For similarity and similar_fraction the permutation null (similarity_null, similar_fraction_null), when
    measured, is drawn as a dashed line in each variant's colour.

    Args:
        run_level_df: the output of `run_level` (variant, width, and the metric's column).
        metric: one of RUN_LEVEL_METRICS (accuracy, robustness, compressibility, similarity, similar_fraction,
            similarity_null, similar_fraction_null, similarity_excess).
        ax: the axes to draw on (default: a new figure's).
        legend: whether to draw the legend (titled "variant"); default True.

    Returns the axes.

    Example: ``plot_vs_width(run_level(runs, metrics), "robustness").figure.savefig("robustness.png")``.
    """
    if metric not in RUN_LEVEL_METRICS or metric not in run_level_df.columns:
        raise WidthlabError(f"cannot plot {metric!r}; valid metrics: {list(RUN_LEVEL_METRICS)}")
    if ax is None:
        ax = Figure(figsize=(5, 3.8), layout="constrained").subplots()
    data = run_level_df.dropna(subset=[metric])
    with_null = _draw_variants(ax, run_level_df, metric)
    _width_axis(ax, run_level_df["width"])
    ax.set_ylabel(AXIS_LABELS[metric])
    ax.set_title(TITLES[metric])
    ax.grid(alpha=0.3)
    if metric == "similarity_excess":
        ax.axhline(0.0, color="grey", linewidth=0.8)
    if data.empty:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="grey")
    elif legend:
        _legend(ax, "variant", with_null)
    return ax


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
    fig = Figure(figsize=(4.6 * len(metrics), 3.9), layout="constrained")
    for index, (ax, metric) in enumerate(zip(np.atleast_1d(fig.subplots(1, len(metrics))), metrics)):
        plot_vs_width(run_level_df, metric, ax, legend=index == 0)
        ax.set_title(f"({'abc'[index]}) {TITLES[metric]}")
    return fig


def plot_layerwise(layer_level_df: pd.DataFrame, metric: str, layers: Sequence[str] | None = None) -> Figure:
    """Figures C7–C10: a metric against width with one panel per unit layer; variants as lines (mean ± std).

    Panels share the y axis so layers can be compared; similarity panels carry their permutation null dashed.

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
    fig = Figure(figsize=(3.7 * columns, 3.3 * rows + 0.4), layout="constrained")
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
    _legend(axes[0], "variant", with_null)
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
    per_run = per_run.merge(done[["run_id", "variant", "width"]], on="run_id")
    table = per_run.groupby(["variant", "width", "level"], as_index=False, sort=False)["value"].agg(
        unchanged="mean", std=lambda v: float(np.std(v, ddof=0)))
    return table.sort_values(["width", "level"], kind="stable")


def plot_ablation_curves(
    metrics: pd.DataFrame, runs: pd.DataFrame, perturbation: str = "zero", layer: str | None = None
) -> Figure:
    """Figure 2: fraction of labels unchanged vs fraction of units ablated, one line per width, one panel per variant.

    Curves are averaged over samplings, unit layers (unless `layer` is given) and replicates; the band is
    ± std over replicates.

    Args:
        metrics: the metrics table (rows with metric "unchanged").
        runs: the runs table; only status "done" rows count.
        perturbation: which perturbation's curves (default "zero").
        layer: a single layer, or "all" for the joint scope (default None: mean over unit layers).

    Returns the figure (not shown, not registered with pyplot).

    Example: ``plot_ablation_curves(metrics, runs).savefig("ablation_curves.png")``.
    """
    table = ablation_curve_table(metrics, runs, perturbation, layer)
    noise = perturbation in PERTURBATIONS and PERTURBATIONS[perturbation].noise
    # Panels follow the runs table's order (the study grid's), not the alphabet.
    variants = [v for v in pd.unique(done_runs(runs)["variant"]) if v in set(table["variant"])]
    colours = _width_colours(table["width"])
    fig = Figure(figsize=(4.2 * len(variants), 3.8), layout="constrained")
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
    axes[-1].legend(title="width", fontsize="small")
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
    rows = metrics[metrics["run_id"].isin(done["run_id"]) & (metrics["metric"] == ABS_R_METRIC)
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
    fig = Figure(figsize=(3.8 * columns + 0.6, 2.7 * rows + 0.6), layout="constrained")
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
    axes[columns - 1].legend(title="width", fontsize="small")
    fig.suptitle(f"|r| distributions (dashed: mean |r|, dotted: threshold {threshold:g})")
    return fig


def plot_vs_epoch(epoch_level_df: pd.DataFrame) -> Figure:
    """Figure C3: metrics along training epochs, one line per width (mean ± std over replicates).

    Rows are variants; columns are the quantities with data: accuracy (test_acc, else val_acc, from the
    training history), robustness, compressibility, similarity.

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
    fig = Figure(figsize=(4.2 * len(quantities), 3.4 * len(variants) + 0.4), layout="constrained")
    axes = fig.subplots(len(variants), len(quantities), sharex=True, squeeze=False)
    for i, variant in enumerate(variants):
        for j, quantity in enumerate(quantities):
            ax = axes[i, j]
            for width, colour in colours.items():
                rows = epoch_level_df[(epoch_level_df["variant"] == variant) & (epoch_level_df["width"] == width)]
                stats = _mean_std(rows, "epoch", quantity)
                if stats.empty:
                    continue
                ax.plot(stats.index, stats["mean"], marker=".", color=colour, label=width_label(width))
                ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"],
                                color=colour, alpha=0.15, linewidth=0)
            ax.set_title(f"({'abcd'[j]}) {TITLES[quantity]}" + (f" — {variant}" if len(variants) > 1 else ""))
            # The full labels of the width figures overflow a grid of panels; accuracy says which split it is.
            ax.set_ylabel(AXIS_LABELS[quantity] if quantity == accuracy else TITLES[quantity])
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if i == len(variants) - 1:
                ax.set_xlabel("Epoch")
    axes[0, 0].legend(title="width", fontsize="small")
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
    ax = Figure(figsize=(5, 3.8), layout="constrained").subplots()
    table = params.drop_duplicates(["model", "width"]).astype({"width": float, "params": float})
    for model in pd.unique(table["model"]):
        rows = table[table["model"] == model].sort_values("width")
        ax.plot(rows["width"], rows["params"], marker="o", label=str(model))
    _width_axis(ax, table["width"])
    ax.set_yscale("log")
    ax.set_ylabel("Trainable parameters")
    ax.set_title("Parameters")
    ax.grid(alpha=0.3, which="both")
    ax.legend(title="model", fontsize="small")
    return ax


def _save(fig: Figure, path: Path, pdf: bool) -> Path:
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI)
    if pdf:
        with files.atomic_path(path.with_suffix(".pdf")) as tmp:
            fig.savefig(tmp)
    # Figures made here are not registered with pyplot; clearing frees their artists at once.
    fig.clear()
    return path


def write_figures(runs: pd.DataFrame, metrics: pd.DataFrame, out_dir: str | Path, *,
                  snapshots: pd.DataFrame | None = None, history: pd.DataFrame | None = None,
                  params: pd.DataFrame | None = None, pdf: bool = True) -> list[Path]:
    """Write every figure the data allows, as NAME.png (and NAME.pdf beside it); returns the PNG paths.

    Always: accuracy, robustness, compressibility, similarity, similar_fraction, similarity_calibration and
    overview (the four metric panels as (a)–(d), like paper Figure C5). When the data holds them:
    similarity_excess (permutation null measured), ablation_curves ("zero" curves), layerwise_{robustness,
    compressibility, similarity} (two or more unit layers), abs_r_distributions (|r| histograms), epochs
    (snapshot measurements) and params (a params table given). A figure without data is skipped with a log
    message.

    Args:
        runs: the runs table; only status "done" rows count.
        metrics: the metrics table; rows with an `epoch` (if it has that column) count as snapshots.
        out_dir: the folder to write into (created if missing).
        snapshots: measurements along training, the metrics columns plus `epoch` (default None: the epoch rows
            of `metrics`, if any).
        history: per-epoch training records for the accuracy panel of epochs.png (default None).
        params: model/width/params rows for params.png (default None: not drawn).
        pdf: also write a PDF of each figure (default True).

    Example: ``write_figures(res.runs, res.metrics, "study/figures", snapshots=res.snapshots, history=res.history)``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    levels = run_level(runs, metrics)
    paths = []
    single = [*OVERVIEW_METRICS, "similar_fraction"]
    if _has_data(levels, "similarity_excess"):
        single.append("similarity_excess")
    for metric in single:
        paths.append(_save(plot_vs_width(levels, metric).figure, out / f"{metric}.png", pdf))
    paths.append(_save(plot_similarity_calibration(levels), out / "similarity_calibration.png", pdf))
    overview = Figure(figsize=(10, 7.6), layout="constrained")
    for index, (ax, metric) in enumerate(zip(overview.subplots(2, 2).flat, OVERVIEW_METRICS)):
        plot_vs_width(levels, metric, ax, legend=index == 0)
        ax.set_title(f"({'abcd'[index]}) {TITLES[metric]}")
    paths.append(_save(overview, out / "overview.png", pdf))

    order = [name for name in pd.unique(final_rows(metrics)["layer"]) if name != JOINT_SCOPE]
    builders = {"ablation_curves": lambda: plot_ablation_curves(metrics, runs),
                "abs_r_distributions": lambda: plot_abs_r(runs, metrics, layers=order),
                "epochs": lambda: plot_vs_epoch(epoch_level(runs, metrics if snapshots is None else snapshots,
                                                            history))}
    per_layer = layer_level(runs, metrics)
    if per_layer["layer"].nunique() >= 2:
        for metric in LAYERWISE_METRICS:
            builders[f"layerwise_{metric}"] = lambda metric=metric: plot_layerwise(per_layer, metric, order)
    else:
        log.info("layerwise figures not written: fewer than two unit layers were measured")
    if params is not None:
        builders["params"] = lambda: plot_params(params).figure
    for name, build in builders.items():
        try:
            fig = build()
        except WidthlabError as error:
            log.info("%s.png not written: %s", name, error)
        else:
            paths.append(_save(fig, out / f"{name}.png", pdf))
    return paths
