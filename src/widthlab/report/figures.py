"""The paper's figures from the study tables: metric vs width (Figures 1, 3–5, C5) and ablation curves (Figure 2).

Figures are built as `matplotlib.figure.Figure` objects, not through pyplot, so no display or global backend
is involved (PNG files are written by the Agg renderer) and nothing stays registered once they are saved.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from widthlab.errors import WidthlabError
from widthlab.report.verdict import JOINT_SCOPE, RUN_LEVEL_METRICS, done_runs, run_level

log = logging.getLogger(__name__)

AXIS_LABELS = {
    "accuracy": "Test accuracy (top-1)",
    "robustness": "Robustness (area under ablation curve)",
    "compressibility": "Compressibility (1 − PCs for 95% variance / units)",
    "similarity": "Similarity (similar units per unit, |r| ≥ 0.5)",
    "similar_fraction": "Similar fraction (similarity / (units − 1))",
}
TITLES = {
    "accuracy": "Accuracy",
    "robustness": "Robustness",
    "compressibility": "Compressibility",
    "similarity": "Similarity",
    "similar_fraction": "Similar fraction",
}
WIDTH_LABEL = "Model size factor (width)"
OVERVIEW_METRICS = ("accuracy", "robustness", "compressibility", "similarity")
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


def plot_vs_width(run_level_df: pd.DataFrame, metric: str, ax: Axes | None = None, *, legend: bool = True) -> Axes:
    """One line per variant of a run-level metric against width: mean ± std (ddof 0) over replicates.

    Args:
        run_level_df: the output of `run_level` (variant, width, and the metric's column).
        metric: accuracy, robustness, compressibility, similarity or similar_fraction.
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
    for variant in pd.unique(data["variant"]):
        stats = (
            data[data["variant"] == variant]
            .groupby("width")[metric]
            .agg(mean="mean", std=lambda v: float(np.std(v, ddof=0)))
            .sort_index()
        )
        ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], marker="o", capsize=3, label=str(variant))
    _width_axis(ax, run_level_df["width"])
    ax.set_ylabel(AXIS_LABELS[metric])
    ax.set_title(TITLES[metric])
    ax.grid(alpha=0.3)
    if data.empty:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="grey")
    elif legend:
        ax.legend(title="variant", fontsize="small")
    return ax


def ablation_curve_table(
    metrics: pd.DataFrame, runs: pd.DataFrame, perturbation: str = "zero", layer: str | None = None
) -> pd.DataFrame:
    """Mean fraction of labels unchanged per variant, width and level (the data of `plot_ablation_curves`).

    Each run's curve is first averaged over samplings, then over unit layers (or taken at `layer`), then
    runs are averaged per width, so every replicate weighs the same.

    Args:
        metrics: the metrics table (rows with metric "unchanged").
        runs: the runs table; only status "done" rows count.
        perturbation: which perturbation's curves (default "zero").
        layer: a single layer, or "all" for the joint scope (default None: mean over unit layers).

    Returns a DataFrame with columns variant, width, level, unchanged.

    Example: ``ablation_curve_table(metrics, runs).query("width == 1")``.
    """
    done = done_runs(runs)
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
    table = per_run.groupby(["variant", "width", "level"], as_index=False, sort=False)["value"].mean()
    return table.rename(columns={"value": "unchanged"}).sort_values(["width", "level"], kind="stable")


def plot_ablation_curves(
    metrics: pd.DataFrame, runs: pd.DataFrame, perturbation: str = "zero", layer: str | None = None
) -> Figure:
    """Figure 2: fraction of labels unchanged vs fraction of units ablated, one line per width, one panel per variant.

    Curves are averaged over samplings, unit layers (unless `layer` is given) and replicates.

    Args:
        metrics: the metrics table (rows with metric "unchanged").
        runs: the runs table; only status "done" rows count.
        perturbation: which perturbation's curves (default "zero").
        layer: a single layer, or "all" for the joint scope (default None: mean over unit layers).

    Returns the figure (not shown, not registered with pyplot).

    Example: ``plot_ablation_curves(metrics, runs).savefig("ablation_curves.png")``.
    """
    table = ablation_curve_table(metrics, runs, perturbation, layer)
    # Panels follow the runs table's order (the study grid's), not the alphabet.
    variants = [v for v in pd.unique(done_runs(runs)["variant"]) if v in set(table["variant"])]
    widths = sorted(table["width"].unique())
    low, high = np.log2(widths[0]), np.log2(widths[-1])
    norm = Normalize(low, high if high > low else low + 1)
    cmap = colormaps["viridis"]
    fig = Figure(figsize=(4.2 * len(variants), 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(variants), sharey=True))
    for ax, variant in zip(axes, variants):
        for width in widths:
            curve = table[(table["variant"] == variant) & (table["width"] == width)]
            if not curve.empty:
                ax.plot(curve["level"], curve["unchanged"], marker=".", color=cmap(norm(np.log2(width))),
                        label=width_label(width))
        ax.set_title(str(variant))
        ax.set_xlabel("Fraction of units ablated")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Fraction of labels unchanged")
    axes[-1].legend(title="width", fontsize="small")
    scope = "mean over unit layers" if layer is None else f"layer {layer}"
    fig.suptitle(f"Ablation curves ({perturbation}, {scope})")
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    # Figures made here are not registered with pyplot; clearing frees their artists at once.
    fig.clear()
    return path


def write_figures(runs: pd.DataFrame, metrics: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Write the report's PNGs: accuracy, robustness, compressibility, similarity, overview and ablation_curves.

    overview.png puts the four metric panels side by side as (a)–(d), like paper Figure C5. The ablation
    figure is skipped (with a log message) when no "zero" ablation curve was measured.

    Args:
        runs: the runs table; only status "done" rows count.
        metrics: the metrics table.
        out_dir: the folder to write into (created if missing).

    Returns the paths written.

    Example: ``write_figures(results.runs, results.metrics, "study/report")``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    levels = run_level(runs, metrics)
    paths = []
    for metric in OVERVIEW_METRICS:
        ax = plot_vs_width(levels, metric)
        paths.append(_save(ax.figure, out / f"{metric}.png"))
    overview = Figure(figsize=(10, 7.6), layout="constrained")
    for index, (ax, metric) in enumerate(zip(overview.subplots(2, 2).flat, OVERVIEW_METRICS)):
        plot_vs_width(levels, metric, ax, legend=index == 0)
        ax.set_title(f"({'abcd'[index]}) {TITLES[metric]}")
    paths.append(_save(overview, out / "overview.png"))
    try:
        curves = plot_ablation_curves(metrics, runs)
    except WidthlabError as error:
        log.info("ablation_curves.png not written: %s", error)
    else:
        paths.append(_save(curves, out / "ablation_curves.png"))
    return paths
