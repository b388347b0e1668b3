"""Figure 2: ablation curves, the fraction of labels unchanged against the share of units ablated (or the noise
level), per variant and width."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from widthlab.errors import WidthlabError
from widthlab.report.figures.style import (
    figure_legend,
    is_noise,
    note_entry,
    share_axis,
    spread_note,
    width_colours,
    width_label,
)
from widthlab.report.verdict import done_runs, final_rows
from widthlab.vocab import JOINT_SCOPE


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

    Example: the study's 3 levels at each of its two widths; at level 0 nothing changes:
        >>> table = ablation_curve_table(metrics, runs)
        >>> table.query("width == 0.5")[["level", "std"]].shape, table.query("level == 0")["unchanged"].tolist()
        ((3, 2), [1.0, 1.0])
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

    Example:
        >>> figure = plot_ablation_curves(metrics, runs)
        >>> figure.savefig("ablation_curves.png")
        >>> figure.axes[0].get_xlabel(), figure.axes[0].get_ylabel()
        ('Fraction of units ablated', 'Fraction of labels unchanged')
    """
    table = _curve_stats(_curve_runs(metrics, runs, perturbation, layer))
    noise = is_noise(perturbation)
    # Panels follow the runs table's order (the study grid's), not the alphabet.
    variants = [v for v in pd.unique(done_runs(runs)["variant"]) if v in set(table["variant"])]
    colours = width_colours(table["width"])
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
