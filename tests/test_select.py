"""grid.select: every candidate trained per cell, the best-validation one kept and measured, resumable."""

import dataclasses
import importlib.util

import numpy as np
import pandas as pd
import pytest

from widthlab.errors import WidthlabError
from widthlab.report.format import census
from widthlab.report.verdict import done_runs
from widthlab.study import executors, runner
from widthlab.study.config import load_config
from widthlab.study.runner import choose, plan_runs, run_study
from widthlab.study.store import load_results

TINY = ["grid.widths=[0.25, 0.5]", "grid.replicates=2", "train.epochs=5", "data.n_train=300", "data.n_val=100",
        "data.n_test=50", "measure.samplings=1", "measure.levels=3", "measure.perturbations=[zero]",
        "grid.variants={'default': {}}"]
# lr 1e-5 barely moves the weights in 5 epochs; 0.1 learns: the choice is not a tie.
SELECT = ["grid.select={train.lr: [0.00001, 0.1]}"]


def test_select_forms_and_errors():
    cfg = load_config("mlp-10d", ["grid.select={train.lr: [0.1, 0.01], train.batch_size: [16, 32]}"])
    assert cfg.grid.select.candidates == ({"train.lr": 0.1, "train.batch_size": 16},
                                          {"train.lr": 0.1, "train.batch_size": 32},
                                          {"train.lr": 0.01, "train.batch_size": 16},
                                          {"train.lr": 0.01, "train.batch_size": 32})
    pairs = load_config("mlp-10d", ["grid.select=[{train.lr: 0.4, train.lr_batch_factor: 4}, {train.lr: 0.1}]"])
    assert len(pairs.grid.select.candidates) == 2 and pairs.grid.selecting
    off = load_config("resnet56")
    assert off.grid.select is not None and not off.grid.selecting
    assert load_config("mlp-10d", ["grid.select=null"]).grid.select is None
    for bad, message in [("{train.lr: [0.1]}", "at least two candidates"),
                         ("{lr: [0.1, 0.01]}", "dotted key"),
                         ("{train.lr: [0.1, -1]}", "candidate {'train.lr': -1}: train.lr"),
                         ("[{train.lr: 0.1}, {train.lr: 0.1}]", "repeat"),
                         ("{train.lr: []}", "non-empty list"),
                         ("{candidates: {train.lr: [1, 2]}, measure: some}", "measure")]:
        with pytest.raises(WidthlabError, match=message.replace("{", r"\{").replace("[", r"\[")):
            load_config("mlp-10d", [f"grid.select={bad}"])


def test_plan_names_each_candidate_of_each_cell():
    specs = plan_runs(load_config("mlp-10d", TINY + SELECT))
    assert len(specs) == 2 * 2 * 2
    first = specs[0]
    assert (first.run_id, first.cell, first.candidate, first.measure) == ("default-w0.25-r0-lr=1e-05",
                                                                          "default-w0.25-r0", "lr=1e-05", False)
    assert first.config.train.lr == 0.00001 and specs[1].config.train.lr == 0.1
    assert first.config.stored()["select"] == {"cell": "default-w0.25-r0", "candidate": "lr=1e-05",
                                               "overrides": {"train.lr": 0.00001}}
    assert all(s.measure for s in plan_runs(load_config("mlp-10d", TINY + SELECT + ["grid.select.measure=all"])))


