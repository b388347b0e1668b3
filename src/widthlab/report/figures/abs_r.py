"""Figure B2: distributions of |r| between units, from the `abs_r_count` histogram rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from widthlab.errors import WidthlabError
from widthlab.report.figures.style import figure_legend, width_colours, width_label
from widthlab.report.verdict import done_runs, final_rows
from widthlab.vocab import HISTOGRAM_METRIC, JOINT_SCOPE

ABS_R_WIDTHS = (0.25, 1.0, 4.0)


def abs_r_table(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """The |r| distribution (share of unit pairs per bin) per variant, width and unit layer (Figure B2's data).

    Each run's `abs_r_count` rows (level = bin centre) are summed over samplings and divided by their total, so
    every run's distribution sums to 1; runs are then averaged per width. Snapshot rows are left out.

    Args:
        runs: the runs table; only status "done" rows count.
        metrics: the metrics table (rows with metric "abs_r_count").

    Returns a DataFrame with columns variant, width, layer, level (bin centre), share; empty without histograms.

    Example: 50 bins per width and layer, each run's distribution summing to 1:
        >>> table = abs_r_table(runs, metrics)
        >>> table.columns.tolist(), len(table)
        (['variant', 'width', 'layer', 'level', 'share'], 100)
        >>> table.groupby("width")["share"].sum().round(6).tolist()
        [1.0, 1.0]
        >>> table.query("level >= 0.5").groupby("width")["share"].sum().round(2).tolist()  # pairs with |r| >= 0.5
        [0.51, 0.57]
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

    Example: one panel, the study's one layer and variant:
        >>> figure = plot_abs_r(runs, metrics)
        >>> figure.savefig("abs_r_distributions.png")
        >>> [(ax.get_title(), ax.get_xlabel()) for ax in figure.axes]
        [('default', '|r| between units')]
    """
    table = abs_r_table(runs, metrics)
    if table.empty:
        raise WidthlabError(f"no |r| histogram (metric {HISTOGRAM_METRIC!r}) of a done run in the metrics table")
    chosen = _pick_widths(table["width"], widths)
    colours = width_colours(chosen)
    present = list(pd.unique(table["layer"]))
    order = [name for name in (layers if layers is not None else present) if name in present]
    variants = [v for v in pd.unique(done_runs(runs)["variant"]) if v in set(table["variant"])]
    # Rows are layers and columns variants (as the paper); a single layer wraps its variants, three a row.
    columns = len(variants) if len(order) > 1 else min(3, len(variants))
    panels = [(layer, variant) for layer in order for variant in variants]
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=(3.8 * columns + 1.6, 2.7 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, columns, sharex=True, sharey=True, squeeze=False).ravel()
    bin_centres = np.unique(table["level"].to_numpy(float))
    half = float(np.diff(bin_centres).min()) / 2 if len(bin_centres) > 1 else 0.01
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
