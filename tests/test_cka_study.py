"""CKA in a study (`measure.cka`, `widthlab cka STUDY_DIR`): which pairs, stored how, resumed, loaded and drawn."""

import shutil
import sqlite3
import sys

import numpy as np
import pandas as pd
import pytest
from torch.utils.data import Subset

from conftest import TINY_STUDY
from widthlab.errors import WidthlabError

# Two hidden layers, so that a run's own layer × layer matrix has off-diagonal cells.
TWO_LAYERS = """
from torch import nn


class Two(nn.Module):
    def __init__(self, width, input_dim, num_classes):
        super().__init__()
        hidden = max(2, round(32 * width))
        self.fc1, self.relu1 = nn.Linear(input_dim, hidden), nn.ReLU()
        self.fc2, self.relu2 = nn.Linear(hidden, hidden), nn.ReLU()
        self.readout = nn.Linear(hidden, num_classes)
        self.unit_layers = ["relu1", "relu2"]

    def forward(self, x):
        return self.readout(self.relu2(self.fc2(self.relu1(self.fc1(x.flatten(1))))))


def build(width, num_classes=2, input_dim=10):
    return Two(width, input_dim, num_classes)
"""
CKA_ON = "measure.cka={widths: true, replicates: true, layers: true, batch_size: 8}"
GRID = ["grid.widths=[0.25, 0.5]", "grid.replicates=2", "model.name=twolayers:build", CKA_ON]
LAYERS = 2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("twolayers")
    (folder / "twolayers.py").write_text(TWO_LAYERS)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop("twolayers", None)


def _config(*extra):
    from widthlab.study import load_config

    return load_config("mlp-10d", [*TINY_STUDY, *GRID, *extra])


@pytest.fixture(scope="module")
def cka_study_dir(model_dir, tmp_path_factory):
    """2 widths × 2 replicates of a two-layer MLP, trained with measure.cka on and its report drawn."""
    from widthlab.study import run_study

    out = tmp_path_factory.mktemp("cka") / "study"
    run_study(_config(), out, progress=False, report=True, formats="png")
    return out


@pytest.fixture
def copy(cka_study_dir, tmp_path):
    out = tmp_path / "study"
    shutil.copytree(cka_study_dir, out)
    return out


@pytest.fixture
def counted(monkeypatch):
    """The number of `widthlab.cka` calls the study pass makes."""
    module = sys.modules["widthlab.measure.cka"]
    calls = []
    real = module.cka

    def counting(*args, **kwargs):
        calls.append(args[:2])
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "cka", counting)
    return calls


def test_a_study_with_cka_stores_every_pair_once(cka_study_dir):
    from widthlab.study import load_results

    cka = load_results(cka_study_dir).cka
    sizes = cka.groupby("kind").size().to_dict()
    # widths: 1 pair of widths × 2 replicates; replicates: 2 widths × 1 pair; layers: 4 runs × 2 × 2 layers
    assert sizes == {"widths": 2 * LAYERS, "replicates": 2 * LAYERS, "layers": 4 * LAYERS * LAYERS}
    widths = cka[cka["kind"] == "widths"]
    assert (widths["replicate_a"] == widths["replicate_b"]).all()  # replicate-matched
    assert (widths["width_a"] < widths["width_b"]).all()
    assert (widths["layer_a"] == widths["layer_b"]).all()  # corresponding layers only
    reps = cka[cka["kind"] == "replicates"]
    assert (reps["width_a"] == reps["width_b"]).all() and (reps["replicate_a"] < reps["replicate_b"]).all()
    assert cka["cka"].between(-0.2, 1 + 1e-9).all() and (cka["examples"] == 32).all()
    assert set(cka["split"]) == {"test"} and set(cka["batch_size"]) == {8}


def test_a_runs_own_matrix_is_symmetric_with_a_unit_diagonal(cka_study_dir):
    from widthlab.study import load_results

    layers = load_results(cka_study_dir).cka.query("kind == 'layers'")
    for _, run in layers.groupby("run_a"):
        matrix = run.pivot(index="layer_a", columns="layer_b", values="cka")
        assert np.allclose(np.diag(matrix), 1.0, atol=1e-9)
        assert np.allclose(matrix, matrix.T, atol=1e-9)
        assert matrix.loc["relu1", "relu2"] < 1 - 1e-6  # two different layers


def test_a_stored_pair_is_the_cka_of_its_runs_either_way_round(cka_study_dir):
    from widthlab.data import load_data
    from widthlab.measure.cka import cka
    from widthlab.study import load_results
    from widthlab.study.build import checkpoint_model
    from widthlab.train.checkpoint import load_checkpoint

    stored = load_results(cka_study_dir).cka.query("kind == 'widths'")
    first = stored.iloc[0]

    def model(run_id):
        path = cka_study_dir / "checkpoints" / f"{run_id}.pt"
        return checkpoint_model(load_checkpoint(path), str(path), import_code=True)

    test = load_data("synthetic", seed=0, input_dim=10, n_train=64, n_val=32, n_test=32).split("test")
    swapped = cka(model(first.run_b), model(first.run_a), Subset(test, range(32)), ["relu1", "relu2"],
                  ["relu1", "relu2"], batch_size=8)
    swapped = swapped[swapped["layer_a"] == swapped["layer_b"]].set_index("layer_a")["cka"]
    mine = stored[stored["run_a"] == first.run_a].set_index("layer_a")["cka"]
    assert np.allclose(mine.sort_index(), swapped.sort_index(), atol=1e-10)


