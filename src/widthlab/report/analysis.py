"""Figures and a summary table for one analysed model (`widthlab analyze`): one row and one figure per layer.

Works on the tidy frame `widthlab.analyze` returns (layer, metric, perturbation, level, sampling, value).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from widthlab import files
from widthlab.report.figures.style import (
    DPI,
    figure_legend,
    is_noise,
    note_entry,
    perturbs_weights,
    share_axis,
    spread_note,
)
from widthlab.vocab import AUC_METRIC, HISTOGRAM_METRIC

# Per-layer numbers of the table (mean over samplings), in this order; those the frame lacks get no column.
LAYER_COLUMNS = ("n_units", "pcs_needed", "compressibility", "similarity", "similar_fraction",
                 "silent_fraction", "constant_fraction", "selectivity", "unselective_fraction", "prunability",
                 "prunable_units", "non_prunable_units", "redundant_units", "non_redundant_units")
NOISE_LABEL = "noise σ (multiple of the unit's / weight's std)"
UNIT_SHARE_LABEL = "share of units ablated"
WEIGHT_SHARE_LABEL = "share of weights knocked out"


def layer_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per layer: the LAYER_COLUMNS numbers the frame holds (mean over samplings) and
    ``auc_<perturbation>`` mean and std.

    Example: the mlp's one layer, its two samplings averaged:
        >>> table = layer_table(widthlab.analyze(model, x, samplings=2))
        >>> table[["layer", "n_units", "pcs_needed"]].to_dict("records")
        [{'layer': 'relu1', 'n_units': 128.0, 'pcs_needed': 33.0}]
        >>> table.columns[-2:].tolist()
        ['auc_zero', 'auc_zero_std']
    """
    scalar = frame[frame["level"].isna()]
    numbers = scalar[scalar["metric"].isin(LAYER_COLUMNS)]
    table = numbers.pivot_table(index="layer", columns="metric", values="value", aggfunc="mean", sort=False)
    # Every layer gets a row, the joint scope "all" too (it has robustness but no redundancy numbers).
    table = table.reindex(index=list(dict.fromkeys(frame["layer"])),
                          columns=[c for c in LAYER_COLUMNS if c in table.columns])
    auc = scalar[scalar["metric"] == AUC_METRIC]
    for perturbation, part in auc.groupby("perturbation", sort=False):
        stats = part.groupby("layer", sort=False)["value"].agg(["mean", lambda v: float(np.std(v))])
        table[f"auc_{perturbation}"] = stats["mean"]
        table[f"auc_{perturbation}_std"] = stats.iloc[:, 1]
    return table.reset_index()


def layer_notes(table: pd.DataFrame, signed_layers) -> list[str]:
    """Footnote lines for `layer_table`'s printout: which layers' selectivity may lie outside [0, 1], and why.

    Selectivity (μ_k* − μ_¬k*)/(μ_k* + μ_¬k*) is bounded by [0, 1] only when activations are non-negative (after
    a ReLU); a GELU, tanh or linear layer takes negative values, so its denominator can be near 0 or negative and
    the index anywhere (3.47, −0.05): values of the formula, not errors, which users took for a bug.

    Args:
        table: the output of `layer_table`.
        signed_layers: the layers whose activations take negative values (the caller looks at them; this package
            sees only the measurements).

    Returns no line when no such layer has a selectivity.

    Example: a GELU layer measured with labels:
        >>> net = nn.Sequential(nn.Linear(10, 16), nn.GELU(), nn.Linear(16, 2))
        >>> layer_notes(layer_table(widthlab.analyze(net, (x, y), samplings=1)), ["1"])
        ['note: selectivity of 1: activations take negative values; can lie outside [0, 1] by definition (...)']
    """
    if "selectivity" not in table.columns:
        return []
    signed = set(map(str, signed_layers))
    named = [str(name) for name, value in zip(table["layer"], table["selectivity"])
             if str(name) in signed and pd.notna(value)]
    if not named:
        return []
    return [f"note: selectivity of {', '.join(named)}: activations take negative values; can lie outside [0, 1] "
            "by definition ((μ_k* − μ_¬k*)/(μ_k* + μ_¬k*) is bounded by [0, 1] only for non-negative activations; "
            "docs/metrics.md, Selectivity)"]


def _share_label(perturbations) -> str:
    """The x label of the share panel: units ablated, weights knocked out, or both."""
    weights = {perturbs_weights(p) for p in perturbations}
    return " / ".join(label for flag, label in ((False, UNIT_SHARE_LABEL), (True, WEIGHT_SHARE_LABEL))
                      if flag in weights)


