"""Texts, cells and lines shared by the written reports (summary.md, report.html) and the terminal table."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import yaml

from widthlab.report.figures.style import width_label
from widthlab.report.figures.width import OVERVIEW_METRICS
from widthlab.report.verdict import done_runs

RESAMPLES = 1000
FIGURE_DIR = "figures"
# Error bars and bands are ± std over replicates; each figure's legend gives n, the replicates per point.
SPREAD = "mean ± std over replicates, n in the legend"
FIGURE_CAPTIONS = {
    "overview.png": f"Overview: (a) accuracy, (b) robustness, (c) compressibility, (d) similarity ({SPREAD}; "
                    "permutation null dashed when measured)",
    "accuracy.png": f"Accuracy vs width ({SPREAD}; paper Figure 1)",
    "ablation_curves.png": "Ablation curves, zero ablation, mean over unit layers (band: ± std over replicates, "
                           "n in the legend; paper Figure 2)",
    "robustness.png": f"Robustness vs width ({SPREAD}; paper Figure 3)",
    "compressibility.png": f"Compressibility vs width ({SPREAD}; paper Figure 4)",
    "similarity.png": f"Similarity vs width, permutation null dashed when measured ({SPREAD}; paper Figure 5)",
    "similar_fraction.png": f"Share of similar unit pairs vs width ({SPREAD})",
    "similarity_excess.png": f"Similarity excess over the permutation null vs width ({SPREAD})",
    "similarity_calibration.png": "Similarity beside its calibration: similar fraction and excess over the null "
                                  f"({SPREAD})",
    "layerwise_robustness.png": f"Robustness per layer ({SPREAD}; paper Figures C7–C10 a)",
    "layerwise_compressibility.png": f"Compressibility per layer ({SPREAD}; paper Figures C7–C10 b)",
    "layerwise_similarity.png": f"Similarity per layer ({SPREAD}; paper Figures C7–C10 c)",
    "abs_r_distributions.png": "Distributions of |r| between units per layer, mean over replicates "
                               "(paper Figure B2)",
    "epochs.png": "Metrics along training epochs (band: ± std over replicates, n in the legend; paper Figure C3)",
    "params.png": "Trainable parameters vs width (paper Figure A1)",
    "frivolous.png": ("Frivolous units vs width (AAAI 2021 version): prunable / non-prunable and redundant / "
                      "non-redundant units per layer, normalised by the layer's size at the largest width, log-2 "
                      "axes, mean ± std over replicates, g = growth per doubling"),
    "compression.png": ("Compressed width vs width: units per layer kept at max_drop by each method (log-2 axes, "
                        "mean ± std over replicates, g = growth per doubling [95% CI]), beside the non-prunable and "
                        "non-redundant units (dotted) and all units (g = 2)"),
    "cka_layers.png": ("Layer × layer CKA of each width's run (mean over replicates): the network's block "
                       "structure, 0 dark to 1 bright"),
    "cka_width.png": ("CKA of each layer to the widest run of the same replicate vs width (log-2 axis, mean ± std "
                      "over replicates), replicate baseline (two seeds, one width) as a grey band"),
}
CALIBRATION_TEXT = (
    "Similarity counts similar units per unit, so it can grow with width while the share of similar pairs "
    "does not, and chance correlations inflate it when rows are few. The similarity trend survives calibration "
    "when similarity, similar_fraction (share of similar pairs) and similarity_excess (observed − permutation "
    "null on the same rows) are all up; it is not judged when any of them was not measured."
)
VERDICT_TEXT = (
    "Slope of each run's value on log2(width), i.e. the change per doubling of width, with a 95% bootstrap "
    "interval ({resamples} resamples, seed {seed}). Trend: up if the interval is above 0, down if below, flat "
    "otherwise. Method: `runs` resamples runs within each width; `layers` resamples unit layers (one replicate "
    "per width); `none` means no interval could be drawn (fewer than two widths, or one replicate and fewer than "
    "two layers), so the trend is reported flat."
)
HYPOTHESIS_TEXT = (
    "The robustness-redundancy hypothesis holds for a variant when accuracy is not down and robustness, "
    "compressibility or similarity is up."
)
# Statuses always listed in the census, even at zero; others appear only when present.
MAIN_STATUSES = ("done", "failed", "diverged")
VERDICT_HEADER = ["variant", "metric", "slope/doubling", "95% CI", "trend", "runs", "method"]
# Shown in the results table only when measured (the permutation null and selectivity are optional).
OPTIONAL_RESULTS = ("similarity_null", "similarity_excess", "selectivity")


def number(value: float, signed: bool = False) -> str:
    """Three significant digits, "n/a" for None, NaN or inf; with `signed`, always a sign."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.3g}" if signed else f"{value:.3g}"


