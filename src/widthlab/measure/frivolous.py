"""Frivolous units (the AAAI 2021 version of the paper, its official notebooks): how many of a layer's units can
be pruned, and how many are redundant, as unit counts.

- **prunability** x*: on a layer's zero-ablation curve (share of predictions unchanged vs share of units ablated,
  levels p_0 < … < p_L) the first interval [p_r, p_{r+1}] with y_r ≥ θ > y_{r+1} (θ = 0.8 by default) gives
  x* = p_r + (θ − y_r)(p_{r+1} − p_r)/(y_{r+1} − y_r), the linearly interpolated share at which the curve first
  falls below θ; x* = the last level (1) when it never falls below θ, and p_0 (0) when it starts below θ.
- **prunable units** x*·C and **non-prunable units** (1 − x*)·C of a layer of C units, per sampling.
- **redundant units** compressibility·C and **non-redundant units** pcs_needed (the number of principal
  components holding 95% of the variance), per redundancy draw.

The reference code summarises the samplings of a layer by their max (prunable) and min (non-prunable);
`widthlab.report.frivolous` reports that and the mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from widthlab.errors import WidthlabError
from widthlab.vocab import PRUNABILITY_METRICS

THETA = 0.8
# The curve x* is read from: the zero ablation (the reference's "random" ablation of units).
PRUNING_PERTURBATION = "zero"


def prunability(levels: Sequence[float] | np.ndarray, unchanged: Sequence[float] | np.ndarray,
                theta: float = THETA) -> float:
    """The share of units x* at which an ablation curve first falls below `theta` (linear interpolation).

    Args:
        levels: (L,) increasing shares of units ablated, L >= 2.
        unchanged: (L,) the curve's share of predictions unchanged at each level.
        theta: the threshold (default 0.8, as the reference code).

    Returns x* in [0, 1]: 1 when the curve never falls below `theta`. The levels must run from 0 to 1 (a
    WidthlabError otherwise; `frivolous_rows` then reports no prunability for that curve).

    Example: the curve crosses 0.8 a quarter of the way in, halfway from 1 (at 0) to 0.6 (at 0.5):
        >>> round(prunability([0, 0.5, 1], [1, 0.6, 0.2]), 12)
        0.25
    """
    x = np.asarray(levels, dtype=np.float64)
    y = np.asarray(unchanged, dtype=np.float64)
    if x.ndim != 1 or len(x) < 2 or y.shape != x.shape or np.any(np.diff(x) <= 0):
        raise WidthlabError(f"prunability needs at least two increasing levels and one value per level; got levels "
                            f"{x.tolist()} and values of shape {y.shape}")
    if x[0] != 0 or x[-1] != 1:  # a curve stopping at 0.3 that never fell below θ says nothing of x* beyond 0.3
        raise WidthlabError(f"prunability needs share levels from 0 to 1; got {x[0]:g} … {x[-1]:g}")
    if not np.all(np.isfinite(y)):
        raise WidthlabError(f"prunability needs finite curve values; got {y.tolist()}")
    if not 0 < theta <= 1:
        raise WidthlabError(f"theta must be in (0, 1]; got {theta}")
    if y[0] < theta:
        return float(x[0])
    below = np.flatnonzero((y[:-1] >= theta) & (y[1:] < theta))
    if not len(below):
        return float(x[-1])
    r = int(below[0])
    return float(x[r] + (theta - y[r]) * (x[r + 1] - x[r]) / (y[r + 1] - y[r]))


def frivolous_rows(frame: pd.DataFrame, theta: float = THETA) -> pd.DataFrame:
    """The frivolous-unit rows of a tidy `analyze` frame (same columns), derived from its own rows.

    Per unit layer (never the joint scope ``all``) and sampling: ``prunability``, ``prunable_units`` and
    ``non_prunable_units`` (perturbation ``zero``, from its ``unchanged`` curve, when the frame has one whose levels
    run from 0 to 1) and, per
    redundancy draw, ``redundant_units`` and ``non_redundant_units`` (perturbation ``""``). C is the layer's
    ``n_units``. Empty (with the frame's columns) when the frame holds neither.

    Example:
        >>> rows = frivolous_rows(analyze(model, x, samplings=2))
        >>> rows["metric"].unique().tolist()
        ['prunability', 'prunable_units', 'non_prunable_units', 'redundant_units', 'non_redundant_units']
        >>> rows.query("metric == 'prunability'")["value"].round(2).tolist()
        [0.35, 0.44]
    """
    columns = list(frame.columns)
    records = []
    units = frame[(frame["metric"] == "n_units") & frame["level"].isna()]
    size = units.groupby("layer")["value"].first().to_dict()
    curves = frame[(frame["metric"] == "unchanged") & (frame["perturbation"] == PRUNING_PERTURBATION)
                   & frame["layer"].isin(size)]
    for (layer, sampling), points in curves.groupby(["layer", "sampling"], sort=False):
        points = points.sort_values("level")
        if points["level"].iloc[0] != 0 or points["level"].iloc[-1] != 1:
            continue  # levels that stop short of all units cannot place x* (no rows rather than a wrong one)
        share = prunability(points["level"].to_numpy(), points["value"].to_numpy(), theta)
        c = float(size[layer])
        records += [(layer, metric, PRUNING_PERTURBATION, np.nan, int(sampling), value)
                    for metric, value in zip(PRUNABILITY_METRICS, (share, share * c, (1 - share) * c))]
    scalars = frame[frame["level"].isna() & (frame["perturbation"] == "")]
    wide = scalars[scalars["metric"].isin(("n_units", "compressibility", "pcs_needed"))].pivot_table(
        index=["layer", "sampling"], columns="metric", values="value", aggfunc="first", sort=False)
    if {"n_units", "compressibility", "pcs_needed"} <= set(wide.columns):
        for (layer, sampling), row in wide.iterrows():
            records += [(layer, "redundant_units", "", np.nan, int(sampling), row["compressibility"] * row["n_units"]),
                        (layer, "non_redundant_units", "", np.nan, int(sampling), float(row["pcs_needed"]))]
    out = pd.DataFrame.from_records(records, columns=["layer", "metric", "perturbation", "level", "sampling",
                                                      "value"])
    for column in columns:  # any other column of the frame (e.g. epoch) keeps one value per frame
        if column not in out.columns:
            out[column] = frame[column].iloc[0] if len(frame) else np.nan
    return out[columns].astype({c: frame[c].dtype for c in columns if c in ("layer", "metric", "perturbation")})