def test_choose_takes_the_best_validation_candidate():
    specs = plan_runs(load_config("mlp-10d", TINY + ["grid.select={train.lr: [0.3, 0.1, 0.01]}"]))
    cells = {}
    for s in specs:
        cells.setdefault(s.cell, []).append(s.run_id)
    rows = []
    plan = {  # per cell: (status, val_acc) of the candidates in order
        "default-w0.25-r0": [("trained", 0.7), ("trained", 0.9), ("trained", 0.8)],
        "default-w0.25-r1": [("trained", 0.8), ("trained", 0.8), ("trained", 0.6)],  # a tie: the first
        "default-w0.5-r0": [("diverged", np.nan), ("trained", 0.5), ("trained", 0.6)],
        "default-w0.5-r1": [("trained", 0.9), ("failed", np.nan), ("trained", 0.6)],  # not final yet
    }
    for cell, members in plan.items():
        for run_id, (status, acc) in zip(cells[cell], members):
            rows.append(dict(run_id=run_id, status=status, val_acc=acc, train_acc=acc))
    chosen, notes = choose(pd.DataFrame(rows), specs)
    assert chosen == {"default-w0.25-r0": cells["default-w0.25-r0"][1], "default-w0.25-r1": cells["default-w0.25-r1"][0],
                      "default-w0.5-r0": cells["default-w0.5-r0"][2]}
    assert len(notes) == 1 and "default-w0.5-r1: candidate(s) lr=0.1 failed" in notes[0]
    rows = [dict(run_id=r, status="diverged", val_acc=np.nan, train_acc=np.nan) for r in cells["default-w0.25-r0"]]
    chosen, notes = choose(pd.DataFrame(rows), specs)
    assert chosen == {} and "every candidate diverged" in notes[0]


def test_random_labels_choose_by_training_accuracy():
    specs = plan_runs(load_config("mlp-10d", TINY + SELECT + ["grid.widths=[0.25]", "grid.replicates=1"]))
    # As a CIFAR-10 random-label variant's runs say (synthetic data has no such option: set past validation).
    specs = [dataclasses.replace(spec, config=spec.config.model_copy(update={
        "data": spec.config.data.model_copy(update={"random_labels": True})})) for spec in specs]
    assert all(spec.config.data.options["random_labels"] for spec in specs)
    rows = [dict(run_id=specs[0].run_id, status="trained", val_acc=0.6, train_acc=0.5),
            dict(run_id=specs[1].run_id, status="trained", val_acc=0.4, train_acc=0.99)]
    assert choose(pd.DataFrame(rows), specs)[0] == {specs[0].cell: specs[1].run_id}  # val labels are noise here


def _check_choice(runs: pd.DataFrame) -> None:
    for cell, group in runs.groupby("cell"):
        finite = group[group["status"] != "diverged"]
        best = finite.loc[finite["val_acc"].idxmax()]
        assert group.loc[group["chosen"] == 1, "run_id"].tolist() == [best["run_id"]], cell
        assert (group["chosen"] == 0).sum() == len(group) - 1


@pytest.mark.slow
def test_study_measures_only_the_chosen_candidates(tmp_path):
    run_study(load_config("mlp-10d", TINY + SELECT), tmp_path, progress=False)
    res = load_results(tmp_path)
    runs = res.runs
    _check_choice(runs)
    assert set(runs.loc[runs["candidate"] == "lr=0.1", "chosen"]) == {1}  # the learning rate that learns
    assert set(runs.loc[runs["chosen"] == 1, "status"]) == {"done"}
    assert set(runs.loc[runs["chosen"] == 0, "status"]) == {"trained"}
    assert set(res.metrics["run_id"]) == set(runs.loc[runs["chosen"] == 1, "run_id"])
    assert len(done_runs(runs)) == 4
    summary = (tmp_path / "summary.md").read_text()
    assert "## Hyperparameter selection" in summary and "lr=0.1 ×2" in summary
    selection = pd.read_csv(tmp_path / "selection.csv")
    assert selection["chosen"].tolist() == ["lr=0.1 ×2", "lr=0.1 ×2"]
    assert "## Frivolous units" in summary and (tmp_path / "figures" / "frivolous.png").is_file()
    growth = pd.read_csv(tmp_path / "growth.csv")
    assert set(growth["quantity"]) == {"prunable_units", "non_prunable_units", "redundant_units",
                                       "non_redundant_units"}
    from widthlab.report import write_report

    html = write_report(res.runs, res.metrics, tmp_path / "html", title="t", html=True, pdf=False)["html"]
    text = html.read_text()
    assert 'id="selection"' in text and 'id="frivolous"' in text and "effective width grows slower" in text
    assert "lr=0.1 ×2" in text