def interval(low: float, high: float) -> str:
    """A 95% interval as "[low, high]" with signs, or "n/a"."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "n/a"
    return f"[{number(low, True)}, {number(high, True)}]"


def verdict_rows(verdict_df: pd.DataFrame) -> list[list[str]]:
    """The verdict's rows as text cells in VERDICT_HEADER's order."""
    return [
        [str(r.variant), str(r.metric), number(r.slope, True), interval(r.ci_low, r.ci_high), str(r.trend),
         str(r.n_runs), str(r.method)]
        for r in verdict_df.itertuples(index=False)
    ]


def _count_range(counts: pd.Series) -> str:
    """Counts per cell as "3", or "2–3" where cells differ; "none" without cells."""
    if counts.empty:
        return "none"
    return str(counts.min()) if counts.min() == counts.max() else f"{counts.min()}–{counts.max()}"


def _selection_cell_text(runs: pd.DataFrame) -> str | None:
    """What a variant × width cell's runs are under grid.select, e.g. "3 replicates × 4 lr candidates; 3
    measured: each replicate's chosen candidate"; None without a selection.

    Why: with a selection a cell holds replicates × candidates trainings, and "12 (replicates 0, 1, 2)" read as
    12 replicates. The candidates' setting names are the left sides of their labels ("lr=0.1,batch_size=16").
    """
    if "candidate" not in runs.columns or runs["candidate"].isna().all():
        return None
    picked = runs[runs["candidate"].notna()]
    cells = picked.groupby(["variant", "width"])
    names = dict.fromkeys(part.split("=", 1)[0] for label in pd.unique(picked["candidate"])
                          for part in str(label).split(","))
    done = picked["status"] == "done"
    chosen = done & (picked["chosen"].astype(float) == 1)
    measured = done.groupby([picked["variant"], picked["width"]]).sum()
    kept = chosen.groupby([picked["variant"], picked["width"]]).sum()
    text = (f"{_count_range(cells['replicate'].nunique())} replicates × "
            f"{_count_range(cells['candidate'].nunique())} {'/'.join(names)} candidates; ")
    if measured.equals(kept):
        return text + f"{_count_range(measured)} measured: each replicate's chosen candidate"
    return text + f"{_count_range(measured)} measured, of which the {_count_range(kept)} chosen enter the results"


def census(runs: pd.DataFrame) -> list[str]:
    """The "what was run" lines (all runs, whatever their status), without list markers."""
    variants = ", ".join(f"`{v}`" for v in pd.unique(runs["variant"])) or "none"
    widths = ", ".join(width_label(w) for w in sorted(runs["width"].astype(float).unique())) or "none"
    cell_text = _count_range(runs.groupby(["variant", "width"]).size())
    replicates = ", ".join(str(r) for r in sorted(runs["replicate"].unique()))
    selection = _selection_cell_text(runs)
    counts = runs["status"].value_counts()
    statuses = [*MAIN_STATUSES, *sorted(set(counts.index) - set(MAIN_STATUSES))]
    status_text = ", ".join(f"{int(counts.get(s, 0))} {s}" for s in statuses)
    what = selection or f"replicates {replicates or 'none'}"
    lines = [
        f"Variants: {variants}",
        f"Widths: {widths}",
        f"Runs per variant × width: {cell_text} ({what})",
        f"Runs: {len(runs)} in all — {status_text}",
    ]
    if "seconds" in runs.columns:
        seconds = float(done_runs(runs)["seconds"].sum())
        lines.append(f"Run time of the done runs: {seconds:.1f} s")
    return lines


def results_columns(run_level_df: pd.DataFrame) -> list[str]:
    """The run-level quantities of the results table: the overview four, similar_fraction, and the permutation
    null and excess when measured."""
    extra = [c for c in OPTIONAL_RESULTS if c in run_level_df.columns and run_level_df[c].notna().any()]
    return [*OVERVIEW_METRICS, "similar_fraction", *extra]


def results_rows(run_level_df: pd.DataFrame) -> list[list[str]]:
    """Mean ± std (ddof 0) over the done runs of each variant × width, in `results_columns` order."""
    rows = []
    columns = results_columns(run_level_df)
    for variant in pd.unique(run_level_df["variant"]):
        for width, group in run_level_df[run_level_df["variant"] == variant].groupby("width"):
            cells = []
            for metric in columns:
                values = group[metric].dropna().to_numpy(float)
                cells.append(
                    f"{number(values.mean())} ± {number(np.std(values, ddof=0))}" if len(values) else "n/a"
                )
            rows.append([str(variant), width_label(width), str(len(group)), *cells])
    return rows


def config_text(config: Any) -> str:
    """A resolved config (mapping, or pydantic model) as YAML; values YAML cannot hold become strings."""
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    plain = json.loads(json.dumps(config, default=str))
    return yaml.safe_dump(plain, sort_keys=False, allow_unicode=True).rstrip()
