"""The study's CKA figures (`Results.cka`): each width's layer × layer matrix (block structure) and CKA to the
widest run per layer against width, with the replicate baseline as a band. Drawn from the DataFrame alone."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from widthlab.errors import WidthlabError
from widthlab.report.cka import cka_section, done_cka, width_table
from widthlab.report.figures.style import width_axis, width_label
from widthlab.report.figures.write import FORMATS, _save
from widthlab.report.sections import Section

FIGURES = ("cka_layers", "cka_width")
MAX_PANELS = 8  # widths per row of the layer × layer figure; more are left out (the widest and narrowest kept)


def _order(layers) -> list[str]:
    return list(dict.fromkeys(layers))


def plot_cka_layers(cka: pd.DataFrame) -> Figure:
    """One heatmap per variant (rows) and width (columns): each run's layer × layer CKA, mean over replicates,
    colour scale fixed to [0, 1] (a debiased value below 0 drawn as 0)."""
    rows = cka[cka["kind"] == "layers"]
    if rows.empty:
        raise WidthlabError("no layer × layer CKA rows (measure.cka.layers)")
    variants = list(pd.unique(rows["variant"]))
    widths = sorted(set(rows["width_a"].astype(float)))
    if len(widths) > MAX_PANELS:
        widths = [*widths[:MAX_PANELS - 1], widths[-1]]
    layers = _order(rows["layer_a"])
    side = 1.0 + 0.3 * len(layers)
    fig = Figure(figsize=(max(3.0, side) * len(widths) + 1.2, max(2.8, side) * len(variants) + 0.6),
                 layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(variants), len(widths), squeeze=False))
    image = None
    for i, variant in enumerate(variants):
        for j, width in enumerate(widths):
            ax = axes[i, j]
            part = rows[(rows["variant"] == variant) & (rows["width_a"] == width)]
            if part.empty:
                ax.set_axis_off()
                continue
            matrix = part.groupby(["layer_a", "layer_b"])["cka"].mean().unstack()
            order = [name for name in layers if name in matrix.index]
            values = matrix.loc[order, order].to_numpy(dtype=float)
            image = ax.imshow(np.ma.masked_invalid(values), vmin=0.0, vmax=1.0, cmap="magma",
                              interpolation="nearest")
            ax.set_xticks(range(len(order)), order, rotation=90, fontsize="x-small")
            ax.set_yticks(range(len(order)), order if j == 0 else [], fontsize="x-small")
            n = part["run_a"].nunique()
            ax.set_title(f"{variant}: {width_label(width)}x" + (f" (mean of {n})" if n > 1 else ""),
                         fontsize="small")
    if image is not None:
        fig.colorbar(image, ax=axes, label="CKA (layer × layer)", shrink=0.8)
    return fig


def plot_cka_width(cka: pd.DataFrame) -> Figure:
    """One panel per variant: CKA of each layer to the widest run of the same replicate against width (log-2
    axis, mean ± std over replicate-matched pairs), and the replicate baseline (mean over layers; mean ± std over
    replicate pairs at each width) as a grey band."""
    if cka[cka["kind"].isin(["widths", "replicates"])].empty:
        raise WidthlabError("no widths or replicates CKA rows (measure.cka.widths / replicates)")
    variants = [v for v in pd.unique(cka["variant"]) if not cka[(cka["variant"] == v)
                                                                 & cka["kind"].isin(["widths", "replicates"])].empty]
    fig = Figure(figsize=(5.2 * len(variants), 4.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(variants), squeeze=False)[0])
    table = width_table(cka)
    for ax, variant in zip(axes, variants):
        mine = cka[(cka["variant"] == variant) & (cka["kind"] == "widths")]
        widest = float(table.loc[table["variant"] == variant, "widest"].iloc[0])
        to_widest = mine[mine["width_b"] == widest]
        for layer in _order(to_widest["layer_a"]):
            stats = to_widest[to_widest["layer_a"] == layer].groupby("width_a")["cka"].agg(
                mean="mean", std=lambda v: float(np.std(v, ddof=0)))
            ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], marker="o", capsize=2, label=layer)
        base = table[(table["variant"] == variant) & (table["baseline_pairs"] > 0)]
        if len(base):
            ax.fill_between(base["width"], base["baseline"] - base["baseline_std"],
                            base["baseline"] + base["baseline_std"], color="0.6", alpha=0.35, linewidth=0,
                            label="± std over replicate pairs")
            ax.plot(base["width"], base["baseline"], color="0.35", linestyle="--", marker="s", markersize=3,
                    label="replicate baseline (mean over layers)")
        width_axis(ax, table.loc[table["variant"] == variant, "width"])
        # Zoomed to the values (CKA of trained networks of one family is often 0.9 and up), in steps of 0.05.
        shown = [*to_widest["cka"], *(base["baseline"] - base["baseline_std"])]
        low = float(np.nanmin(shown)) if np.isfinite(shown).any() else 0.0
        ax.set_ylim(max(-0.05, np.floor((low - 0.02) / 0.05) * 0.05), 1.01)
        ax.set_ylabel(f"CKA to the widest ({width_label(widest)}x) run")
        ax.set_title(str(variant), fontsize="small")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", loc="lower right")
    return fig


def draw_cka(runs: pd.DataFrame, cka: pd.DataFrame | None, figures_dir, formats) -> tuple[Section | None, list]:
    """What `write_report` adds for a study with CKA rows: ``(section, figure paths)``; ``(None, [])`` without
    them (an earlier report's CKA figures are removed)."""
    rows = done_cka(runs, cka)
    drawn = []
    if not rows.empty:
        figures_dir.mkdir(parents=True, exist_ok=True)
        if not rows[rows["kind"] == "layers"].empty:
            drawn.append(_save(plot_cka_layers(rows), figures_dir / "cka_layers", formats))
        if not rows[rows["kind"].isin(["widths", "replicates"])].empty:
            drawn.append(_save(plot_cka_width(rows), figures_dir / "cka_width", formats))
    kept = {path.stem for path in drawn}
    for name in FIGURES:
        if name not in kept:
            for fmt in FORMATS:
                (figures_dir / f"{name}.{fmt}").unlink(missing_ok=True)
    return (cka_section(runs, cka) if drawn else None), drawn
