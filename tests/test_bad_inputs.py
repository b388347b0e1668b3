"""Bad input to `widthlab run`: one line naming the value, exit 2, no traceback, and nothing registered, so the
corrected command starts afresh."""

import pytest

from widthlab.cli import main
from widthlab.errors import WidthlabError
from widthlab.study import load_config, load_results, run_study
from widthlab.study import runner

TINY = ["grid.select=null", "grid.widths=[0.25]", "grid.replicates=1", "train.epochs=1", "data.n_train=64", "data.n_val=32",
        "data.n_test=32", "measure.samplings=1", "measure.levels=3", "grid.variants={'default': {}}"]

CASES = [
    (["--set", "train.lr=.inf"], "train.lr: Input should be a finite number"),
    (["--set", "train.lr=.nan"], "train.lr: Input should be a finite number"),
    (["--set", "train.epochs=true"], "epochs must be a number, got True"),
    (["--set", "measure.samplings=true"], "samplings must be a number"),
    (["--set", "grid.widths=[1e-9]"], "outside 0.000976562 … 1024"),
    (["--set", "grid.widths=[1e6]"], "outside 0.000976562 … 1024"),
    (["--set", "grid.variants={a: {}, a: {}}"], "key 'a' is given twice"),
    (["--set", "data.n_train=0"], "n_train must be a positive integer, got 0"),
    (["--set", "model.name=badmod:build"], "model 'badmod:build' raised RuntimeError: my model is broken"),
    (["--set", "model.name=syntaxmod:build"], "cannot import module 'syntaxmod' (SyntaxError"),
    (["--set", "data.name=baddata:load"], "data set 'baddata:load' raised KeyError"),
    (["--set", "train.lr=[1"], "value is not valid YAML"),
    (["--set", "name=" + "a" * 300], "study name is 300 bytes long; at most 200"),
    (["--set", "name=" + "é" * 101], "study name is 202 bytes long; at most 200"),
]


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    (tmp_path / "badmod.py").write_text("def build(width, **kw):\n    raise RuntimeError('my model is broken\\nmore')\n")
    (tmp_path / "syntaxmod.py").write_text("def build(width, **kw)\n")
    (tmp_path / "baddata.py").write_text("def load(seed, root, **kw):\n    return {}['no such split']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("extra, message", CASES)
def test_bad_run_input_is_one_line_and_registers_nothing(extra, message, user_code, tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["run", "mlp-10d", "--quiet", "--out", str(out), *[a for o in TINY for a in ("--set", o)],
                 *extra]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (out / "widthlab.sqlite").exists()


def test_the_corrected_command_is_accepted_after_a_bad_one(user_code, tmp_path):
    out = tmp_path / "study"
    with pytest.raises(WidthlabError, match="raised RuntimeError"):
        run_study(load_config("mlp-10d", TINY + ["model.name=badmod:build"]), out, progress=False, report=False)
    run_study(load_config("mlp-10d", TINY), out, progress=False, report=False)
    assert load_results(out).runs["status"].tolist() == ["done"]


def test_a_model_too_big_for_memory_is_refused_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "available_memory", lambda device: 20 * 2 ** 10)  # 20 KiB free
    with pytest.raises(WidthlabError, match=r"mlp at width 4 has 6,658 parameters: .* more than the 0.0 GiB"):
        run_study(load_config("mlp-10d", TINY + ["grid.widths=[0.25, 4]"]), tmp_path,
                  progress=False, report=False)
    assert not (tmp_path / "widthlab.sqlite").exists()


def test_duplicate_keys_in_a_config_file(tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_text("name: a\ntrain: {lr: 0.1}\ntrain: {lr: 0.2}\n")
    assert main(["run", str(path), "--dry-run"]) == 2
    assert "key 'train' is given twice at line 3, column 1" in capsys.readouterr().err
