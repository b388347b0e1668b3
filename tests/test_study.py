"""End to end: a small MLP width study through the Python API and the CLI."""

import math
import os
import subprocess
import sys

import pandas as pd
import pytest

from widthlab import WidthlabError, load_results, run_study
from widthlab.cli import main
from widthlab.study.config import load_config

SMALL = ["grid.select=null", "grid.widths=[0.25, 1]", "grid.replicates=2", "train.epochs=4", "data.n_train=200", "data.n_val=100",
         "data.n_test=150", "measure.samplings=2", "measure.levels=6",
         "grid.variants={'sigma=0.01': {model: {sigma: 0.01}}, 'sigma=0.1': {model: {sigma: 0.1}}}"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    run_study(load_config("mlp-10d", SMALL), out, progress=False)
    return out


@pytest.mark.slow
def test_study_stores_every_run_and_metric(study):
    res = load_results(study)
    assert len(res.runs) == 8 and set(res.runs["status"]) == {"done"}
    assert res.runs["test_acc"].between(0, 1).all()
    m = res.metrics
    assert set(m["width"]) == {0.25, 1.0} and set(m["variant"]) == {"sigma=0.01", "sigma=0.1"}
    for metric in ("compressibility", "similarity", "pcs_needed", "auc", "unchanged", "accuracy"):
        assert metric in set(m["metric"]), metric
    auc = m.query("metric == 'auc' and perturbation == 'zero' and layer == 'relu1'")
    assert len(auc) == 8 * 2 and auc["value"].between(0, 1).all()
    curve = m.query("metric == 'unchanged' and perturbation == 'zero' and layer == 'relu1'")
    assert (curve.query("level == 0")["value"] == 1.0).all()
    assert sorted(curve["level"].unique()) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    hidden = m.query("metric == 'n_units'").groupby("width")["value"].first()
    assert hidden.to_dict() == {0.25: 32, 1.0: 128}


@pytest.mark.slow
def test_study_writes_report_and_csv(study):
    for name in ("accuracy", "robustness", "compressibility", "similarity", "ablation_curves"):
        assert (study / "figures" / f"{name}.png").stat().st_size > 1000
    summary = (study / "summary.md").read_text()
    assert "sigma=0.1" in summary and "hypothesis" in summary.lower()
    assert len(pd.read_csv(study / "runs.csv")) == 8
    assert (study / "config.yaml").is_file() and (study / "widthlab.log").is_file()


@pytest.mark.slow
def test_rerun_skips_finished_runs(study):
    before = load_results(study)
    outcome = run_study(load_config("mlp-10d", SMALL), study, progress=False)
    after = load_results(study)
    pd.testing.assert_frame_equal(before.runs, after.runs)
    pd.testing.assert_frame_equal(before.metrics, after.metrics)
    # The outcome is what the store and the report hold: the CLI prints from it without reading them back.
    pd.testing.assert_frame_equal(outcome.runs, after.runs)
    written = pd.read_csv(study / "verdict.csv", keep_default_na=False, na_values=[""])
    assert outcome.verdict[["variant", "metric", "trend"]].equals(written[["variant", "metric", "trend"]])
    assert outcome.verdict["slope"].to_numpy() == pytest.approx(written["slope"].to_numpy())
    assert outcome.failed == [] and outcome.notes == ()
    assert outcome.path == study and (outcome / "summary.md").is_file() and os.fspath(outcome) == str(study)


@pytest.mark.slow
def test_same_config_and_seed_give_the_same_numbers(study, tmp_path):
    cfg = load_config("mlp-10d", SMALL + ["grid.variants={'sigma=0.1': {model: {sigma: 0.1}}}"])
    run_study(cfg, tmp_path, progress=False, report=False)
    fresh = load_results(tmp_path).metrics.drop(columns="run_id")
    old = load_results(study).metrics.query("variant == 'sigma=0.1'").drop(columns="run_id")
    key = ["width", "replicate", "layer", "metric", "perturbation", "level", "sampling"]
    merged = old.merge(fresh, on=key + ["variant"], suffixes=("_a", "_b"))
    assert len(merged) == len(fresh) > 0
    assert ((merged["value_a"] == merged["value_b"]) | (merged["value_a"].isna() & merged["value_b"].isna())).all()


@pytest.mark.slow
def test_a_changed_grid_in_the_same_directory_is_refused(study):
    before = (study / "config.yaml").read_text()
    with pytest.raises(WidthlabError, match="different configuration"):
        run_study(load_config("mlp-10d", SMALL + ["train.epochs=5"]), study, progress=False)
    assert (study / "config.yaml").read_text() == before  # the refused config did not replace the stored one


def test_cli_run_dry_run_lists_the_grid(capsys):
    assert main(["run", "mlp-10d", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "180 runs" in out and "× 4 candidates" in out and "sigma=0.001-w0.25-r0-lr=0.1" in out


@pytest.mark.slow
def test_cli_run_and_report(tmp_path, capsys):
    args = ["run", "mlp-10d", "--out", str(tmp_path), "--quiet"] + [a for s in SMALL[:-1] for a in ("--set", s)]
    args += ["--set", "grid.variants={only: {}}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "compressibility" in out and "summary:" in out
    (tmp_path / "summary.md").unlink()
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "summary.md").is_file()


@pytest.mark.parametrize("args,match", [
    (["run", "mlp-10d", "--set", "grid.widths=[0]"], "width must be a positive number"),
    (["run", "nosuchpreset"], "neither a preset"),
    (["run", "mlp-10d", "--set", "model.name=foo"], "unknown model 'foo'"),
    (["report", "/nonexistent/dir"], "does not exist"),
])
def test_cli_user_errors_exit_2_with_one_line(args, match):
    proc = subprocess.run([sys.executable, "-m", "widthlab.cli", *args], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("widthlab: error:") and __import__("re").search(match, lines[0])


def test_cli_bad_flag_exits_2():
    proc = subprocess.run([sys.executable, "-m", "widthlab.cli", "run", "mlp-10d", "--device", "tpu"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_user_model_and_data_by_module_function(tmp_path, monkeypatch):
    (tmp_path / "user_study_mod.py").write_text(
        "import torch\n"
        "from torch import nn\n"
        "from widthlab.data import ArrayDataset, Splits\n"
        "def build(width=1.0, num_classes=2):\n"
        "    m = nn.Sequential(nn.Linear(3, max(1, round(6 * width))), nn.ReLU(), nn.Linear(max(1, round(6 * width)), num_classes))\n"
        "    m.unit_layers = ['1']\n"
        "    return m\n"
        "def data(seed=0, root=None):\n"
        "    g = torch.Generator().manual_seed(seed)\n"
        "    parts = []\n"
        "    for n in (60, 30, 30):\n"
        "        x = torch.randn(n, 3, generator=g)\n"
        "        parts.append(ArrayDataset(x, (x[:, 0] > 0).long()))\n"
        "    return Splits(*parts, num_classes=2, input_shape=(3,))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_config({"name": "user", "data": {"name": "user_study_mod:data"},
                       "model": {"name": "user_study_mod:build"}, "train": {"epochs": 2},
                       "measure": {"samplings": 1}, "grid": {"widths": [1, 2], "replicates": 1}})
    run_study(cfg, tmp_path / "out", progress=False, report=False)
    res = load_results(tmp_path / "out")
    assert set(res.runs["status"]) == {"done"}
    assert set(res.metrics.query("metric == 'n_units'")["value"]) == {6, 12}
    assert not math.isnan(res.metrics.query("metric == 'auc'")["value"].iloc[0])
    # Its checkpoint names the user's module:function: data, so rebuilding it needs the user's consent.
    from widthlab.external import load_model

    checkpoint = next((tmp_path / "out" / "checkpoints").glob("*.pt"))
    with pytest.raises(WidthlabError, match="user_study_mod:build.*--allow-code"):
        load_model(str(checkpoint))
    assert main(["analyze", str(checkpoint), "--data", "user_study_mod:data", "--quiet"]) == 2
    model = load_model(str(checkpoint), allow_code=True)
    assert model[0].out_features in (6, 12) and not model.training


def test_a_study_that_cannot_be_measured_stops_before_training(tmp_path):
    """Weight noise on ResNet stage outputs (residual sums: no Conv produces them) fails at once, not after
    training: no checkpoint is written and the error names the layer."""
    from widthlab import WidthlabError

    config = {"name": "unmeasurable", "data": {"name": "digits", "image_size": 32, "n_train": 40, "n_val": 20,
                                              "n_test": 20},
              "model": {"name": "resnet56_cifar", "init": "he_normal"},
              "train": {"epochs": 50, "batch_size": 8},
              "measure": {"perturbations": ["zero", "weight_noise"], "levels": 3, "samplings": 1},
              "grid": {"widths": [0.25], "replicates": 1}}
    with pytest.raises(WidthlabError, match="stage1.*Conv/Linear|Conv/Linear.*stage1"):
        run_study(config, tmp_path / "out", progress=False)
    assert not any((tmp_path / "out" / "checkpoints").glob("*.pt"))


def test_a_study_stored_before_a_field_was_added_still_resumes(tmp_path):
    """Configs stored by an older widthlab lack fields added since (here the trainer's compile_mode and
    num_workers): a rerun fills in the defaults instead of calling the study changed, and a half-trained
    run's checkpoint still resumes."""
    import json
    import sqlite3

    import torch

    tiny = ["grid.select=null", "grid.widths=[0.25]", "grid.replicates=1", "train.epochs=3", "data.n_train=100", "data.n_val=50",
            "data.n_test=50", "measure.samplings=1", "measure.levels=3", "grid.variants={'default': {}}"]
    cfg = load_config("mlp-10d", tiny)
    run_study(cfg, tmp_path, progress=False, report=False)
    expected = load_results(tmp_path).metrics
    with sqlite3.connect(tmp_path / "widthlab.sqlite") as db:  # as an older version stored it, unfinished
        (run_id, config), = db.execute("SELECT run_id, config FROM runs").fetchall()
        old = json.loads(config)
        for added in ("compile_mode", "num_workers"):
            del old["train"][added]
        assert old["measure"]["levels"] == {"zero": [0.0, 0.5, 1.0], "mean": [0.0, 0.5, 1.0]}  # spelled out
        old["measure"]["levels"] = 3  # as earlier versions stored it
        db.execute("UPDATE runs SET config = ?, status = 'running' WHERE run_id = ?", (json.dumps(old), run_id))
        db.execute("DELETE FROM metrics")
    checkpoint = tmp_path / "checkpoints" / f"{run_id}.pt"
    state = torch.load(checkpoint, weights_only=False)
    for added in ("compile_mode", "num_workers"):
        del state["train_config"][added]
    torch.save(state, checkpoint)
    run_study(cfg, tmp_path, progress=False, report=False)
    pd.testing.assert_frame_equal(load_results(tmp_path).metrics, expected)
    with pytest.raises(WidthlabError, match="different configuration"):  # a real change is still refused
        run_study(load_config("mlp-10d", tiny + ["train.lr=0.5"]), tmp_path, progress=False, report=False)


def test_a_stored_level_count_for_noise_is_a_different_study(tmp_path):
    """A count of levels used to mean 0 … 1 for every perturbation, now 0 … 2σ for noise: a study stored the old
    way with act_noise must not be resumed into a mix of both ranges."""
    import json
    import sqlite3

    tiny = ["grid.select=null", "grid.widths=[0.25]", "grid.replicates=1", "train.epochs=1", "data.n_train=100", "data.n_val=50",
            "data.n_test=50", "measure.samplings=1", "measure.levels=3", "measure.perturbations=[zero, act_noise]",
            "grid.variants={'default': {}}"]
    cfg = load_config("mlp-10d", tiny)
    run_study(cfg, tmp_path, progress=False, report=False)
    levels = load_results(tmp_path).metrics.query("metric == 'unchanged'").groupby("perturbation")["level"].max()
    assert levels.to_dict() == {"act_noise": 2.0, "zero": 1.0}
    with sqlite3.connect(tmp_path / "widthlab.sqlite") as db:
        (run_id, config), = db.execute("SELECT run_id, config FROM runs").fetchall()
        old = json.loads(config)
        old["measure"]["levels"] = 3
        db.execute("UPDATE runs SET config = ? WHERE run_id = ?", (json.dumps(old), run_id))
    with pytest.raises(WidthlabError, match="different configuration"):
        run_study(cfg, tmp_path, progress=False, report=False)
    # Spelling out the old meaning (noise levels 0, 0.5, 1) is the same study again.
    spelled_out = load_config("mlp-10d", tiny + ["measure.levels={zero: 3, act_noise: [0, 0.5, 1]}"])
    run_study(spelled_out, tmp_path, progress=False, report=False)


def test_cli_bad_checkpoint_interval_exits_2(tmp_path, capsys):
    assert main(["run", "mlp-10d", "--out", str(tmp_path), "--checkpoint-every", "-5", "--quiet"]) == 2
    assert "checkpoint_every must be a number of seconds >= 0, got -5" in capsys.readouterr().err
    assert not (tmp_path / "widthlab.sqlite").exists()