def test_measure_all_keeps_the_verdict_on_the_chosen(tmp_path):
    run_study(load_config("mlp-10d", TINY + SELECT + ["grid.select.measure=all"]), tmp_path, progress=False,
              report=False)
    runs = load_results(tmp_path).runs
    _check_choice(runs)
    assert set(runs["status"]) == {"done"}  # every candidate measured
    assert set(done_runs(runs)["run_id"]) == set(runs.loc[runs["chosen"] == 1, "run_id"])
    assert census(runs)[2] == ("Runs per variant × width: 4 (2 replicates × 2 lr candidates; 4 measured, of which "
                               "the 2 chosen enter the results)")


def test_summary_says_a_cells_runs_are_replicates_times_candidates(tmp_path):
    """"4 (replicates 0, 1)" read as four replicates: a cell holds replicates × candidates trainings."""
    run_study(load_config("mlp-10d", TINY + SELECT + ["grid.widths=[0.25]"]), tmp_path, progress=False,
              report=False)
    runs = load_results(tmp_path).runs
    assert census(runs)[2] == ("Runs per variant × width: 4 (2 replicates × 2 lr candidates; 2 measured: each "
                               "replicate's chosen candidate)")
    # Two settings chosen together are both named; a study without a selection lists its replicates.
    both = runs.assign(candidate=runs["candidate"].map({"lr=0.1": "lr=0.1,batch_size=16",
                                                        "lr=1e-05": "lr=1e-05,batch_size=32"}))
    assert "2 lr/batch_size candidates" in census(both)[2]
    plain = runs[runs["chosen"] == 1].assign(candidate=None, chosen=None, cell=None)
    assert census(plain)[2] == "Runs per variant × width: 2 (replicates 0, 1)"


def test_selection_resumes_after_a_crash_between_its_phases(tmp_path, monkeypatch):
    cfg = load_config("mlp-10d", TINY + SELECT)

    def crash(*args, **kwargs):
        raise RuntimeError("killed after training the candidates")

    monkeypatch.setattr(runner, "choose", crash)
    with pytest.raises(RuntimeError, match="killed"):
        run_study(cfg, tmp_path / "a", progress=False, report=False)
    trained = load_results(tmp_path / "a").runs
    assert set(trained["status"]) == {"trained"} and trained["chosen"].isna().all()
    monkeypatch.undo()

    started = []
    real = executors.execute_runs

    def spy(specs, **kwargs):
        started.extend((spec.run_id, spec.measure) for spec in specs)
        return real(specs, **kwargs)

    monkeypatch.setattr(executors, "execute_runs", spy)
    run_study(cfg, tmp_path / "a", progress=False, report=False)  # local executor: execute_runs in this process
    resumed = load_results(tmp_path / "a")
    chosen = resumed.runs.loc[resumed.runs["chosen"] == 1, "run_id"].tolist()
    assert sorted(started) == sorted((run_id, True) for run_id in chosen)  # no candidate trained again
    assert (resumed.runs.loc[resumed.runs["chosen"] == 1, "epochs"] == 5).all()
    run_study(cfg, tmp_path / "b", progress=False, report=False)  # uninterrupted
    clean = load_results(tmp_path / "b")
    pd.testing.assert_frame_equal(resumed.metrics, clean.metrics)
    pd.testing.assert_series_equal(resumed.runs["chosen"], clean.runs["chosen"])


@pytest.mark.slow
def test_processes_executor_chooses_the_same(tmp_path):
    cfg = load_config("mlp-10d", TINY + SELECT + ["grid.replicates=1"])
    run_study(cfg, tmp_path / "local", progress=False, report=False)
    run_study(cfg, tmp_path / "procs", executor="processes", workers=2, progress=False, report=False)
    local, procs = load_results(tmp_path / "local"), load_results(tmp_path / "procs")
    pd.testing.assert_series_equal(local.runs["chosen"], procs.runs["chosen"])
    pd.testing.assert_frame_equal(local.metrics, procs.metrics)


