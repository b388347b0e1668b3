"""Representations across widths: the study's CKA rows (`Results.cka`, ``measure.cka`` or `widthlab cka`) as a
report section, a table per width and one summary line per variant.

If a wider network is a narrower one with redundant units added, a layer of the narrower network should be about
as similar (CKA) to the same layer of the widest network as two widest networks trained from different seeds are
to each other (the replicate baseline). A widths pair is replicate-matched (replicate r with replicate r); a
number here is the CKA averaged over the variant's corresponding layers, then mean ± std over the pairs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from widthlab.report.figures.style import width_label
from widthlab.report.format import number
from widthlab.report.sections import Section
from widthlab.report.verdict import done_runs

PAIR = ["variant", "kind", "run_a", "run_b", "width_a", "width_b", "replicate_a", "replicate_b"]
CKA_TEXT = (
    "Linear CKA (debiased minibatch estimator; `measure.cka` or `widthlab cka STUDY_DIR`) between the trained "
    "runs' layers on the split the study measures on. *To widest*: each width's run against the widest run of the "
    "same replicate, corresponding layers; *replicate baseline*: two replicates of one width (different seeds), "
    "corresponding layers. Numbers are the CKA averaged over the layers of a pair, then mean ± std over pairs. A "
    "CKA to the widest close to the widest width's baseline means the narrower network's representation is what "
    "the wider one's is, up to rotation and scale; well below it means width changed the representation. A widths "
    "pair shares its seed (batch order; for the MLP also the initial weights of the narrower network's units, the "
    "wider one's first units), a replicate pair does not: part of a CKA to widest above the baseline may be that."
)


def done_cka(runs: pd.DataFrame, cka: pd.DataFrame | None) -> pd.DataFrame:
    """The CKA rows whose both runs are done (and chosen, with grid.select), widths as floats."""
    if cka is None or cka.empty:
        return pd.DataFrame(columns=[*PAIR, "layer_a", "layer_b", "cka"])
    done = set(done_runs(runs)["run_id"])
    rows = cka[cka["run_a"].isin(done) & cka["run_b"].isin(done)]
    return rows.astype({"width_a": float, "width_b": float, "cka": float})


def pair_means(cka: pd.DataFrame, kind: str) -> pd.DataFrame:
    """One row per pair of `kind` (``widths`` or ``replicates``): ``cka`` averaged over its layers, ``layers``."""
    rows = cka[cka["kind"] == kind]
    if rows.empty:
        return pd.DataFrame(columns=[*PAIR, "cka", "layers"])
    return rows.groupby(PAIR, sort=False)["cka"].agg(cka="mean", layers="count").reset_index()


def _spread(values: pd.Series) -> tuple[float, float, int]:
    values = values.dropna().astype(float)
    return (float(values.mean()) if len(values) else np.nan, float(np.std(values, ddof=0)) if len(values) else np.nan,
            len(values))


def width_table(cka: pd.DataFrame) -> pd.DataFrame:
    """Per variant and width: ``to_widest`` (mean, std, pairs) of CKA to the variant's widest run of the same
    replicate, and ``baseline`` (mean, std, pairs) of the replicate pairs at that width; NaN where there are none."""
    widths_pairs, reps = pair_means(cka, "widths"), pair_means(cka, "replicates")
    records = []
    for variant in pd.unique(cka["variant"]):
        mine = cka[cka["variant"] == variant]
        widest = float(max(mine["width_a"].max(), mine["width_b"].max()))
        for width in sorted(set(mine["width_a"]) | set(mine["width_b"])):
            to = widths_pairs[(widths_pairs["variant"] == variant) & (widths_pairs["width_a"] == width)
                              & (widths_pairs["width_b"] == widest)]["cka"]
            base = reps[(reps["variant"] == variant) & (reps["width_a"] == width)]["cka"]
            records.append((variant, width, widest, *_spread(to), *_spread(base)))
    return pd.DataFrame.from_records(records, columns=["variant", "width", "widest", "to_widest", "to_widest_std",
                                                       "to_widest_pairs", "baseline", "baseline_std",
                                                       "baseline_pairs"])


def _reference(widths: list[float], widest: float) -> float | None:
    """The width a summary line compares with the widest: 1x when measured, else the narrowest."""
    narrower = [w for w in widths if w < widest]
    if not narrower:
        return None
    return 1.0 if 1.0 in narrower else min(narrower)


def summary_line(cka: pd.DataFrame, variant) -> str:
    """E.g. "4x and 1x representations: CKA 0.93 ± 0.02 vs replicate baseline 0.95 ± 0.01 (at 4x)"."""
    table = width_table(cka[cka["variant"] == variant])
    if table.empty:
        return "no CKA rows"
    widest = float(table["widest"].iloc[0])
    at_widest = table[table["width"] == widest].iloc[0]
    baseline = (f"replicate baseline {number(at_widest['baseline'])} ± {number(at_widest['baseline_std'])} "
                f"(at {width_label(widest)}x, {int(at_widest['baseline_pairs'])} pair(s))"
                if at_widest["baseline_pairs"] else "no replicate baseline at the widest width (one replicate)")
    measured = table[table["to_widest_pairs"] > 0]
    reference = _reference(list(measured["width"]), widest)
    if reference is None:
        layers = cka[(cka["variant"] == variant) & (cka["kind"] == "layers")]
        if layers.empty:
            return baseline[0].upper() + baseline[1:]
        return f"layer × layer CKA of {layers['run_a'].nunique()} run(s) (no widths pairs); {baseline}"
    row = measured[measured["width"] == reference].iloc[0]
    return (f"{width_label(widest)}x and {width_label(reference)}x representations: CKA "
            f"{number(row['to_widest'])} ± {number(row['to_widest_std'])} ({int(row['to_widest_pairs'])} "
            f"replicate-matched pair(s), mean over layers) vs {baseline}")


def cka_section(runs: pd.DataFrame, cka: pd.DataFrame | None) -> Section | None:
    """The report's "Representations across widths (CKA)" section; None when the store holds no CKA rows of
    done runs."""
    rows = done_cka(runs, cka)
    if rows.empty:
        return None
    table = width_table(rows)
    cells = []
    for r in table.itertuples(index=False):
        to = (f"{number(r.to_widest)} ± {number(r.to_widest_std)} ({r.to_widest_pairs})" if r.to_widest_pairs
              else ("1 (itself)" if r.width == r.widest else "n/a"))
        base = f"{number(r.baseline)} ± {number(r.baseline_std)} ({r.baseline_pairs})" if r.baseline_pairs else "n/a"
        cells.append([str(r.variant), width_label(r.width), to, base])
    setting = rows[["split", "max_examples", "batch_size"]].drop_duplicates() if "split" in rows else pd.DataFrame()
    text = CKA_TEXT + (" Setting: " + "; ".join(
        f"the first {s.max_examples} examples of {s.split} in batches of {s.batch_size}"
        for s in setting.itertuples(index=False)) + "." if len(setting) else "")
    bullets = [f"`{variant}`: {summary_line(rows, variant)}" for variant in pd.unique(rows["variant"])]
    header = ["variant", "width", "CKA to widest (pairs)", "replicate baseline (pairs)"]
    return Section("cka", "Representations across widths (CKA)", text, [(header, cells)], bullets)
