"""Frivolous units against width (the AAAI 2021 version of the paper), from the counts of
`widthlab.report.frivolous`."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from widthlab.errors import WidthlabError
from widthlab.report.figures.style import width_axis
from widthlab.report.frivolous import LABELS, growth, run_counts


def plot_frivolous(runs: pd.DataFrame, metrics: pd.DataFrame, growth_df: pd.DataFrame | None = None) -> Figure:
    """Prunable / non-prunable and redundant / non-redundant units vs width, normalised by the largest width's
    layer size, on log-2 axes (as the AAAI figures), mean ± std over replicates, g in each legend entry, and a
    dotted line growing in proportion to width (g = 2) for comparison.

    Example:
        >>> figure = plot_frivolous(res.runs, res.metrics)
        >>> figure.savefig("frivolous.png")
        >>> [ax.get_title() for ax in figure.axes]
        ['Prunability: mean ± std over replicates (n = 2)', 'Redundancy: mean ± std over replicates (n = 2)']
    """
    counts = run_counts(runs, metrics)
    if counts.empty:
        raise WidthlabError("no run has frivolous-unit counts (zero ablation and redundancy rows)")
    growth_df = growth(runs, metrics) if growth_df is None else growth_df
    g = {(r.variant, r.quantity): r.g for r in growth_df.itertuples(index=False)}
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    axes = fig.subplots(1, 2)
    colours = {v: f"C{i % 10}" for i, v in enumerate(pd.unique(counts["variant"]))}
    n = counts.groupby(["variant", "width"]).size()
    n_text = f"n = {n.min()}" if n.min() == n.max() else f"n = {n.min()}–{n.max()}"
    for ax, pair, title in ((axes[0], ("non_prunable_units", "prunable_units"), "Prunability"),
                            (axes[1], ("non_redundant_units", "redundant_units"), "Redundancy")):
        for variant, part in counts.groupby("variant", sort=False):
            for quantity, style in zip(pair, ("-", "--")):
                if quantity not in part.columns or not part[quantity].gt(0).any():
                    continue
                stats = part.groupby("width")[quantity].agg(mean="mean", std=lambda v: float(np.std(v, ddof=0)))
                stats = stats[stats["mean"] > 0]
                label = f"{variant}: {LABELS[quantity]} (g = {g.get((variant, quantity), np.nan):.2f})"
                ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], linestyle=style, marker="o", capsize=3,
                            color=colours[variant], label=label)
        first = counts.groupby("width")[pair[0]].mean() if pair[0] in counts.columns else pd.Series(dtype=float)
        first = first[first > 0]
        if len(first):
            w0 = float(first.index.min())
            ws = np.array(sorted(counts["width"].unique()), dtype=float)
            ax.plot(ws, first.loc[w0] * ws / w0, linestyle=":", color="0.5", label="∝ width (g = 2)")
        width_axis(ax, counts["width"])
        ax.set_yscale("log", base=2)
        ax.set_ylabel("Units / layer size at the largest width")
        ax.set_title(f"{title}: mean ± std over replicates ({n_text})")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(0, -0.18), ncol=2, frameon=False)
    return fig
