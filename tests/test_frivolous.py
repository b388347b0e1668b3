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
    short = _frame([[1, 0.95, 0.9, 0.85]]).query("level <= 0.3 or level != level")
    assert not frivolous_rows(short)["metric"].str.startswith("prun").any()


def test_prunability_refuses_bad_curves():
    with pytest.raises(WidthlabError, match="increasing levels"):
        prunability([0, 0.5, 0.5], [1, 1, 1])
    with pytest.raises(WidthlabError, match="finite"):
        prunability([0, 1], [1, np.nan])
    with pytest.raises(WidthlabError, match="theta"):
        prunability([0, 1], [1, 0], theta=0)
    with pytest.raises(WidthlabError, match="from 0 to 1"):  # never below θ up to 0.3: x* is unknown, not 0.3
        prunability([0, 0.1, 0.2, 0.3], [1, 0.95, 0.9, 0.85])


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


def _study(widths, counts_of, replicates=2, layers=("fc",)):
    """runs and metrics tables of a hand-made study: counts_of(width, replicate, layer) -> {metric: value}."""
    runs, metrics = [], []
    for w in widths:
        for r in range(replicates):
            run_id = f"v-w{w:g}-r{r}"
            runs.append(dict(run_id=run_id, variant="v", width=w, replicate=r, status="done", test_acc=0.9))
            for layer in layers:
                for metric, value in counts_of(w, r, layer).items():
                    metrics.append(dict(run_id=run_id, layer=layer, metric=metric,
                                        perturbation="" if "redundant" in metric or metric == "n_units" else "zero",
                                        level=np.nan, sampling=0, value=value))
    return pd.DataFrame(runs), pd.DataFrame(metrics)


WIDTHS = (0.25, 0.5, 1.0, 2.0, 4.0)


def test_growth_per_doubling_of_known_series():
    from widthlab.report.frivolous import effective_width, growth

    def counts(w, r, layer):
        c = 128 * w
        doublings = np.log2(w / 0.25)
        return {"n_units": c, "non_prunable_units": 10 * 1.8 ** doublings * (1 + 0.01 * r),
                "prunable_units": c - 10 * 1.8 ** doublings, "non_redundant_units": 5 * 2.0 ** doublings,
                "redundant_units": 3 * 2.5 ** doublings}

    runs, metrics = _study(WIDTHS, counts)
    table = growth(runs, metrics).set_index("quantity")
    assert table.loc["non_prunable_units", "g"] == pytest.approx(1.8)
    assert table.loc["non_redundant_units", "g"] == pytest.approx(2.0)
    assert table.loc["redundant_units", "g"] == pytest.approx(2.5)
    assert table.loc["non_prunable_units", "ci_low"] < 1.8 < table.loc["non_prunable_units", "ci_high"] < 2
    assert table.loc["non_prunable_units", "pace"] == "slower than width"
    assert table.loc["non_redundant_units", "pace"] == "as width"  # exactly 2 in every resample
    assert table.loc["redundant_units", "pace"] == "faster than width"
    assert set(table["method"]) == {"runs"}
    verdict = effective_width(growth(runs, metrics)).iloc[0]
    assert verdict["slower"] == "no" and "non-prunable g = 1.80" in verdict["reason"]


def test_growth_normalises_by_the_largest_width_and_handles_odd_steps_and_zeros():
    from widthlab.report.frivolous import growth, layer_counts

    # Widths 1 and 3: one step of log2(3) doublings; value ∝ w^log2(1.5) → g = 1.5.
    def counts(w, r, layer):
        return {"n_units": 10 * w, "non_prunable_units": 4 * w ** np.log2(1.5),
                "non_redundant_units": 0.0 if w == 1 else 7.0}

    runs, metrics = _study((1.0, 3.0), counts, replicates=1, layers=("a", "b"))
    layers = layer_counts(runs, metrics)
    assert set(layers["c_max"]) == {30.0}
    assert layers.loc[layers["width"] == 1, "non_prunable_units_norm"].iloc[0] == pytest.approx(4 / 30)
    table = growth(runs, metrics).set_index("quantity")
    assert table.loc["non_prunable_units", "g"] == pytest.approx(1.5)
    assert table.loc["non_prunable_units", "method"] == "layers"  # one replicate, two layers
    assert np.isnan(table.loc["non_redundant_units", "g"])  # 0 at the smaller width: no ratio
    assert table.loc["non_redundant_units", "pace"] == "not judged"


def test_reference_summary_of_samplings():
    from widthlab.report.frivolous import layer_counts

    runs = pd.DataFrame([dict(run_id="r", variant="v", width=1.0, replicate=0, status="done", test_acc=1.0)])
    metrics = pd.DataFrame([dict(run_id="r", layer="fc", metric=m, perturbation=p, level=np.nan, sampling=s, value=v)
                            for m, p, s, v in [("n_units", "", 0, 10), ("prunable_units", "zero", 0, 4),
                                               ("prunable_units", "zero", 1, 6), ("non_prunable_units", "zero", 0, 6),
                                               ("non_prunable_units", "zero", 1, 4)]])
    row = layer_counts(runs, metrics).iloc[0]
    assert row["prunable_units"] == 5 and row["prunable_units_ref"] == 6
    assert row["non_prunable_units"] == 5 and row["non_prunable_units_ref"] == 4


def test_load_results_derives_the_counts_of_runs_stored_before_them(tmp_path):
    import sqlite3

    from widthlab.study.config import load_config
    from widthlab.study.runner import run_study
    from widthlab.study.store import STORE_NAME, load_results

    tiny = ["grid.select=null", "grid.widths=[0.25]", "grid.replicates=1", "train.epochs=2", "data.n_train=64",
            "data.n_val=32", "data.n_test=64", "measure.samplings=2", "measure.levels=5",
            "grid.variants={'default': {}}"]
    run_study(load_config("mlp-10d", tiny), tmp_path, progress=False, report=False)
    stored = load_results(tmp_path).metrics
    with sqlite3.connect(tmp_path / STORE_NAME) as db:  # an older widthlab stored no frivolous rows
        db.execute("DELETE FROM metrics WHERE metric IN ('prunability', 'prunable_units', 'non_prunable_units', "
                   "'redundant_units', 'non_redundant_units')")
    derived = load_results(tmp_path).metrics

    def counts(frame):
        part = frame[frame["metric"].str.contains("prun|redundant_units")]
        return part.sort_values(["metric", "sampling"]).reset_index(drop=True)[["metric", "sampling", "value"]]

    assert len(counts(stored)) == 2 * 3 + 2
    pd.testing.assert_frame_equal(counts(derived), counts(stored))
