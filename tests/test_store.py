"""The SQLite store: atomic run results, round trip to DataFrames, config drift and the study lock."""

import math

import pandas as pd
import pytest

from widthlab import WidthlabError
from widthlab.study.store import Store, export_csv, load_results, study_lock

RUN = {"run_id": "a-w1-r0", "variant": "a", "width": 1.0, "replicate": 0, "config": {"lr": 0.01}}
OUTCOME = {"status": "done", "seconds": 1.5, "train_acc": 1.0, "val_acc": 0.9, "test_acc": 0.85, "epochs": 2,
           "best_epoch": 2, "diverged_epoch": None,
           "history": [{"epoch": 1, "loss": 0.7, "train_acc": 0.5, "val_acc": 0.5},
                       {"epoch": 2, "loss": 0.3, "train_acc": 1.0, "val_acc": 0.9}]}
METRICS = pd.DataFrame([
    {"layer": "relu1", "metric": "compressibility", "perturbation": "", "level": math.nan, "sampling": 0, "value": 0.5},
    {"layer": "relu1", "metric": "auc", "perturbation": "zero", "level": math.nan, "sampling": 0, "value": 0.7},
    {"layer": "relu1", "metric": "unchanged", "perturbation": "zero", "level": 0.0, "sampling": 0, "value": 1.0},
    {"layer": "relu1", "metric": "unchanged", "perturbation": "zero", "level": 1.0, "sampling": 0, "value": 0.4},
])


def test_round_trip(tmp_path):
    with Store(tmp_path) as store:
        store.add_runs([RUN])
        assert store.statuses() == {"a-w1-r0": "pending"}
        store.finish("a-w1-r0", OUTCOME, METRICS)
    res = load_results(tmp_path)
    run = res.runs.iloc[0]
    assert run.status == "done" and run.test_acc == 0.85 and run.epochs == 2
    assert list(res.metrics.columns) == ["run_id", "variant", "width", "replicate", "layer", "metric",
                                         "perturbation", "level", "sampling", "value"]
    assert len(res.metrics) == 4 and res.metrics["level"].isna().sum() == 2
    assert res.metrics.query("metric == 'unchanged' and level == 1.0")["value"].item() == 0.4
    assert list(res.history["loss"]) == [0.7, 0.3]
    paths = export_csv(res, tmp_path)
    assert pd.read_csv(paths[1]).shape == (4, 10)


def test_finishing_twice_replaces_rows_not_duplicates(tmp_path):
    with Store(tmp_path) as store:
        store.add_runs([RUN])
        store.finish("a-w1-r0", OUTCOME, METRICS)
        store.finish("a-w1-r0", OUTCOME, METRICS)
    assert len(load_results(tmp_path).metrics) == 4


def test_failed_write_leaves_the_run_unfinished(tmp_path):
    bad = METRICS.drop(columns=["value"])
    with Store(tmp_path) as store:
        store.add_runs([RUN])
        with pytest.raises(KeyError):
            store.finish("a-w1-r0", OUTCOME, bad)
        assert store.statuses() == {"a-w1-r0": "pending"}
    assert load_results(tmp_path).metrics.empty


def test_changed_config_for_an_existing_run_is_an_error(tmp_path):
    with Store(tmp_path) as store:
        store.add_runs([RUN])
        store.add_runs([RUN])  # same config: fine
        with pytest.raises(WidthlabError, match="different configuration"):
            store.add_runs([{**RUN, "config": {"lr": 0.1}}])


def test_second_writer_is_refused_and_lock_is_released(tmp_path):
    with study_lock(tmp_path):
        with pytest.raises(WidthlabError, match="another widthlab process"):
            with study_lock(tmp_path):
                pass
    with study_lock(tmp_path):
        pass


def test_load_results_of_a_non_study_is_clear(tmp_path):
    with pytest.raises(WidthlabError, match="holds no widthlab study"):
        load_results(tmp_path)
    with pytest.raises(WidthlabError, match="does not exist"):
        load_results(tmp_path / "nope")
