"""Frivolous units: prunability x* on hand-made curves, the unit counts, and growth per doubling g."""

import numpy as np
import pandas as pd
import pytest

from widthlab.errors import WidthlabError
from widthlab.measure.frivolous import frivolous_rows, prunability

LEVELS = np.linspace(0, 1, 11)


def test_prunability_interpolates_the_first_crossing():
    # 0.9 at 0.2, 0.7 at 0.3: θ = 0.8 is crossed half way → 0.25.
    y = [1, 0.95, 0.9, 0.7, 0.5, 0.3, 0.2, 0.1, 0.1, 0.1, 0.1]
    assert prunability(LEVELS, y) == pytest.approx(0.25)
    # x* = p_r + (θ − y_r)(p_{r+1} − p_r)/(y_{r+1} − y_r) with a lopsided step: 0.85 → 0.45 between 0.4 and 0.5.
    y = [1, 1, 1, 0.9, 0.85, 0.45, 0.3, 0.2, 0.1, 0.0, 0.0]
    assert prunability(LEVELS, y) == pytest.approx(0.4 + (0.8 - 0.85) * 0.1 / (0.45 - 0.85))


def test_prunability_without_a_crossing_is_one():
    assert prunability(LEVELS, np.ones(11)) == 1.0
    assert prunability(LEVELS, np.linspace(1, 0.8, 11)) == 1.0  # ends exactly at θ: never *below* it


def test_prunability_exact_hits_of_theta():
    # A point exactly at θ followed by a drop: the crossing starts there, x* = that level.
    y = [1, 0.9, 0.8, 0.6, 0.4, 0.2, 0, 0, 0, 0, 0]
    assert prunability(LEVELS, y) == pytest.approx(0.2)
    # Touching θ and recovering is not a crossing; the later fall is.
    y = [1, 0.8, 0.9, 0.9, 0.9, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    assert prunability(LEVELS, y) == pytest.approx(0.4 + 0.1 * 0.1 / 0.3)


def test_prunability_takes_the_first_of_several_crossings_and_other_thetas():
    y = [1, 0.7, 0.9, 0.5, 0.2, 0, 0, 0, 0, 0, 0]
    assert prunability(LEVELS, y) == pytest.approx(0.1 * 0.2 / 0.3)  # the first fall, not the one after 0.9
    assert prunability([0, 1], [1, 0], theta=0.5) == pytest.approx(0.5)
    assert prunability([0, 0.5, 1], [0.6, 0.5, 0.0]) == 0.0  # starts below θ


def test_prunability_refuses_bad_curves():
    with pytest.raises(WidthlabError, match="increasing levels"):
        prunability([0, 0.5, 0.5], [1, 1, 1])
    with pytest.raises(WidthlabError, match="finite"):
        prunability([0, 1], [1, np.nan])
    with pytest.raises(WidthlabError, match="theta"):
        prunability([0, 1], [1, 0], theta=0)


def _frame(curves: list[list[float]], n_units=40, pcs=(10, 12), compress=(0.75, 0.7)) -> pd.DataFrame:
    rows = []
    for s, curve in enumerate(curves):
        rows += [("fc", "unchanged", "zero", float(p), s, float(v)) for p, v in zip(LEVELS, curve)]
        rows += [("all", "unchanged", "zero", float(p), s, float(v)) for p, v in zip(LEVELS, curve)]
    for s in range(len(pcs)):
        rows += [("fc", "n_units", "", np.nan, s, float(n_units)), ("fc", "pcs_needed", "", np.nan, s, float(pcs[s])),
                 ("fc", "compressibility", "", np.nan, s, compress[s])]
    return pd.DataFrame(rows, columns=["layer", "metric", "perturbation", "level", "sampling", "value"])


def test_frivolous_rows_per_sampling_and_per_draw():
    drop_at_025 = [1, 0.95, 0.9, 0.7, 0.5, 0.3, 0.2, 0.1, 0.1, 0.1, 0.1]
    flat = [1.0] * 11
    out = frivolous_rows(_frame([drop_at_025, flat]))
    assert "all" not in set(out["layer"])  # the joint scope has no C
    value = out.set_index(["metric", "sampling"])["value"]
    assert value["prunability", 0] == pytest.approx(0.25)
    assert value["prunability", 1] == 1.0
    assert value["prunable_units", 0] == pytest.approx(10.0)
    assert value["non_prunable_units", 0] == pytest.approx(30.0)
    assert value["non_prunable_units", 1] == pytest.approx(0.0)
    assert value["redundant_units", 0] == pytest.approx(30.0)  # 0.75 · 40
    assert value["redundant_units", 1] == pytest.approx(28.0)
    assert value["non_redundant_units", 0] == 10 and value["non_redundant_units", 1] == 12
    assert set(out.loc[out["metric"].str.contains("prun"), "perturbation"]) == {"zero"}
    assert set(out.loc[out["metric"].str.contains("redundant"), "perturbation"]) == {""}


def test_analyze_reports_the_unit_counts():
    import torch

    import widthlab

    model = widthlab.create_model("mlp", 0.25, input_dim=10)
    frame = widthlab.analyze(model, torch.randn(200, 10), samplings=2, null_rows=None)
    rows = frame.set_index(["metric", "sampling"])["value"]
    curve = frame[(frame["metric"] == "unchanged") & (frame["sampling"] == 1)]
    assert rows["prunability", 1] == pytest.approx(prunability(curve["level"], curve["value"]))
    assert rows["prunable_units", 1] + rows["non_prunable_units", 1] == pytest.approx(32)
    assert rows["non_redundant_units", 0] == rows["pcs_needed", 0]
    assert rows["redundant_units", 0] == pytest.approx(32 - rows["pcs_needed", 0])
