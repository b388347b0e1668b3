"""The paper's other figure types (B2, C3, C7–C10, A1), the similarity calibration and combined studies, on
synthetic tables whose trends are known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from test_report import falling, flat_value, make_tables, rising

from widthlab.errors import WidthlabError
from widthlab.report import (
    abs_r_table,
    calibration,
    combine,
    epoch_level,
    layer_level,
    plot_abs_r,
    plot_layerwise,
    plot_params,
    plot_similarity_calibration,
    plot_vs_epoch,
    plot_vs_width,
    run_level,
    verdict,
)

BIN_CENTRES = (np.arange(50) + 0.5) / 50
CALIBRATION = ("similarity_null", "similar_fraction_null", "similarity_excess")


def with_calibration(metrics, runs, *, null, excess, fraction):
    """Add the permutation-null metrics and set similar_fraction: each a function of (variant, width)."""
    width = metrics["run_id"].map(runs.set_index("run_id")["width"])
    variant = metrics["run_id"].map(runs.set_index("run_id")["variant"])
    sims = metrics[metrics["metric"] == "similarity"]
    extra = []
    for name, fn in (("similarity_null", null), ("similar_fraction_null", lambda v, w: null(v, w) / 50),
                     ("similarity_excess", excess)):
        values = [fn(v, w) if layer != "all" else 100.0
                  for v, w, layer in zip(variant[sims.index], width[sims.index], sims["layer"])]
        extra.append(sims.assign(metric=name, value=values))
    is_fraction = metrics["metric"] == "similar_fraction"
    metrics = metrics.copy()
    metrics.loc[is_fraction, "value"] = [fraction(v, w) for v, w in zip(variant[is_fraction], width[is_fraction])]
    return pd.concat([metrics, *extra], ignore_index=True)


def with_histograms(metrics, runs):
    """abs_r_count rows whose tail grows with width: counts ∝ exp(−|r| / scale), scale rising with log2(width)."""
    rows = []
    for run in runs.itertuples(index=False):
        scale = 0.08 * (1 + 0.4 * (math.log2(run.width) + 2))
        counts = np.round(5000 * np.exp(-BIN_CENTRES / scale))
        for layer in ("h1", "h2"):
            for sampling in range(2):
                rows += [dict(run_id=run.run_id, variant=run.variant, width=run.width, replicate=run.replicate,
                              layer=layer, metric="abs_r_count", perturbation="", level=c, sampling=sampling,
                              value=float(n)) for c, n in zip(BIN_CENTRES, counts)]
    return pd.concat([metrics, pd.DataFrame(rows)], ignore_index=True)


def with_snapshots(metrics, epochs=(1, 2, 3)):
    """Snapshot copies of the final rows at each epoch, the value offset by −0.01 per epoch before the last."""
    final = metrics.assign(epoch=np.nan)
    core = final[final["metric"].isin(["auc", "compressibility", "similarity"])]
    snaps = [core.assign(epoch=float(e), value=core["value"] - 0.01 * (epochs[-1] - e)) for e in epochs]
    return pd.concat([final, *snaps], ignore_index=True)


def history_of(runs, epochs=(1, 2, 3)):
    return pd.DataFrame([dict(run_id=r, epoch=e, loss=1.0 / e, train_acc=0.9, val_acc=0.5 + 0.1 * e)
                         for r in runs["run_id"] for e in epochs])


@pytest.fixture(scope="module")
def calibrated():
    """Three variants whose similarity rises; only "real" keeps rising once calibrated."""
    runs, metrics = make_tables({"real": rising, "per-unit only": rising, "chance": rising}, widths=(0.25, 1, 4))

    def null(variant, width):
        # "chance": the null rises as fast as similarity, so the excess is flat.
        return rising(width, 0) - 0.2 if variant == "chance" else 0.1

    def excess(variant, width):
        return rising(width, 0) - null(variant, width)

    def fraction(variant, width):
        # "per-unit only": similarity grows only because units are more numerous; the share of pairs falls.
        return falling(width, 0) / 10 if variant == "per-unit only" else rising(width, 0) / 10

    return runs, with_calibration(metrics, runs, null=null, excess=excess, fraction=fraction)


# Calibrated similarity ------------------------------------------------------------------------------------------

def test_verdict_judges_the_calibration_metrics_when_present(calibrated):
    runs, metrics = calibrated
    table = verdict(runs, metrics)
    assert list(table.loc[table["variant"] == "real", "metric"]) == [
        "accuracy", "robustness", "compressibility", "similarity", "similar_fraction", "similarity_excess"]
    trends = table.set_index(["variant", "metric"])["trend"]
    assert trends["real", "similarity_excess"] == "up"
    assert trends["chance", "similarity_excess"] == "flat"
    assert trends["per-unit only", "similar_fraction"] == "down"


def test_calibration_survives_only_when_all_three_rise(calibrated):
    runs, metrics = calibrated
    result = calibration(verdict(runs, metrics)).set_index("variant")
    assert list(result.columns) == ["survives", "reason"]
    assert result.loc["real", "survives"] == "yes"
    assert result.loc["per-unit only", "survives"] == "no"
    assert "similar_fraction down" in result.loc["per-unit only", "reason"]
    assert result.loc["chance", "survives"] == "no"
    assert "similarity_excess flat" in result.loc["chance", "reason"]


def test_calibration_is_not_judged_without_the_null():
    runs, metrics = make_tables({"v": rising}, widths=(0.5, 2), replicates=2)
    table = verdict(runs, metrics)
    assert "similarity_excess" not in set(table["metric"])
    row = calibration(table).iloc[0]
    assert row.survives == "not judged" and "similarity_excess not measured" in row.reason


def test_run_level_holds_the_null_and_excess(calibrated):
    runs, metrics = calibrated
    levels = run_level(runs, metrics).set_index("run_id")
    real = levels[levels["variant"] == "real"]
    np.testing.assert_allclose(real["similarity_null"], 0.1)
    np.testing.assert_allclose(real["similarity_excess"], real["similarity"] - 0.1, atol=0.02)


def test_similarity_panels_draw_the_null_dashed_per_variant(calibrated):
    runs, metrics = calibrated
    levels = run_level(runs, metrics)
    ax = plot_vs_width(levels, "similarity")
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 3
    assert "permutation null" in [t.get_text() for t in ax.get_legend().get_texts()]
    fig = plot_similarity_calibration(levels)
    assert [a.get_title() for a in fig.axes] == ["(a) Similarity", "(b) Similar fraction", "(c) Similarity excess"]
    # Without a measured null there is nothing dashed and no excess panel.
    plain_runs, plain = make_tables({"v": rising}, widths=(0.5, 2), replicates=1)
    plain_levels = run_level(plain_runs, plain)
    assert not [li for li in plot_vs_width(plain_levels, "similarity").get_lines() if li.get_linestyle() == "--"]
    assert len(plot_similarity_calibration(plain_levels).axes) == 2


# Figure B2: |r| distributions -----------------------------------------------------------------------------------

def test_abs_r_table_normalises_each_run_and_averages_replicates():
    runs, metrics = make_tables({"v": rising}, widths=(0.25, 1, 4), replicates=2)
    table = abs_r_table(runs, with_histograms(metrics, runs))
    assert list(table.columns) == ["variant", "width", "layer", "level", "share"]
    sums = table.groupby(["variant", "width", "layer"])["share"].sum()
    np.testing.assert_allclose(sums, 1.0)
    tail = table[table["level"] >= 0.5].groupby("width")["share"].sum()
    assert tail[0.25] < tail[1.0] < tail[4.0]  # the tail grows with width, as built
    assert abs_r_table(runs, metrics).empty


def test_plot_abs_r_has_a_panel_per_layer_and_variant_and_a_line_per_width():
    runs, metrics = make_tables({"a": rising, "b": flat_value}, widths=(0.25, 0.5, 1, 2, 4), replicates=1)
    fig = plot_abs_r(runs, with_histograms(metrics, runs), layers=["h2", "h1"])
    assert len(fig.axes) == 4
    # Rows are layers, columns variants; the legend sits in the top-right panel.
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["1/4", "1", "4"]
    assert "h2" in fig.axes[0].get_ylabel() and fig.axes[1].get_title() == "b"
    with pytest.raises(WidthlabError, match="abs_r_count"):
        plot_abs_r(runs, metrics)


def test_plot_abs_r_falls_back_to_measured_widths():
    runs, metrics = make_tables({"a": rising}, widths=(0.5, 2, 8), replicates=1)
    fig = plot_abs_r(runs, with_histograms(metrics, runs))
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["1/2", "2", "8"]


# Figures C7–C10: layerwise --------------------------------------------------------------------------------------

def test_plot_layerwise_draws_one_panel_per_layer_in_the_given_order():
    runs, metrics = make_tables({"a": rising, "b": falling}, widths=(0.25, 1, 4), layers=("stem", "s1", "s2"))
    fig = plot_layerwise(layer_level(runs, metrics), "robustness", ["stem", "s1", "s2"])
    assert [a.get_title() for a in fig.axes] == ["stem", "s1", "s2"]
    assert all(len(a.containers) == 2 for a in fig.axes)  # one errorbar line per variant
    assert fig.axes[0].get_legend() is not None
    with pytest.raises(WidthlabError, match="pcs"):
        plot_layerwise(layer_level(runs, metrics), "pcs")


# Figure C3: metrics along epochs --------------------------------------------------------------------------------

def test_epoch_level_averages_snapshots_and_joins_the_history():
    runs, metrics = make_tables({"v": flat_value}, widths=(0.5, 2), replicates=2, noise=0.0)
    snapshots = with_snapshots(metrics)
    table = epoch_level(runs, snapshots, history_of(runs))
    assert len(table) == 4 * 3
    at_one = table[table["epoch"] == 1]
    np.testing.assert_allclose(at_one["robustness"], 0.48)
    np.testing.assert_allclose(at_one["val_acc"], 0.6)
    # The snapshots do not leak into the final numbers.
    np.testing.assert_allclose(run_level(runs, snapshots)["robustness"], 0.5)
    assert epoch_level(runs, metrics).empty


def test_plot_vs_epoch_has_a_line_per_width_and_a_panel_per_quantity():
    runs, metrics = make_tables({"v": rising}, widths=(0.25, 1, 4), replicates=2)
    fig = plot_vs_epoch(epoch_level(runs, with_snapshots(metrics), history_of(runs)))
    assert [a.get_title() for a in fig.axes] == ["(a) Accuracy", "(b) Robustness", "(c) Compressibility",
                                                 "(d) Similarity"]
    assert "Validation" in fig.axes[0].get_ylabel()
    assert all(len(a.get_lines()) == 3 for a in fig.axes)
    assert fig.axes[0].get_xlabel() == "Epoch"
    with pytest.raises(WidthlabError, match="snapshot"):
        plot_vs_epoch(epoch_level(runs, metrics))


# Figure A1: parameters ------------------------------------------------------------------------------------------

def test_plot_params_is_log_scale_with_a_line_per_model():
    params = pd.DataFrame({"model": ["mlp"] * 3 + ["alexnet"] * 3, "width": [0.25, 1, 4] * 2,
                           "params": [418, 1666, 6658, 1e5, 1e6, 1e7]})
    ax = plot_params(params)
    assert ax.get_yscale() == "log" and len(ax.get_lines()) == 2
    with pytest.raises(WidthlabError, match="params"):
        plot_params(params.drop(columns="params"))


# Combined studies -----------------------------------------------------------------------------------------------

class Study:
    def __init__(self, runs, metrics):
        self.runs, self.metrics = runs, metrics


def test_combine_prefixes_variants_and_run_ids():
    one = Study(*make_tables({"default": rising}, widths=(0.5, 2), replicates=1))
    two = Study(*make_tables({"default": falling}, widths=(0.5, 2), replicates=1))
    runs, metrics = combine([one, two], ["glorot", "he"])
    assert list(pd.unique(runs["variant"])) == ["glorot: default", "he: default"]
    assert runs["run_id"].is_unique and runs["run_id"].str.startswith(("glorot/", "he/")).all()
    assert set(metrics["variant"]) == {"glorot: default", "he: default"}
    assert len(metrics) == len(one.metrics) + len(two.metrics)
    trends = verdict(runs, metrics, metrics_=("robustness",)).set_index("variant")["slope"]
    assert trends["glorot: default"] > 0 > trends["he: default"]


@pytest.mark.parametrize("labels,match", [(["a"], "one label per study"), (["a", "a"], "distinct"),
                                          (["a", ""], "distinct")])
def test_combine_rejects_bad_labels(labels, match):
    study = Study(*make_tables({"v": rising}, widths=(1.0,), replicates=1))
    with pytest.raises(WidthlabError, match=match):
        combine([study, study], labels)