def _draw_curves(ax: Axes, curves: pd.DataFrame, colours: dict[str, str]) -> list[int]:
    """Mean ± std over samplings of each perturbation's curve; returns the number of samplings per point."""
    counts = []
    for perturbation, points in curves.groupby("perturbation", sort=False):
        stats = points.groupby("level")["value"].agg(["mean", lambda v: float(np.std(v)), "size"])
        ax.errorbar(stats.index, stats["mean"], yerr=stats.iloc[:, 1], marker="o", ms=3, capsize=2,
                    label=perturbation, color=colours[perturbation])
        counts += list(stats["size"])
    return counts


def write_layer_figures(frame: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Per layer, one PNG: its perturbation curves (mean ± std over samplings) beside its |r| histogram.

    Share perturbations (levels are shares of units or weights) and noise perturbations (levels are σ
    multiples) get separate panels, each with its own x axis; one legend below the panels names the
    perturbations and says what the error bars are with the number of samplings per point.

    Args:
        frame: the tidy frame of `widthlab.analyze`.
        out_dir: folder for ``layer_<name>.png`` files (created if missing).

    Example:
        >>> write_layer_figures(widthlab.analyze(model, x, samplings=2), "analysis/figures")
        [PosixPath('analysis/figures/layer_relu1.png')]
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [_save(layer_figure(frame, layer), out / f"layer_{_safe(layer)}.png")
            for layer in dict.fromkeys(frame["layer"])]


def layer_figure(frame: pd.DataFrame, layer: str) -> Figure:
    """One layer's figure of `write_layer_figures`: a share-curve panel, a noise-curve panel (each only when
    such curves were measured; at least one curve panel) and the |r| histogram (only when measured: the joint
    scope "all" has none), with the legend below the panels.

    Example: the mlp's ``relu1``, measured with the zero ablation: a share panel and the |r| histogram:
        >>> figure = layer_figure(widthlab.analyze(model, x, samplings=2), "relu1")
        >>> [ax.get_xlabel() for ax in figure.axes]
        ['share of units ablated', '|r| between unit pairs']
    """
    part = frame[frame["layer"] == layer]
    curves = part[part["metric"] == "unchanged"]
    noise = curves["perturbation"].map(is_noise).astype(bool)
    groups = [group for group in (curves[~noise], curves[noise]) if len(group)] or [curves]
    hist = part[part["metric"] == HISTOGRAM_METRIC]
    # One colour per perturbation across panels, so the one legend fits both.
    colours = {p: f"C{i}" for i, p in enumerate(pd.unique(curves["perturbation"]))}
    # Sized by what is drawn: a panel per curve group and one for the histogram only when there is one (the
    # joint scope "all" has none), the legend below them in up to two columns per panel and a row of height per
    # legend row. A fixed three-panel width with the legend right left layer_all.png ~60% blank.
    panels = len(groups) + bool(len(hist))
    ncols = max(1, min(len(colours) + 1, 2 * panels))
    legend_rows = -(-(len(colours) + 1) // ncols)
    fig = Figure(figsize=(4.4 * panels + 0.4, 3.6 + 0.3 * (legend_rows + 1)), layout="constrained")
    axes = list(np.atleast_1d(fig.subplots(1, panels)))
    curve_axes = axes[:len(groups)]
    counts = []
    for ax, group in zip(curve_axes, groups):
        counts += _draw_curves(ax, group, colours)
        noisy = bool(len(group)) and is_noise(group["perturbation"].iloc[0])
        xlabel = NOISE_LABEL if noisy else _share_label(pd.unique(group["perturbation"])) or UNIT_SHARE_LABEL
        title = f"{layer}: robustness to noise" if noisy else f"{layer}: robustness"
        ax.set(xlabel=xlabel, ylabel="Fraction of labels unchanged", title=title)
        ax.grid(alpha=0.3)
        share_axis(ax)
    figure_legend(fig, curve_axes, "perturbation", notes=[note_entry(spread_note(counts, over="samplings"))],
                  ncols=ncols)
    if len(hist):
        hist_ax = axes[-1]
        counts = hist.groupby("level")["value"].mean()
        width = float(np.diff(counts.index).min()) if len(counts) > 1 else 0.02
        hist_ax.bar(counts.index, counts.values, width=width, color="tab:gray")
        hist_ax.set(xlabel="|r| between unit pairs", ylabel="Pairs", title=f"{layer}: correlations", xlim=(0, 1))
    return fig


def _save(fig: Figure, path: Path) -> Path:
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI)
    fig.clear()
    return path


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
