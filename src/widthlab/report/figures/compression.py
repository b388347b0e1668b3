"""Compressed units against width (`widthlab compress STUDY_DIR`), beside the frivolous-unit counts the report
already has (non-prunable and non-redundant units): three estimates of a layer's effective width on one axis."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from widthlab.errors import WidthlabError
from widthlab.report.compression import compression_counts, compression_growth, compression_section, lines, run_means
from widthlab.report.figures.style import width_axis
from widthlab.report.figures.write import FORMATS, _save
from widthlab.report.sections import Section
from widthlab.report.frivolous import LABELS, run_counts

FRIVOLOUS = ("non_prunable_units", "non_redundant_units")
STYLES = ("-", "--", "-.", (0, (3, 1, 1, 1)))


def plot_compression(counts: pd.DataFrame, growth_df: pd.DataFrame, runs: pd.DataFrame | None = None,
                     metrics: pd.DataFrame | None = None) -> Figure:
    """Units kept per layer vs width on log-2 axes, one line per variant and method (mean ± std over replicates,
    g in the legend), the frivolous counts of `metrics` in grey where measured, and a dotted line growing in
    proportion to width (g = 2).

    `counts` and `growth_df` are `compression_counts` and `compression_growth`.

    Example: after ``widthlab compress`` (`compress_study`) of the tiny study:
        >>> compress_study("widthlab-runs/mlp-10d").rows.shape[0]
        8
        >>> counts = compression_counts(res.runs, load_results("widthlab-runs/mlp-10d").compression)
        >>> figure = plot_compression(counts, compression_growth(counts))
        >>> figure.savefig("compression.png")
        >>> figure.axes[0].get_ylabel()
        'Units per layer (mean over unit layers)'
    """
    if counts.empty:
        raise WidthlabError("no run has compression rows (run `widthlab compress STUDY_DIR` first)")
    names = lines(counts)
    per_run = run_means(counts)
    g = {(r.variant, r.quantity): (r.g, r.ci_low, r.ci_high) for r in growth_df.itertuples(index=False)}
    fig = Figure(figsize=(7.5, 5.2), layout="constrained")
    ax = fig.subplots()
    colours = {v: f"C{i % 10}" for i, v in enumerate(pd.unique(per_run["variant"]))}
    n = per_run.groupby(["variant", "width"]).size()
    n_text = f"n = {n.min()}" if n.min() == n.max() else f"n = {n.min()}–{n.max()}"
    for variant, part in per_run.groupby("variant", sort=False):
        for i, name in enumerate(names):  # every line drawn, styles reused past the fourth
            style = STYLES[i % len(STYLES)]
            stats = part.groupby("width")[name].agg(mean="mean", std=lambda v: float(np.std(v, ddof=0))).dropna()
            stats = stats[stats["mean"] > 0]
            if stats.empty:
                continue
            value, low, high = g.get((variant, name), (np.nan, np.nan, np.nan))
            interval = f" [{low:.2f}, {high:.2f}]" if np.isfinite(low) else ""
            label = f"{variant}: {name} (g = {value:.2f}{interval})" if np.isfinite(value) else f"{variant}: {name}"
            ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], linestyle=style, marker="o", capsize=3,
                        color=colours[variant], label=label)
    if runs is not None and metrics is not None:
        frivolous = run_counts(runs, metrics)
        frivolous = frivolous[frivolous["run_id"].isin(per_run["run_id"])]
        for quantity, marker in zip(FRIVOLOUS, ("s", "^")):
            column = f"{quantity}_units"
            if column not in frivolous.columns or not frivolous[column].gt(0).any():
                continue
            for variant, part in frivolous.groupby("variant", sort=False):
                stats = part.groupby("width")[column].agg(mean="mean", std=lambda v: float(np.std(v, ddof=0)))
                stats = stats[stats["mean"] > 0]
                ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], linestyle=":", marker=marker, capsize=2,
                            color=colours.get(variant, "0.4"), alpha=0.45, label=f"{variant}: {LABELS[quantity]}")
    sizes = counts.groupby("width")["n_units"].mean()
    ax.plot(sizes.index, sizes.to_numpy(), linestyle=":", color="0.5", label="all units (∝ width, g = 2)")
    width_axis(ax, counts["width"])
    ax.set_yscale("log", base=2)
    ax.set_ylabel("Units per layer (mean over unit layers)")
    ax.set_title(f"Compressed width: mean ± std over replicates ({n_text})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(0, -0.12), ncol=2, frameon=False)
    return fig


def draw_compression(runs: pd.DataFrame, metrics: pd.DataFrame, compression: pd.DataFrame | None, figures_dir,
                     formats, *, seed: int = 0) -> tuple[Section | None, pd.DataFrame, object]:
    """What `write_report` adds for a compressed study: ``(section, growth table, figure path)``; ``(None, empty
    table, None)`` without compression rows. The figure is one small plot, drawn here rather than by the report's
    figure workers."""
    counts = compression_counts(runs, compression) if compression is not None and len(compression) else \
        pd.DataFrame()
    if counts.empty:
        for fmt in FORMATS:  # an earlier report's figure of rows no longer stored (runs measured again)
            (figures_dir / f"compression.{fmt}").unlink(missing_ok=True)
        return None, compression_growth(counts), None
    growth_df = compression_growth(counts, seed=seed)
    section = compression_section(runs, compression, growth_df, counts, seed)
    figures_dir.mkdir(parents=True, exist_ok=True)
    path = _save(plot_compression(counts, growth_df, runs, metrics), figures_dir / "compression", formats)
    return section, growth_df, path
