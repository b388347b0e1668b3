"""Report sections shared by summary.md and report.html: frivolous units, hyperparameter selection, caveats.

Each is a `Section` (a title, a paragraph, tables and bullet lines as plain text with `code` spans) that both
renderers draw, so the two reports cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from widthlab.report.figures.style import width_label
from widthlab.report.format import number
from widthlab.report.frivolous import LABELS, QUANTITIES, count_rows, effective_width

FRIVOLOUS_TEXT = (
    "Frivolous units (the AAAI 2021 version of the paper). Prunability x* is the share of a layer's units at which "
    "its zero-ablation curve first falls below 0.8 (linear interpolation; 1 if never): x*·C units are prunable, "
    "(1 − x*)·C non-prunable. Redundant units are compressibility·C, non-redundant units the principal components "
    "holding 95% of the variance. Counts are per unit layer (mean over samplings, then over layers and runs; ± std "
    "over runs); `norm` divides by the layer's size at the largest width. g is the growth per doubling of width "
    "(mean of value(2w)/value(w) of the normalised counts, 95% bootstrap interval): g = 2 grows in proportion to "
    "width; effective width (non-prunable, non-redundant) growing slower than width (g < 2) means the extra "
    "units of a wider network are frivolous."
)
SELECTION_TEXT = (
    "Every candidate was trained for every cell (variant × width × replicate); the one with the best validation "
    "accuracy was kept and measured (ties: the first candidate). `chosen` counts the replicates that chose each "
    "candidate; the candidate columns give the mean validation accuracy over replicates."
)


@dataclass
class Section:
    """A titled block: a paragraph, tables (header, rows) and bullet lines."""

    key: str
    title: str
    text: str = ""
    tables: list[tuple[list[str], list[list[str]]]] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)


def selection_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per variant × width of a study with ``grid.select``: the chosen candidates and every candidate's mean
    validation accuracy; empty without a selection.

    Columns: variant, width, chosen (e.g. ``lr=0.1 ×3``), then one column per candidate name.

    Example: two cells of width 1, each choosing lr=0.1 over lr=0.01; a study without ``grid.select`` has none:
        >>> picked = pd.DataFrame({"variant": "default", "width": 1.0, "candidate": ["lr=0.1", "lr=0.01"] * 2,
        ...                        "chosen": [1, 0, 1, 0], "val_acc": [0.9, 0.8, 0.9, 0.7]})
        >>> selection_table(picked).to_dict("records")
        [{'variant': 'default', 'width': 1.0, 'chosen': 'lr=0.1 ×2', 'lr=0.1': 0.9, 'lr=0.01': 0.75}]
        >>> selection_table(res.runs).empty
        True
    """
    if "candidate" not in runs.columns or runs["candidate"].isna().all():
        return pd.DataFrame(columns=["variant", "width", "chosen"])
    runs = runs[runs["candidate"].notna()]
    names = list(dict.fromkeys(runs["candidate"]))
    rows = []
    for (variant, width), group in runs.groupby(["variant", "width"], sort=False):
        picked = group[group["chosen"].fillna(0).astype(float) == 1]["candidate"].value_counts()
        chosen = ", ".join(f"{name} ×{picked[name]}" for name in names if name in picked) or "none yet"
        row = {"variant": variant, "width": float(width), "chosen": chosen}
        for name in names:
            values = group.loc[(group["candidate"] == name) & group["val_acc"].notna(), "val_acc"].astype(float)
            row[name] = float(values.mean()) if len(values) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def frivolous_section(runs: pd.DataFrame, metrics: pd.DataFrame, growth_df: pd.DataFrame,
                      layers: pd.DataFrame | None = None) -> Section | None:
    """The frivolous-unit counts per variant × width, g per quantity and the effective-width statement;
    `layers` is `layer_counts(runs, metrics)` when the caller has it (default None: computed here)."""
    counts = count_rows(runs, metrics, layers)
    if counts.empty:
        return None
    present = [q for q in QUANTITIES if q in counts.columns]
    header = ["variant", "width", "runs", *(f"{LABELS[q]} (norm)" for q in present)]
    rows = [[str(r["variant"]), width_label(r["width"]), str(r["runs"]),
             *(f"{number(r[q])} ± {number(r[f'{q}_std'])} ({number(r[f'{q}_norm'])})" for q in present)]
            for _, r in counts.iterrows()]
    g_rows = [[str(r.variant), LABELS.get(r.quantity, r.quantity), number(r.g),
               f"[{number(r.ci_low)}, {number(r.ci_high)}]" if np.isfinite(r.ci_low) else "n/a", r.pace,
               str(r.n_runs), r.method] for r in growth_df.itertuples(index=False)]
    bullets = [f"`{r.variant}`: effective width grows slower than width: **{r.slower}** — {r.reason}"
               for r in effective_width(growth_df).itertuples(index=False)]
    return Section("frivolous", "Frivolous units", FRIVOLOUS_TEXT,
                   [(header, rows), (["variant", "quantity", "g", "95% CI", "pace", "runs", "method"], g_rows)],
                   bullets)


def selection_section(runs: pd.DataFrame, notes: list[str] | None = None) -> Section | None:
    """The chosen hyperparameters per variant × width (studies with ``grid.select``)."""
    table = selection_table(runs)
    if table.empty:
        return None
    names = [c for c in table.columns if c not in ("variant", "width", "chosen")]
    rows = [[str(r["variant"]), width_label(r["width"]), str(r["chosen"]), *(number(r[n]) for n in names)]
            for _, r in table.iterrows()]
    return Section("selection", "Hyperparameter selection", SELECTION_TEXT,
                   [(["variant", "width", "chosen", *names], rows)], list(notes or []))