def test_cli_select_flag(capsys):
    from widthlab.cli import main

    assert main(["run", "resnet56", "--select", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "90 runs" in out and "× 3 candidates" in out and "real-labels-w0.25-r0-lr=0.3" in out
    assert main(["run", "alexnet-lr-batch", "--select", "--dry-run"]) == 2
    assert "declares no grid.select" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is an optional extra (widthlab[ray])")
def test_ray_executor_chooses_the_same(tmp_path):
    cfg = load_config("mlp-10d", TINY + SELECT + ["grid.replicates=1", "grid.widths=[0.25]"])
    run_study(cfg, tmp_path / "local", progress=False, report=False)
    run_study(cfg, tmp_path / "ray", executor="ray", progress=False, report=False)
    local, ray = load_results(tmp_path / "local"), load_results(tmp_path / "ray")
    pd.testing.assert_series_equal(local.runs["chosen"], ray.runs["chosen"])
    pd.testing.assert_frame_equal(local.metrics, ray.metrics)


def test_a_cell_not_chosen_yet_stays_out_of_the_report():
    runs = pd.DataFrame([dict(run_id="a", variant="v", width=1.0, replicate=0, status="done", cell="c1", chosen=1.0),
                         dict(run_id="b", variant="v", width=1.0, replicate=0, status="done", cell="c1", chosen=0.0),
                         dict(run_id="c", variant="v", width=1.0, replicate=1, status="done", cell="c2",
                              chosen=np.nan),  # a candidate of c2 failed: nothing of c2 is chosen
                         dict(run_id="d", variant="v", width=2.0, replicate=0, status="done", cell=None,
                              chosen=np.nan)])  # no selection
    assert done_runs(runs)["run_id"].tolist() == ["a", "d"]


def test_switching_to_measure_all_measures_the_trained_candidates(tmp_path):
    one = ["grid.widths=[0.25]", "grid.replicates=1"]
    run_study(load_config("mlp-10d", TINY + SELECT + one), tmp_path, progress=False, report=False)
    assert "trained" in set(load_results(tmp_path).runs["status"])
    run_study(load_config("mlp-10d", TINY + SELECT + one + ["grid.select.measure=all"]), tmp_path, progress=False,
              report=False)
    res = load_results(tmp_path)
    assert set(res.runs["status"]) == {"done"} and set(res.metrics["run_id"]) == set(res.runs["run_id"])


def test_a_deleted_checkpoint_of_an_unchosen_candidate_is_not_rebuilt_and_the_study_says_so(tmp_path, caplog,
                                                                                            capsys):
    from widthlab.cli import main

    cfg = load_config("mlp-10d", TINY + SELECT + ["grid.widths=[0.25]", "grid.replicates=1"])
    run_study(cfg, tmp_path, progress=False, report=False)
    runs = load_results(tmp_path).runs
    unchosen = runs.loc[runs["chosen"] == 0, "run_id"].item()
    (tmp_path / runs.set_index("run_id").loc[unchosen, "checkpoint"]).unlink()  # to save space
    run_study(cfg, tmp_path, progress=False, report=False)
    assert "1 candidate(s) not chosen have no checkpoint in checkpoints/ and are not rebuilt" in caplog.text
    assert unchosen in caplog.text
    after = load_results(tmp_path).runs
    pd.testing.assert_frame_equal(after, runs)  # nothing retrained
    assert main(["status", str(tmp_path)]) == 0
    assert "note: 1 candidate(s) not chosen have no checkpoint" in capsys.readouterr().out


def test_a_variant_may_not_set_what_the_selection_chooses():
    with pytest.raises(WidthlabError, match=r"variant 'fast' sets \['train.lr'\], which grid.select also chooses"):
        load_config("mlp-10d", ["grid.variants={fast: {train: {lr: 0.5}}}"])
    with pytest.raises(WidthlabError, match="train.seed cannot be a candidate"):
        load_config("mlp-10d", ["grid.select={train.seed: [1, 2]}"])
