"""Compression across widths: the compressed width (units kept at a largest accuracy drop, `compress_study`) of
each run against its width, and its growth per doubling g, as the frivolous-unit counts are reported.

If the units a wider network adds are redundant, the width it compresses to grows more slowly than its width
(g < 2); merging (which keeps what units share) should then compress further than pruning. The numbers come from
the store's ``compression`` table (`Results.compression`); g and its bootstrap interval are computed by
`widthlab.report.frivolous.growth` on the kept counts normalised by the layer's size at the variant's largest
width, so the two sections mean the same thing by g.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from widthlab.report.figures.style import width_label
from widthlab.report.format import RESAMPLES, number
from widthlab.report.frivolous import growth
from widthlab.report.sections import Section
from widthlab.report.verdict import done_runs

SETTING = ["importance", "max_drop", "calibration_examples", "split"]
KEYS = ["run_id", "variant", "width", "replicate", "layer"]
COMPRESSION_TEXT = (
    "Compressed width (`widthlab compress STUDY_DIR`): per unit layer of each done run, the fewest units that keep "
    "the test accuracy (the split the study measures on) within max_drop of the trained network's, without "
    "fine-tuning, calibrated on the training split. `prune` removes units by importance; `merge` folds each removed "
    "unit's activity, regressed on the kept units', into the next layer. Kept units are mean ± std over runs "
    "(averaged over unit layers); g is the growth per doubling of width of the kept units normalised by the layer's "
    "size at the largest width (95% bootstrap interval, as for the frivolous units): g = 2 grows in proportion to "
    "width, g < 2 means a wider network's extra units compress away."
)


def _labels(compression: pd.DataFrame) -> pd.Series:
    """A line's name per row: the method, with the parts of its setting that differ between the stored settings
    (``prune (magnitude)``, ``merge (max_drop 0.05)``)."""
    label = compression["method"].astype(str)
    parts = {"importance": lambda v: str(v), "max_drop": lambda v: f"max_drop {v:g}",
             "calibration_examples": lambda v: f"{v} calibration examples", "split": lambda v: f"on {v}"}
    varying = [c for c in SETTING if compression[c].nunique() > 1]
    if not varying:
        return label
    detail = compression[varying].apply(lambda row: ", ".join(parts[c](row[c]) for c in varying), axis=1)
    return label + " (" + detail + ")"


def compression_counts(runs: pd.DataFrame, compression: pd.DataFrame) -> pd.DataFrame:
    """One row per done run and unit layer: for each line (method, and setting when there are several) the units
    kept, and ``<line>_norm``, divided by the layer's size at the variant's largest width (`layer_counts`'s
    layout, which `growth` reads). Columns: run_id, variant, width, replicate, layer, n_units, c_max, the lines."""
    done = done_runs(runs)
    rows = compression[compression["run_id"].isin(done["run_id"])].copy()
    if rows.empty:
        return pd.DataFrame(columns=[*KEYS, "n_units", "c_max"])
    rows["line"] = _labels(rows)
    # numbers, whatever a combined report's concatenation with an empty (object) frame made of them
    rows = rows.astype({"width": float, "units_kept": float, "units_before": float})
    wide = rows.pivot_table(index=KEYS, columns="line", values="units_kept", aggfunc="mean").reset_index()
    wide.columns.name = None
    sizes = rows.groupby(KEYS)["units_before"].first().rename("n_units").reset_index()
    out = wide.merge(sizes, on=KEYS)
    largest = out[out["width"] == out.groupby("variant")["width"].transform("max")]
    c_max = largest.groupby(["variant", "layer"])["n_units"].mean().rename("c_max").reset_index()
    out = out.merge(c_max, on=["variant", "layer"], how="left")
    for line in lines(out):
        out[f"{line}_norm"] = out[line] / out["c_max"]
    return out.sort_values(["variant", "width", "replicate", "layer"]).reset_index(drop=True)


def lines(counts: pd.DataFrame) -> list[str]:
    """The lines (methods, with settings) of `compression_counts`, in a fixed order: merge before prune."""
    found = [c for c in counts.columns if c not in (*KEYS, "n_units", "c_max") and not c.endswith("_norm")]
    return sorted(found)


def compression_growth(counts: pd.DataFrame, *, resamples: int = RESAMPLES, seed: int = 0) -> pd.DataFrame:
    """g per variant and line with its 95% bootstrap interval (`frivolous.growth`'s columns; ``quantity`` is the
    line); empty without compression rows."""
    if counts.empty:
        return pd.DataFrame(columns=["variant", "quantity", "g", "ci_low", "ci_high", "pace", "n_runs", "method"])
    return growth(counts, counts, quantities=lines(counts), resamples=resamples, seed=seed, counts=counts)


def run_means(counts: pd.DataFrame) -> pd.DataFrame:
    """One row per done run: each line's kept units averaged over the run's unit layers."""
    return counts.groupby(["run_id", "variant", "width", "replicate"], as_index=False)[lines(counts)].mean()


def growth_phrase(growth_df: pd.DataFrame, variant) -> str:
    """"compressed width grows g = 1.21 [1.15, 1.30] per doubling (merge), 1.6 [...] (prune)" for `variant`."""
    mine = growth_df[(growth_df["variant"] == variant) & np.isfinite(growth_df["g"].astype(float))]
    if mine.empty:
        return "compressed width: no growth per doubling (it needs kept units at two widths or more)"
    parts = []
    for r in mine.itertuples(index=False):
        interval = f" [{number(r.ci_low)}, {number(r.ci_high)}]" if np.isfinite(r.ci_low) else " [no interval]"
        parts.append(f"{number(r.g)}{interval} per doubling ({r.quantity})" if not parts else
                     f"{number(r.g)}{interval} ({r.quantity})")
    return "compressed width grows g = " + ", ".join(parts)


def compression_section(runs: pd.DataFrame, compression: pd.DataFrame | None,
                        growth_df: pd.DataFrame | None = None, counts: pd.DataFrame | None = None,
                        seed: int = 0) -> Section | None:
    """The report's "Compression across widths" section; None when the store holds no compression rows."""
    if compression is None or compression.empty:
        return None
    counts = compression_counts(runs, compression) if counts is None else counts
    if counts.empty:
        return None
    growth_df = compression_growth(counts, seed=seed) if growth_df is None else growth_df
    names = lines(counts)
    per_run = run_means(counts)
    done = compression[compression["run_id"].isin(per_run["run_id"])].copy()
    done["line"] = _labels(done)
    accuracy = done.groupby(["run_id", "line"])[["accuracy_before", "accuracy_after"]].first().reset_index()
    rows = []
    for (variant, width), group in per_run.groupby(["variant", "width"], sort=False):
        sizes = counts[(counts["variant"] == variant) & (counts["width"] == width)]["n_units"].mean()
        cells = []
        for name in names:
            values = group[name].dropna()
            acc = accuracy[accuracy["run_id"].isin(group["run_id"]) & (accuracy["line"] == name)]
            cells.append(f"{number(values.mean())} ± {number(float(np.std(values, ddof=0)))} "
                         f"(acc {number(acc['accuracy_after'].mean())})" if len(values) else "n/a")
        before = accuracy[accuracy["run_id"].isin(group["run_id"])].drop_duplicates("run_id")["accuracy_before"]
        rows.append([str(variant), width_label(width), str(len(group)), number(sizes), number(before.mean()),
                     *cells])
    header = ["variant", "width", "runs", "units / layer", "accuracy", *(f"kept: {n}" for n in names)]
    g_rows = [[str(r.variant), str(r.quantity), number(r.g),
               f"[{number(r.ci_low)}, {number(r.ci_high)}]" if np.isfinite(r.ci_low) else "n/a", r.pace,
               str(r.n_runs), r.method] for r in growth_df.itertuples(index=False)]
    settings = compression[SETTING].drop_duplicates()
    text = COMPRESSION_TEXT + " Settings: " + "; ".join(
        f"importance {s.importance}, max_drop {s.max_drop:g}, at most {s.calibration_examples} calibration examples, "
        f"evaluated on {s.split}" for s in settings.itertuples(index=False)) + "."
    bullets = [f"`{variant}`: {growth_phrase(growth_df, variant)}" for variant in pd.unique(per_run["variant"])]
    return Section("compression", "Compression across widths", text,
                   [(header, rows), (["variant", "line", "g", "95% CI", "pace", "runs", "method"], g_rows)],
                   bullets)