def test_a_rerun_computes_nothing_again_and_a_lost_pair_alone(copy, counted, capsys):
    from widthlab.cli import main
    from widthlab.study import load_results, run_study

    before = load_results(copy).cka
    run_study(_config(), copy, progress=False, report=False)  # nothing trained, nothing computed
    assert counted == []
    assert main(["cka", str(copy), "--batch-size", "8", "--allow-code"]) == 0
    assert counted == [] and "computed 0 pair(s), 8 already stored" in capsys.readouterr().out
    with sqlite3.connect(copy / "widthlab.sqlite") as db:
        db.execute("DELETE FROM cka WHERE kind = 'replicates' AND run_a LIKE '%w0.5%'")  # a whole pair
    db.close()
    assert main(["cka", str(copy), "--batch-size", "8", "--allow-code"]) == 0
    assert len(counted) == 1
    after = load_results(copy).cka
    pd.testing.assert_frame_equal(before, after)  # same rows, same values, same order
    # Another setting is computed again and replaces the pair's rows; turning CKA off retrains nothing.
    assert main(["cka", str(copy), "--batch-size", "16", "--parts", "widths", "--allow-code"]) == 0
    assert len(counted) == 3
    assert sorted(set(load_results(copy).cka.query("kind == 'widths'")["batch_size"])) == [16]
    run_study(_config("measure.cka=false"), copy, progress=False, report=False)
    assert len(counted) == 3


def test_load_results_reads_a_store_without_the_cka_table(copy):
    from widthlab.study import load_results
    from widthlab.study.store import CKA_COLUMNS

    with sqlite3.connect(copy / "widthlab.sqlite") as db:
        db.execute("DROP TABLE cka")
    db.close()
    cka = load_results(copy).cka
    assert cka.empty and list(cka.columns) == list(CKA_COLUMNS)


def test_the_report_draws_the_figures_and_the_line_only_with_cka_rows(cka_study_dir, copy, capsys):
    from widthlab.cli import main

    summary = (cka_study_dir / "summary.md").read_text()
    assert "## Representations across widths (CKA)" in summary
    line = next(row for row in summary.splitlines() if row.startswith("- `default`: 1/2x and 1/4x representations"))
    assert "CKA " in line and " ± " in line and "vs replicate baseline" in line
    for name in ("cka_layers.png", "cka_width.png"):
        assert (cka_study_dir / "figures" / name).stat().st_size > 1000
        assert f"figures/{name}" in summary
    with sqlite3.connect(copy / "widthlab.sqlite") as db:
        db.execute("DELETE FROM cka")
    db.close()
    assert main(["report", str(copy), "--formats", "png"]) == 0
    assert "(CKA)" not in (copy / "summary.md").read_text()
    assert not (copy / "figures" / "cka_width.png").exists() and not (copy / "figures" / "cka_layers.png").exists()


@pytest.mark.parametrize("setting, message", [
    ("measure.cka.widths=maybe", "measure.cka.widths: Input should be a valid boolean"),
    ("measure.cka=3", "measure.cka: must be true, false or a mapping"),
    ("measure.cka={width: true}", "unknown key 'measure.cka.width'"),
    ("measure.cka={layers: true, batch_size: 2}", "measure.cka.batch_size"),
])
def test_a_bad_cka_setting_is_one_clear_error(setting, message):
    from widthlab.study import load_config

    with pytest.raises(WidthlabError, match=message.replace("(", r"\(")):
        load_config("mlp-10d", [*TINY_STUDY, setting])


def test_the_cka_command_refuses_bad_input_in_one_line(copy, tmp_path, capsys):
    from widthlab.cli import main

    for argv, message in ((["cka", str(copy), "--parts", "widths,nope"], "unknown CKA part 'nope'"),
                          (["cka", str(tmp_path / "nowhere")], "does not exist"),
                          (["cka", str(copy)], "module:function")):  # the stored model is code: --allow-code
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cka_is_not_part_of_a_runs_identity():
    from widthlab.study.runner import plan_runs

    on, off = plan_runs(_config()), plan_runs(_config("measure.cka=false"))
    assert [s.config.identity() for s in on] == [s.config.identity() for s in off]
    assert on[0].config.measure.cka.parts() == ("widths", "replicates", "layers")


def _rows(kind, width_a, width_b, rep_a, rep_b, value, layer="relu1"):
    return dict(variant="v", kind=kind, run_a=f"v-w{width_a}-r{rep_a}", run_b=f"v-w{width_b}-r{rep_b}",
                width_a=width_a, width_b=width_b, replicate_a=rep_a, replicate_b=rep_b, layer_a=layer, layer_b=layer,
                cka=value)


def test_the_summary_line_compares_1x_with_the_widest_and_says_when_there_is_no_baseline():
    from widthlab.report.cka import summary_line, width_table

    rows = pd.DataFrame([_rows("widths", 0.5, 4.0, 0, 0, 0.5), _rows("widths", 1.0, 4.0, 0, 0, 0.8),
                         _rows("widths", 1.0, 4.0, 1, 1, 0.9), _rows("replicates", 4.0, 4.0, 0, 1, 0.95),
                         _rows("replicates", 4.0, 4.0, 0, 2, 0.97)])
    line = summary_line(rows, "v")
    assert line.startswith("4x and 1x representations: CKA 0.85 ± 0.05 (2 replicate-matched")
    assert "vs replicate baseline 0.96 ± 0.01 (at 4x, 2 pair(s))" in line
    table = width_table(rows).set_index("width")
    assert table.loc[0.5, "to_widest"] == 0.5 and table.loc[0.5, "baseline_pairs"] == 0
    one_replicate = rows[rows["kind"] == "widths"]
    assert "no replicate baseline at the widest width (one replicate)" in summary_line(one_replicate, "v")
