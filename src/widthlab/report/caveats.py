"""When a verdict means nothing: a smoke run, a stand-in data set, runs whose accuracy is at chance.

A verdict drawn from networks that learned nothing (test accuracy indistinguishable from guessing) or from a
seconds-long smoke run says nothing about the hypothesis; the report writes why next to it instead of letting
"holds" stand alone.

- study caveats come from the config (`StudyConfig.caveats`: smoke mode and its digits stand-in write them);
- a run is **at chance** when a one-sided binomial test cannot reject that its k = round(test_acc · n) correct
  answers of n test examples were drawn at the chance rate 1/classes (p > 0.01, the exact binomial tail); the
  store keeps n and the class count per run (runs stored before it did are not checked, and say so);
- a variant whose done runs are mostly at chance gets "not meaningful: accuracy at chance"; a minority gets a note;
  runs trained on random labels (`data.random_labels`) are not tested: at chance on true test labels is what they
  should be.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from widthlab.report.verdict import done_runs

ALPHA = 0.01
CAVEAT_COLUMNS = ("variant", "caveat", "meaningful")
ALL_VARIANTS = "*"  # a caveat of the whole study


def chance_runs(runs: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Per done run: the binomial test of its test accuracy against chance (1/classes), one-sided.

    Returns a DataFrame with columns run_id, variant, test_acc, n, classes, p_value and at_chance (True when
    p > `alpha`); runs without a stored test-set size or class count get NaN p_value and at_chance False; runs
    trained on random labels are left out.

    Example: every run of the tiny study beats chance on its 32 test examples:
        >>> tests = chance_runs(res.runs)
        >>> tests.columns.tolist()
        ['run_id', 'variant', 'test_acc', 'n', 'classes', 'p_value', 'at_chance']
        >>> tests.query("at_chance").empty, tests["n"].tolist(), tests["classes"].tolist()
        (True, [32, 32, 32, 32], [2, 2, 2, 2])
    """
    # P(X ≥ k) for X ~ Binomial(n, p) is the regularised incomplete beta I_p(k, n − k + 1): scipy.stats'
    # binomtest(alternative="greater") to rounding, without importing scipy.stats (2 s).
    from scipy.special import betainc

    done = done_runs(runs)
    rows = []
    for run in done.itertuples(index=False):
        if _random_labels(getattr(run, "config", None)):
            continue  # trained on random labels: test accuracy at chance is the expected result, not a failure
        n = getattr(run, "test_examples", np.nan)
        classes = getattr(run, "num_classes", np.nan)
        acc = float(run.test_acc) if pd.notna(getattr(run, "test_acc", np.nan)) else np.nan
        p = np.nan
        if pd.notna(n) and pd.notna(classes) and int(n) > 0 and int(classes) >= 2 and np.isfinite(acc):
            k = int(round(acc * int(n)))
            p = 1.0 if k <= 0 else float(betainc(k, int(n) - k + 1, 1.0 / int(classes)))
        rows.append(dict(run_id=run.run_id, variant=run.variant, test_acc=acc, n=n, classes=classes, p_value=p,
                         at_chance=bool(np.isfinite(p) and p > alpha)))
    return pd.DataFrame(rows, columns=["run_id", "variant", "test_acc", "n", "classes", "p_value", "at_chance"])


def _random_labels(config: Any) -> bool:
    """Whether a run's stored config (a JSON string) trains on random labels."""
    if not isinstance(config, str):
        return False
    try:
        return bool(json.loads(config).get("data", {}).get("random_labels"))
    except (ValueError, AttributeError):
        return False


def caveats(runs: pd.DataFrame, config: Mapping[str, Any] | Any = None, alpha: float = ALPHA) -> pd.DataFrame:
    """Every caveat of a study's verdict: one row per (variant, caveat); variant "*" for the whole study.

    `meaningful` is False for a caveat that voids the verdict (a smoke run, accuracy at chance in most runs) and
    True for a note (a stand-in data set, a few runs at chance, runs that could not be checked).

    Example: the tiny study has none; a config's own caveat that its verdict is not meaningful voids it:
        >>> import yaml
        >>> config = yaml.safe_load(open("widthlab-runs/mlp-10d/config.yaml"))
        >>> caveats(res.runs, config).empty
        True
        >>> caveats(res.runs, {**config, "caveats": ["smoke run: its verdict is not meaningful"]}).to_dict("records")
        [{'variant': '*', 'caveat': 'smoke run: its verdict is not meaningful', 'meaningful': False}]
    """
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    rows = []
    for text in (config or {}).get("caveats", ()) or ():
        rows.append(dict(variant=ALL_VARIANTS, caveat=str(text), meaningful="not meaningful" not in str(text)))
    tests = chance_runs(runs, alpha)
    for variant, group in tests.groupby("variant", sort=False):
        checked = group[group["p_value"].notna()]
        at_chance = int(checked["at_chance"].sum())
        if len(checked) and at_chance * 2 > len(checked):
            rows.append(dict(variant=variant, meaningful=False,
                             caveat=f"not meaningful: accuracy at chance in {at_chance} of {len(checked)} runs "
                                    f"(binomial test of test accuracy against 1/{int(checked['classes'].iloc[0])}, "
                                    f"p > {alpha:g})"))
        elif at_chance:
            rows.append(dict(variant=variant, meaningful=True,
                             caveat=f"{at_chance} of {len(checked)} runs have accuracy at chance (binomial test, "
                                    f"p > {alpha:g}): {', '.join(checked.loc[checked['at_chance'], 'run_id'])}"))
        if len(checked) < len(group):
            rows.append(dict(variant=variant, meaningful=True,
                             caveat=f"{len(group) - len(checked)} runs were stored without their test-set size and "
                                    "were not checked against chance"))
    return pd.DataFrame(rows, columns=list(CAVEAT_COLUMNS))


def caveat_lines(caveats_df: pd.DataFrame, variant: str | None = None) -> list[str]:
    """The caveat texts of one variant (its own only), or of the whole study with `variant` None."""
    return [str(c) for c in caveats_df.loc[caveats_df["variant"] == (ALL_VARIANTS if variant is None else variant),
                                           "caveat"]]


def voided(caveats_df: pd.DataFrame, variant: str) -> bool:
    """Whether a caveat voids `variant`'s verdict (its own or the whole study's)."""
    rows = caveats_df[caveats_df["variant"].isin((ALL_VARIANTS, variant))]
    return bool((~rows["meaningful"].astype(bool)).any())
