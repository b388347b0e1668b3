"""Tests of widthlab.report on synthetic runs/metrics tables with known trends."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from synthetic_results import LEVELS, PNG_MAGIC, WIDTHS, falling, flat_value, make_tables, rising

from widthlab.errors import WidthlabError
from widthlab.report import (
    ablation_curve_table,
    format_verdict_table,
    hypothesis,
    hypothesis_word,
    layer_level,
    plot_ablation_curves,
    plot_vs_width,
    run_level,
    verdict,
    width_label,
    write_report,
)


def row(table, variant, metric):
    found = table[(table["variant"] == variant) & (table["metric"] == metric)]
    assert len(found) == 1
    return found.iloc[0]


def test_known_slope_is_recovered_with_an_up_trend():
    runs, metrics = make_tables({"up": rising})
    table = verdict(runs, metrics)
    for metric in ("accuracy", "robustness", "compressibility", "similarity"):
        r = row(table, "up", metric)
        assert r.slope == pytest.approx(0.1, abs=0.005)
        assert r.ci_low < 0.1 < r.ci_high
        assert r.trend == "up"
        assert r.method == "runs"
        assert r.n_runs == 15


def test_constant_is_flat_and_decreasing_is_down():
    runs, metrics = make_tables({"flat": flat_value, "down": falling})
    table = verdict(runs, metrics)
    for metric in ("accuracy", "robustness", "compressibility", "similarity"):
        flat = row(table, "flat", metric)
        assert flat.ci_low <= 0 <= flat.ci_high
        assert flat.trend == "flat"
        down = row(table, "down", metric)
        assert down.slope == pytest.approx(-0.1, abs=0.005)
        assert down.trend == "down"


def test_verdict_columns_and_order():
    runs, metrics = make_tables({"b": rising, "a": flat_value})
    table = verdict(runs, metrics, quantities=("robustness", "similarity"))
    assert list(table.columns) == ["variant", "metric", "slope", "ci_low", "ci_high", "trend", "n_runs", "method"]
    # Variants keep the runs table's order; metrics keep the requested order.
    assert list(zip(table["variant"], table["metric"])) == [
        ("b", "robustness"), ("b", "similarity"), ("a", "robustness"), ("a", "similarity")
    ]


def test_verdict_is_reproducible_and_seeded():
    runs, metrics = make_tables({"up": rising, "flat": flat_value})
    first = verdict(runs, metrics, seed=3)
    pd.testing.assert_frame_equal(first, verdict(runs, metrics, seed=3))
    other = verdict(runs, metrics, seed=4)
    assert not np.allclose(first["ci_low"], other["ci_low"])
    # Each (variant, metric) has its own stream: asking for fewer rows does not change a row's interval.
    alone = verdict(runs, metrics, quantities=("similarity",), seed=3)
    expected = first[first["metric"] == "similarity"].reset_index(drop=True)
    pd.testing.assert_frame_equal(alone, expected)


@pytest.mark.parametrize("replicates", [3, 1])
def test_exactly_constant_values_are_flat_not_a_rounding_sign(replicates):
    # Constant 0.1 in every run leaves a slope of ~1e-17 in floating point; its sign must not become a trend.
    runs, metrics = make_tables({"v": rising}, replicates=replicates)
    runs["test_acc"] = 1.0
    metrics.loc[metrics["metric"] == "compressibility", "value"] = 0.1
    table = verdict(runs, metrics)
    for metric in ("compressibility", *(("accuracy",) if replicates > 1 else ())):
        r = row(table, "v", metric)
        assert r.slope == 0.0 and r.trend == "flat"
    assert row(table, "v", "robustness").trend == "up"


def test_slope_is_least_squares_of_run_values_on_log2_width():
    runs, metrics = make_tables({"up": rising}, noise=0.02, seed=5)
    run_level_df = run_level(runs, metrics)
    expected = np.polyfit(np.log2(run_level_df["width"]), run_level_df["robustness"], 1)[0]
    assert row(verdict(runs, metrics), "up", "robustness").slope == pytest.approx(expected, rel=1e-12)


def test_single_replicate_resamples_layers():
    def per_layer(width, layer_index):
        # Every layer rises, at different rates and levels, so a layer bootstrap sees a positive spread.
        return 0.2 * layer_index + (0.05 + 0.03 * layer_index) * math.log2(width)

    runs, metrics = make_tables({"one": per_layer}, replicates=1, layers=("a", "b", "c"))
    table = verdict(runs, metrics)
    robustness = row(table, "one", "robustness")
    assert robustness.method == "layers"
    assert robustness.n_runs == 5
    assert robustness.slope == pytest.approx(0.08, abs=0.005)
    # The per-layer slopes are 0.05, 0.08, 0.11: every bootstrap mean lies between the extremes.
    assert 0.04 < robustness.ci_low < robustness.ci_high < 0.12
    assert robustness.trend == "up"
    # Accuracy has no layers: the point slope stays, the interval cannot be drawn.
    accuracy = row(table, "one", "accuracy")
    assert accuracy.method == "none"
    assert np.isnan(accuracy.ci_low) and np.isnan(accuracy.ci_high)
    assert accuracy.trend == "flat"
    assert accuracy.slope == pytest.approx(0.05, abs=0.005)


def test_single_replicate_single_layer_has_no_interval():
    runs, metrics = make_tables({"mlp": rising}, replicates=1, layers=("hidden",))
    r = row(verdict(runs, metrics), "mlp", "robustness")
    assert r.method == "none" and r.trend == "flat" and np.isnan(r.ci_low)
    assert r.slope == pytest.approx(0.1, abs=0.01)


def test_fewer_than_two_widths_gives_nan_slope_and_flat():
    runs, metrics = make_tables({"one_width": rising}, widths=(1.0,))
    table = verdict(runs, metrics)
    assert table["slope"].isna().all()
    assert (table["trend"] == "flat").all()
    assert (table["method"] == "none").all()
    assert (table["n_runs"] == 3).all()


def test_non_done_runs_are_excluded():
    runs, metrics = make_tables({"up": rising})
    for status in ("failed", "diverged", "pending", "running"):
        run_id = f"bad-{status}"
        runs.loc[len(runs)] = dict(run_id=run_id, variant="up", width=4.0, replicate=9, status=status,
                                   seconds=0.0, train_acc=0.0, val_acc=0.0, test_acc=0.0, epochs=0)
        extra = metrics[metrics["run_id"] == metrics["run_id"].iloc[0]].assign(run_id=run_id, value=-50.0)
        metrics = pd.concat([metrics, extra], ignore_index=True)
    run_level_df = run_level(runs, metrics)
    assert len(run_level_df) == 15
    assert not run_level_df["run_id"].str.startswith("bad").any()
    table = verdict(runs, metrics)
    assert (table["n_runs"] == 15).all()
    assert row(table, "up", "accuracy").slope == pytest.approx(0.1, abs=0.005)


def test_run_level_averages_unit_layers_and_samplings_but_not_all():
    def by_layer(width, layer_index):
        return [0.2, 0.6][layer_index] if layer_index < 2 else 0.0

    runs, metrics = make_tables({"v": by_layer}, noise=0.0)
    # A third sampling on layer h1 only: per-layer averaging first keeps both layers at equal weight.
    extra = metrics[(metrics["layer"] == "h1") & (metrics["sampling"] == 0)].assign(sampling=2)
    metrics = pd.concat([metrics, extra], ignore_index=True)
    run_level_df = run_level(runs, metrics)
    assert list(run_level_df.columns) == ["run_id", "variant", "width", "replicate", "accuracy", "robustness",
                                    "compressibility", "similarity", "similar_fraction", "similarity_null",
                                    "similar_fraction_null", "similarity_excess", "selectivity"]
    # No permutation null in these tables: its columns are there, and NaN.
    assert run_level_df["similarity_null"].isna().all()
    for metric in ("robustness", "compressibility", "similarity", "similar_fraction"):
        np.testing.assert_allclose(run_level_df[metric], 0.4)
    np.testing.assert_allclose(run_level_df["accuracy"], runs["test_acc"])
    per_layer = layer_level(runs, metrics)
    assert set(per_layer["layer"]) == {"h1", "h2"}


def test_robustness_uses_the_zero_auc_only():
    runs, metrics = make_tables({"v": flat_value}, noise=0.0)
    metrics.loc[(metrics["metric"] == "auc") & (metrics["perturbation"] == "mean"), "value"] = 9.0
    np.testing.assert_allclose(run_level(runs, metrics)["robustness"], 0.5)


def test_missing_metric_is_nan_and_does_not_crash():
    runs, metrics = make_tables({"v": rising})
    metrics = metrics[metrics["metric"] != "similarity"]
    assert run_level(runs, metrics)["similarity"].isna().all()
    r = row(verdict(runs, metrics), "v", "similarity")
    assert np.isnan(r.slope) and r.trend == "flat" and r.n_runs == 0


def test_unknown_verdict_metric_is_a_clear_error():
    runs, metrics = make_tables({"v": rising}, widths=(1.0, 2.0), replicates=1)
    with pytest.raises(WidthlabError, match="pcs"):
        verdict(runs, metrics, quantities=("pcs",))


def verdict_table(trends):
    return pd.DataFrame(
        [dict(variant=v, metric=m, trend=t) for v, by_metric in trends.items() for m, t in by_metric.items()]
    )


def test_hypothesis_logic():
    table = verdict_table({
        "robust": dict(accuracy="flat", robustness="up", compressibility="flat", similarity="flat"),
        "falls": dict(accuracy="down", robustness="up", compressibility="up", similarity="up"),
        "nothing": dict(accuracy="up", robustness="flat", compressibility="down", similarity="flat"),
        "redundant": dict(accuracy="up", robustness="flat", compressibility="flat", similarity="up"),
        "no_accuracy": dict(robustness="up"),
    })
    result = hypothesis(table).set_index("variant")
    assert list(result.columns) == ["holds", "judged", "reason"]
    assert result.loc["robust", "holds"] and "robustness" in result.loc["robust", "reason"]
    assert not result.loc["falls", "holds"] and "accuracy down" in result.loc["falls", "reason"]
    assert not result.loc["nothing", "holds"]
    assert result.loc["redundant", "holds"]
    assert not result.loc["no_accuracy", "holds"] and not result.loc["no_accuracy", "judged"]
    assert result.drop(index="no_accuracy")["judged"].all()


def test_a_hypothesis_whose_trends_have_no_interval_is_not_judged():
    """One replicate per width and no unit layers: every trend is "flat" with method "none", which says nothing;
    "does not hold" would overstate it (the CLI printed that for every variant of `--set grid.replicates=1`)."""
    rows = [dict(variant="one_replicate", metric=m, trend="flat", method="none")
            for m in ("accuracy", "robustness", "compressibility", "similarity")]
    rows += [dict(variant="partly", metric=m, trend=t, method=k) for m, t, k in [
        ("accuracy", "up", "runs"), ("robustness", "flat", "none"), ("compressibility", "flat", "runs"),
        ("similarity", "flat", "runs")]]
    rows += [dict(variant="falls", metric=m, trend=t, method=k) for m, t, k in [
        ("accuracy", "down", "runs"), ("robustness", "up", "none"), ("compressibility", "flat", "none"),
        ("similarity", "flat", "none")]]
    rows += [dict(variant="grows", metric=m, trend=t, method=k) for m, t, k in [
        ("accuracy", "flat", "runs"), ("robustness", "flat", "none"), ("compressibility", "up", "layers"),
        ("similarity", "flat", "runs")]]
    result = hypothesis(pd.DataFrame(rows)).set_index("variant")
    words = {v: hypothesis_word(r) for v, r in zip(result.index, result.itertuples(index=False))}
    assert words == {"one_replicate": "not judged", "partly": "not judged", "falls": "does not hold",
                     "grows": "holds"}
    assert "grid.replicates >= 2" in result.loc["one_replicate", "reason"]
    assert "robustness had no interval" in result.loc["partly", "reason"]


def test_hypothesis_from_a_real_verdict():
    runs, metrics = make_tables({"up": rising, "down": falling})
    result = hypothesis(verdict(runs, metrics)).set_index("variant")
    assert result.loc["up", "holds"]
    assert not result.loc["down", "holds"]


def test_width_labels():
    assert [width_label(w) for w in WIDTHS] == ["1/4", "1/2", "1", "2", "4"]
    assert width_label(0.75) == "3/4"
    assert width_label(0.3) == "0.3"


def test_ablation_curve_table_averages_layers_and_replicates():
    runs, metrics = make_tables({"v": rising}, noise=0.0)
    table = ablation_curve_table(metrics, runs)
    assert list(table.columns) == ["variant", "width", "level", "unchanged", "std"]
    at_one = table[(table["width"] == 1.0)].set_index("level")["unchanged"]
    # auc 0.5 at width 1 → the straight curve 1 − p.
    np.testing.assert_allclose(at_one.to_numpy(), 1 - LEVELS, atol=1e-12)
    with pytest.raises(WidthlabError, match="weight_noise"):
        ablation_curve_table(metrics, runs, perturbation="weight_noise")


def test_plots_draw_one_line_per_variant_and_width():
    runs, metrics = make_tables({"a": rising, "b": falling}, widths=(0.25, 1.0, 4.0))
    ax = plot_vs_width(run_level(runs, metrics), "robustness")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1/4", "1", "4"]
    assert ax.get_legend().get_title().get_text() == "variant"
    assert "area under ablation curve" in ax.get_ylabel()
    fig = plot_ablation_curves(metrics, runs)
    assert len(fig.axes) == 2
    assert all(len(a.get_lines()) == 3 for a in fig.axes)
    with pytest.raises(WidthlabError, match="valid metrics"):
        plot_vs_width(run_level(runs, metrics), "loss")


def test_write_report_writes_pngs_summary_and_csv(tmp_path):
    runs, metrics = make_tables({"sigma=0.01": rising, "sigma=0.1": flat_value}, replicates=2)
    runs.loc[0, "status"] = "failed"
    runs.loc[1, "status"] = "diverged"
    result = write_report(runs, metrics, tmp_path / "report", title="Synthetic study", config={"seed": 0},
                          formats="png")
    names = {p.name for p in result["figures"]}
    assert names == {"accuracy.png", "robustness.png", "compressibility.png", "similarity.png",
                     "similar_fraction.png", "similarity_calibration.png", "overview.png", "ablation_curves.png",
                     "layerwise_robustness.png", "layerwise_compressibility.png", "layerwise_similarity.png"}
    for path in result["figures"]:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    summary = result["summary"].read_text(encoding="utf-8")
    assert summary.startswith("# Synthetic study")
    assert "18 done, 1 failed, 1 diverged" in summary
    assert "| variant | metric | slope/doubling | 95% CI | trend | runs | method |" in summary
    assert "`sigma=0.01`: **holds**" in summary
    assert "(figures/overview.png)" in summary and "(figures/ablation_curves.png)" in summary
    assert "seed: 0" in summary
    saved = pd.read_csv(result["verdict_csv"])
    # 2 variants × (accuracy, robustness, compressibility, similarity, similar_fraction).
    assert len(saved) == 10 and set(saved["trend"]) <= {"up", "flat", "down"}
    pd.testing.assert_frame_equal(
        saved, result["verdict"], check_dtype=False
    )
    assert len(pd.read_csv(result["run_level_csv"])) == 18


def test_write_report_with_no_done_run_does_not_crash(tmp_path):
    runs, metrics = make_tables({"v": rising}, widths=(1.0, 2.0), replicates=1)
    runs["status"] = "pending"
    result = write_report(runs, metrics, tmp_path, title="Nothing yet", formats="png")
    assert result["verdict"].empty
    assert {p.name for p in result["figures"]} == {"accuracy.png", "robustness.png", "compressibility.png",
                                                   "similarity.png", "similar_fraction.png",
                                                   "similarity_calibration.png", "overview.png"}
    assert "No run is done yet." in result["summary"].read_text(encoding="utf-8")


def test_format_verdict_table():
    runs, metrics = make_tables({"up": rising}, replicates=1, layers=("h1", "h2"))
    text = format_verdict_table(verdict(runs, metrics))
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["variant", "metric"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert len(lines) == 2 + 5  # the paper's four, then similar_fraction (in the tables)
    assert "n/a" in text  # single-replicate accuracy has no interval
    assert "layers" in text and "up" in text
