"""The paper's other figure types (B2, C3, C7–C10, A1), the similarity calibration and combined studies, on
synthetic tables whose trends are known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from synthetic_results import (
    BIN_CENTRES,
    falling,
    flat_value,
    history_of,
    make_tables,
    rising,
    with_calibration,
    with_histograms,
    with_snapshots,
)
from torch import nn

from widthlab.errors import WidthlabError
from widthlab.measure import analyze
from widthlab.report import (
    abs_r_table,
    calibration,
    combine,
    epoch_level,
    layer_level,
    plot_ablation_curves,
    plot_abs_r,
    plot_layerwise,
    plot_params,
    plot_similarity_calibration,
    plot_vs_epoch,
    plot_vs_width,
    run_level,
    verdict,
)
from widthlab.report.analysis import (
    NOISE_LABEL,
    UNIT_SHARE_LABEL,
    WEIGHT_SHARE_LABEL,
    layer_figure,
    layer_table,
    write_layer_figures,
)
from widthlab.report.figures import plot_overview, share_limits, spread_note
from widthlab.report.figures.style import AXIS_LABELS, zoomed_limits

CALIBRATION = ("similarity_null", "similar_fraction_null", "similarity_excess")


def legends(fig):
    """The figure's legends and its axes' legends."""
    return [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]


def legend_texts(fig):
    return [t.get_text() for legend in legends(fig) for t in legend.get_texts()]


def assert_legends_clear(fig):
    """Every legend lies inside the figure and covers no plotted point, error bar cap or bar."""
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    found = legends(fig)
    assert found
    for legend in found:
        box = legend.get_window_extent()
        assert fig.bbox.x0 - 1 <= box.x0 and box.x1 <= fig.bbox.x1 + 1
        assert fig.bbox.y0 - 1 <= box.y0 and box.y1 <= fig.bbox.y1 + 1
        for ax in fig.axes:
            if not ax.get_visible():
                continue
            for line in ax.get_lines():
                xy = np.asarray(line.get_xydata(), float)
                xy = xy[np.isfinite(xy).all(axis=1)]
                if len(xy):
                    x, y = line.get_transform().transform(xy).T
                    covered = (box.x0 <= x) & (x <= box.x1) & (box.y0 <= y) & (y <= box.y1)
                    assert not covered.any(), (legend.get_title().get_text(), ax.get_title())
            for patch in ax.patches:
                assert not box.overlaps(patch.get_window_extent()), ax.get_title()


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
    run_level_df = run_level(runs, metrics).set_index("run_id")
    real = run_level_df[run_level_df["variant"] == "real"]
    np.testing.assert_allclose(real["similarity_null"], 0.1)
    np.testing.assert_allclose(real["similarity_excess"], real["similarity"] - 0.1, atol=0.02)


def test_similarity_panels_draw_the_null_dashed_per_variant(calibrated):
    runs, metrics = calibrated
    run_level_df = run_level(runs, metrics)
    ax = plot_vs_width(run_level_df, "similarity")
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 3
    assert "permutation null" in [t.get_text() for t in ax.get_legend().get_texts()]
    fig = plot_similarity_calibration(run_level_df)
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
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["1/4", "1", "4"]
    assert "h2" in fig.axes[0].get_ylabel() and fig.axes[1].get_title() == "b"
    with pytest.raises(WidthlabError, match="abs_r_count"):
        plot_abs_r(runs, metrics)


def test_plot_abs_r_falls_back_to_measured_widths():
    runs, metrics = make_tables({"a": rising}, widths=(0.5, 2, 8), replicates=1)
    fig = plot_abs_r(runs, with_histograms(metrics, runs))
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["1/2", "2", "8"]


# Figures C7–C10: layerwise --------------------------------------------------------------------------------------

def test_plot_layerwise_draws_one_panel_per_layer_in_the_given_order():
    runs, metrics = make_tables({"a": rising, "b": falling}, widths=(0.25, 1, 4), layers=("stem", "s1", "s2"))
    fig = plot_layerwise(layer_level(runs, metrics), "robustness", ["stem", "s1", "s2"])
    assert [a.get_title() for a in fig.axes] == ["stem", "s1", "s2"]
    assert all(len(a.containers) == 2 for a in fig.axes)  # one errorbar line per variant
    assert legend_texts(fig)[:2] == ["a", "b"]
    assert "error bars: ± std over replicates (n = 3)" in legend_texts(fig)
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
    trends = verdict(runs, metrics, quantities=("robustness",)).set_index("variant")["slope"]
    assert trends["glorot: default"] > 0 > trends["he: default"]


@pytest.mark.parametrize("labels,match", [(["a"], "one label per study"), (["a", "a"], "distinct"),
                                          (["a", ""], "distinct")])
def test_combine_rejects_bad_labels(labels, match):
    study = Study(*make_tables({"v": rising}, widths=(1.0,), replicates=1))
    with pytest.raises(WidthlabError, match=match):
        combine([study, study], labels)


# What the error bars are, where the legends sit, accuracy axes -------------------------------------------------

def test_spread_note_gives_n_or_its_range():
    assert spread_note([3, 3]) == "error bars: ± std over replicates (n = 3)"
    assert spread_note([3, 2, 3], mark="band") == "bands: ± std over replicates (n = 2–3)"
    assert spread_note([1, 1]) == "error bars: ± std over replicates (n = 1, no error bar)"
    assert spread_note([5], over="samplings") == "error bars: ± std over samplings (n = 5)"


def test_overview_legend_names_the_null_and_the_replicates(calibrated):
    runs, metrics = calibrated
    run_level_df = run_level(runs, metrics)
    fig = plot_overview(run_level_df)
    assert [a.get_title() for a in fig.axes] == ["(a) Accuracy", "(b) Robustness", "(c) Compressibility",
                                                 "(d) Similarity"]
    # The null is dashed on the similarity panel only, and the one figure legend names it.
    assert [li.get_linestyle() for li in fig.axes[3].get_lines()].count("--") == 3
    texts = legend_texts(fig)
    assert "permutation null" in texts
    n = runs.groupby(["variant", "width"]).size().unique()
    assert list(n) == [3] and "error bars: ± std over replicates (n = 3)" in texts
    calibration_fig = plot_similarity_calibration(run_level_df)
    assert "permutation null" in legend_texts(calibration_fig)


def test_n_is_counted_per_point():
    runs, metrics = make_tables({"v": rising}, widths=(0.5, 2), replicates=3)
    dropped = runs["run_id"] == "v-w2-r0"
    runs, metrics = runs[~dropped], metrics[~metrics["run_id"].isin(runs.loc[dropped, "run_id"])]
    ax = plot_vs_width(run_level(runs, metrics), "robustness")
    assert "error bars: ± std over replicates (n = 2–3)" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert "bands: ± std over replicates (n = 2–3)" in legend_texts(plot_ablation_curves(metrics, runs))
    one_runs, one = make_tables({"v": rising}, widths=(0.5, 2), replicates=1)
    ax = plot_vs_width(run_level(one_runs, one), "robustness")
    assert "error bars: ± std over replicates (n = 1, no error bar)" in [
        t.get_text() for t in ax.get_legend().get_texts()]


def test_no_legend_covers_data(calibrated):
    runs, metrics = calibrated
    run_level_df = run_level(runs, metrics)
    metrics = with_histograms(metrics, runs)
    figures = [plot_vs_width(run_level_df, "similarity").figure, plot_overview(run_level_df),
               plot_similarity_calibration(run_level_df), plot_layerwise(layer_level(runs, metrics), "similarity"),
               plot_ablation_curves(metrics, runs),
               plot_abs_r(runs, metrics),
               plot_vs_epoch(epoch_level(runs, with_snapshots(metrics), history_of(runs))),
               plot_params(pd.DataFrame({"model": "mlp", "width": [0.25, 1, 4], "params": [418, 1666, 6658]})).figure,
               layer_figure(analyze_frame(), "h1")]
    for fig in figures:
        assert_legends_clear(fig)


def test_accuracy_against_width_is_zoomed_to_its_data_and_says_so():
    runs, metrics = make_tables({"v": lambda w, i: 0.92 + 0.005 * math.log2(w)}, widths=(0.25, 1, 4), noise=0.001)
    run_level_df = run_level(runs, metrics)
    cells = run_level_df.groupby("width")["accuracy"].agg(["mean", lambda v: float(np.std(v))])
    low_data = float((cells["mean"] - cells.iloc[:, 1]).min())
    high_data = float((cells["mean"] + cells.iloc[:, 1]).max())
    assert 0.9 < low_data < high_data < 0.94
    margin = 0.15 * (high_data - low_data)
    # accuracy.png's axes and panel (a) of overview.png: the data's range (means ± std) and a small margin, so
    # the rise of 0.02 the verdict reports is visible; the label gives the range shown.
    for ax in (plot_vs_width(run_level_df, "accuracy"), plot_overview(run_level_df).axes[0]):
        low, high = ax.get_ylim()
        assert low_data - margin <= low < low_data and high_data < high <= high_data + margin
        assert ax.get_ylabel() == f"Test accuracy (top-1)\nzoomed to the data: {low:.3f}–{high:.3f}"
    # Without data ("no data" written on the axes) nothing is zoomed.
    empty = plot_vs_width(run_level_df.assign(accuracy=np.nan), "accuracy")
    assert empty.get_ylim() == (0.0, 1.02) and empty.get_ylabel() == AXIS_LABELS["accuracy"]
    # Robustness is not a share: its axis follows the data, unlabelled.
    assert plot_vs_width(run_level_df, "robustness").get_ylabel() == AXIS_LABELS["robustness"]
    # A thousandth of noise does not fill the axis: at least ZOOM_MIN_SPAN is shown.
    assert zoomed_limits([0.92, 0.921]) == pytest.approx((0.9155, 0.9255))
    assert zoomed_limits([0.91, 0.93, np.nan]) == pytest.approx((0.908, 0.932))
    assert zoomed_limits([0.99, 1.0]) == pytest.approx((0.989, 1.001))
    # Along training accuracy climbs from chance: that axis still spans 0–1.02.
    fig = plot_vs_epoch(epoch_level(runs, with_snapshots(metrics), history_of(runs)))
    assert fig.axes[0].get_ylim() == (0.0, 1.02)
    assert share_limits([0.9, 0.95]) == (0.0, 1.02)
    # Shares near 0 would be a flat line on (0, 1.02): the data's range, padded by 0.05 of the share.
    assert share_limits([0.02, 0.04, np.nan]) == pytest.approx((0.0, 0.09))
    assert share_limits([0.1, 0.101]) == pytest.approx((0.05, 0.151))


# `widthlab analyze`: per-layer figures and table ------------------------------------------------------------------

def analyze_frame(perturbations=("zero", "act_noise"), samplings=3, extra=()):
    """A tidy analyze frame for layers h1 and "all": straight curves, auc, redundancy numbers and a histogram."""
    rows = []
    for layer in ("h1", "all"):
        for perturbation in perturbations:
            levels = np.arange(6) / (2.5 if perturbation.endswith("noise") else 5)
            for sampling in range(samplings):
                rows += [dict(layer=layer, metric="unchanged", perturbation=perturbation, level=x, sampling=sampling,
                              value=1 - 0.4 * x + 0.01 * sampling) for x in levels]
                rows.append(dict(layer=layer, metric="auc", perturbation=perturbation, level=np.nan,
                                 sampling=sampling, value=0.7 + 0.01 * sampling))
        if layer != "all":
            for metric, value in (("n_units", 8.0), ("compressibility", 0.25), *extra):
                rows += [dict(layer=layer, metric=metric, perturbation="", level=np.nan, sampling=s,
                              value=value + s) for s in range(2)]
            rows += [dict(layer=layer, metric="abs_r_count", perturbation="", level=c, sampling=0, value=n)
                     for c, n in zip(BIN_CENTRES, np.arange(50, 0, -1.0))]
    return pd.DataFrame(rows)


def test_analyze_figure_puts_noise_on_its_own_axes():
    fig = layer_figure(analyze_frame(("zero", "weight_knockout", "act_noise", "weight_noise")), "h1")
    share, noise, hist = fig.axes
    assert share.get_xlabel() == f"{UNIT_SHARE_LABEL} / {WEIGHT_SHARE_LABEL}"
    assert noise.get_xlabel() == NOISE_LABEL == "noise σ (multiple of the unit's / weight's std)"
    assert [len(ax.containers) for ax in (share, noise)] == [2, 2]
    # One colour per perturbation across both panels, as the one legend shows.
    assert len({c.lines[0].get_color() for ax in (share, noise) for c in ax.containers}) == 4
    assert share.get_xlim()[1] <= 1.1 < noise.get_xlim()[1]
    assert hist.get_xlabel() == "|r| between unit pairs"
    texts = legend_texts(fig)
    assert texts[:4] == ["zero", "weight_knockout", "act_noise", "weight_noise"]
    assert "error bars: ± std over samplings (n = 3)" in texts
    assert share.get_ylim() == (0.0, 1.02)


def test_analyze_figure_with_share_perturbations_only_keeps_one_curve_panel(tmp_path):
    frame = analyze_frame(("zero",), samplings=1)
    fig = layer_figure(frame, "h1")
    assert len(fig.axes) == 2 and fig.axes[0].get_xlabel() == UNIT_SHARE_LABEL
    assert "error bars: ± std over samplings (n = 1, no error bar)" in legend_texts(fig)
    # The joint scope has curves but no histogram: no histogram panel, not an empty one.
    joint = layer_figure(frame, "all")
    assert len(joint.axes) == 1
    assert [p.name for p in write_layer_figures(frame, tmp_path)] == ["layer_h1.png", "layer_all.png"]


@pytest.mark.parametrize("perturbations, layer, panels", [
    (("zero",), "all", 1), (("zero",), "h1", 2),
    (("zero", "weight_knockout", "act_noise", "weight_noise"), "all", 2),
    (("zero", "weight_knockout", "act_noise", "weight_noise"), "h1", 3)])
def test_analyze_figure_uses_its_space(perturbations, layer, panels):
    """layer_all.png was one panel on a three-panel canvas with its legend far right, ~60% blank: the axes now
    cover most of the figure and the legend lies inside it."""
    fig = layer_figure(analyze_frame(perturbations), layer)
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    assert len(fig.axes) == panels
    covered = sum(ax.get_window_extent().width * ax.get_window_extent().height for ax in fig.axes if ax.axison)
    assert covered / (fig.bbox.width * fig.bbox.height) > 0.5
    assert_legends_clear(fig)


def test_analyze_figure_of_a_measured_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    frame = analyze(model, torch.randn(20, 6), perturbations=("zero", "act_noise"), levels=[0.0, 0.5, 1.0],
                    samplings=2)
    fig = layer_figure(frame, "1")
    assert [ax.get_xlabel() for ax in fig.axes[:2]] == [UNIT_SHARE_LABEL, NOISE_LABEL]
    assert "error bars: ± std over samplings (n = 2)" in legend_texts(fig)
    assert_legends_clear(fig)


def test_layer_table_picks_up_the_frivolous_and_selectivity_numbers_when_present():
    plain = layer_table(analyze_frame())
    assert list(plain.columns) == ["layer", "n_units", "compressibility", "auc_zero", "auc_zero_std",
                                   "auc_act_noise", "auc_act_noise_std"]
    names = ("selectivity", "unselective_fraction", "prunability", "prunable_units", "non_prunable_units",
             "redundant_units", "non_redundant_units")
    table = layer_table(analyze_frame(extra=[(name, 0.1 * i) for i, name in enumerate(names)])).set_index("layer")
    assert list(table.columns[:9]) == ["n_units", "compressibility", *names]
    # Mean over samplings (values s + 0.1·i for s = 0, 1); the joint scope has none of them.
    np.testing.assert_allclose(table.loc["h1", list(names)], [0.5 + 0.1 * i for i in range(len(names))])
    assert table.loc["all", list(names)].isna().all()
