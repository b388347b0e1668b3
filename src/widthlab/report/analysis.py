"""Figures and a summary table for one analysed model (`widthlab analyze`): one row and one figure per layer.

Works on the tidy frame `widthlab.analyze` returns (layer, metric, perturbation, level, sampling, value).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from widthlab import files

REDUNDANCY_COLUMNS = ("n_units", "pcs_needed", "compressibility", "similarity", "similar_fraction",
                      "silent_fraction", "constant_fraction")
DPI = 150


def layer_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per layer: the redundancy numbers (mean over samplings) and ``auc_<perturbation>`` mean and std.

    Example: ``layer_table(widthlab.analyze(model, x))``
    """
    scalar = frame[frame["level"].isna()]
    redundancy = scalar[scalar["metric"].isin(REDUNDANCY_COLUMNS)]
    table = redundancy.pivot_table(index="layer", columns="metric", values="value", aggfunc="mean", sort=False)
    # Every layer gets a row, the joint scope "all" too (it has robustness but no redundancy numbers).
    table = table.reindex(index=list(dict.fromkeys(frame["layer"])),
                          columns=[c for c in REDUNDANCY_COLUMNS if c in table.columns])
    auc = scalar[scalar["metric"] == "auc"]
    for perturbation, part in auc.groupby("perturbation", sort=False):
        stats = part.groupby("layer", sort=False)["value"].agg(["mean", lambda v: float(np.std(v))])
        table[f"auc_{perturbation}"] = stats["mean"]
        table[f"auc_{perturbation}_std"] = stats.iloc[:, 1]
    return table.reset_index()


def write_layer_figures(frame: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Per layer, one PNG: its perturbation curves (mean ± std over samplings) beside its |r| histogram.

    Args:
        frame: the tidy frame of `widthlab.analyze`.
        out_dir: folder for ``layer_<name>.png`` files (created if missing).

    Example: ``write_layer_figures(df, "analysis/figures")``
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for layer in dict.fromkeys(frame["layer"]):
        part = frame[frame["layer"] == layer]
        fig = Figure(figsize=(10, 3.8), layout="constrained")
        curve_ax, hist_ax = fig.subplots(1, 2)
        curves = part[part["metric"] == "unchanged"]
        for perturbation, points in curves.groupby("perturbation", sort=False):
            stats = points.groupby("level")["value"].agg(["mean", lambda v: float(np.std(v))])
            curve_ax.errorbar(stats.index, stats["mean"], yerr=stats.iloc[:, 1], marker="o", ms=3, capsize=2,
                              label=perturbation)
        curve_ax.set(xlabel="Perturbation level (share of units, or σ multiple for noise)",
                     ylabel="Fraction of labels unchanged", title=f"{layer}: robustness")
        if len(curves):
            curve_ax.legend(title="perturbation")
        hist = part[part["metric"] == "abs_r_count"]
        if len(hist):
            counts = hist.groupby("level")["value"].mean()
            width = float(np.diff(counts.index).min()) if len(counts) > 1 else 0.02
            hist_ax.bar(counts.index, counts.values, width=width, color="tab:gray")
            hist_ax.set(xlabel="|r| between unit pairs", ylabel="Pairs", title=f"{layer}: correlations", xlim=(0, 1))
        else:
            hist_ax.set_axis_off()
        path = out / f"layer_{_safe(layer)}.png"
        with files.atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=DPI)
        paths.append(path)
    return paths


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
