"""Bad input to `widthlab run`: one line naming the value, exit 2, no traceback, and nothing registered, so the
corrected command starts afresh."""

import pytest

from widthlab import memory
from widthlab.cli import main
from widthlab.errors import WidthlabError
from widthlab.study import load_config, load_results, run_study

TINY = ["grid.select=null", "grid.widths=[0.25]", "grid.replicates=1", "train.epochs=1", "data.n_train=64", "data.n_val=32",
        "data.n_test=32", "measure.samplings=1", "measure.levels=3", "grid.variants={'default': {}}"]

# "Billion laughs": ten nested lists of nine aliases each, 9**10 values from a few hundred bytes.
ALIAS_BOMB = "&a0 [x, x, x, x, x, x, x, x, x]"
for _level in range(1, 10):
    ALIAS_BOMB = f"&a{_level} [{ALIAS_BOMB}" + f", *a{_level - 1}" * 8 + "]"

CASES = [
    (["--set", "train.lr=.inf"], "train.lr: Input should be a finite number"),
    (["--set", "train.lr=.nan"], "train.lr: Input should be a finite number"),
    (["--set", "train.epochs=true"], "epochs must be a number, got True"),
    (["--set", "measure.samplings=true"], "samplings must be a number"),
    (["--set", "grid.widths=[1e-9]"], "outside 0.000976562 … 1024"),
    (["--set", "grid.widths=[1e6]"], "outside 0.000976562 … 1024"),
    (["--set", "grid.variants={a: {}, a: {}}"], "key 'a' is given twice"),
    (["--set", "grid.widths=[0.25, 0.2500001]"], "widths 0.25 and 0.2500001 both name runs 'w0.25'"),
    (["--set", "data.n_train=0"], "n_train must be a positive integer, got 0"),
    (["--set", "model.name=badmod:build"], "model 'badmod:build' raised RuntimeError: my model is broken"),
    (["--set", "model.name=syntaxmod:build"], "cannot import module 'syntaxmod' (SyntaxError"),
    (["--set", "data.name=baddata:load"], "data set 'baddata:load' raised KeyError"),
    (["--set", "train.lr=[1"], "value is not valid YAML"),
    # Unbounded counts: each refused before anything is planned or allocated, naming its bound.
    (["--set", f"train.epochs={ALIAS_BOMB}"], "expand to more than 10,000 values, widthlab's bound on YAML aliases"),
    (["--set", "measure.levels=10000000000"], "levels of 'zero' must be at most 1,000 (the bound on levels)"),
    (["--set", "measure.samplings=10000000000"], "measure.samplings: Input should be less than or equal to 1000"),
    (["--set", "grid.replicates=99999999999999999999999"], "grid.replicates: Input should be less than or equal to "
                                                           "1000"),
    (["--set", "grid.widths=[0.25, 0.5, 1, 2, 4]", "--set", "grid.replicates=1000", "--set",
      "grid.variants={a: {}, b: {}, c: {}, d: {}, e: {}, f: {}, g: {}, h: {}, i: {}, j: {}, k: {}, l: {}, m: {}, "
      "n: {}, o: {}, p: {}, q: {}, r: {}, s: {}, t: {}, u: {}}"],
     "the grid is 105,000 runs (5 widths × 21 variants × 1 candidates × 1,000 replicates), more than 100,000"),
    (["--set", "grid.select={train.lr: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], train.batch_size: [1, 2, 3, 4, 5, 6, 7, 8, "
      "9, 10], train.epochs: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], train.weight_decay: [1, 2, 3, 4, 5, 6, 7, 8, 9, "
      "10]}"], "10,000 candidates, more than 1,000 (the bound on "
                                                                  "candidates)"),
    (["--set", "threads=100000"], "the bound on threads"),
    # The preflight pushes the data's shape through each model (on the meta device) before registering anything.
    (["--set", "model.input_dim=5"], "mlp at width 0.25 cannot run on the data's inputs of shape (10,): RuntimeError"),
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
    monkeypatch.setattr(memory, "available_memory", lambda device: 100 * 2 ** 10)  # 100 KiB: the data, not 4x
    with pytest.raises(WidthlabError, match=r"mlp at width 4 has 6,658 parameters: .* more than the 0.0 GiB"):
        run_study(load_config("mlp-10d", TINY + ["grid.widths=[0.25, 4]"]), tmp_path,
                  progress=False, report=False)
    assert not (tmp_path / "widthlab.sqlite").exists()


def test_data_too_big_for_memory_is_refused_before_it_is_drawn(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(memory, "available_memory", lambda device: 2 ** 30)  # 1 GiB free
    out = tmp_path / "study"
    assert main(["run", "mlp-10d", "--quiet", "--out", str(out), *[a for o in TINY for a in ("--set", o)],
                 "--set", "data.n_test=100000000"]) == 2
    err = capsys.readouterr().err
    assert "synthetic: 100,000,096 examples of 10 inputs needs about 4.5 GiB, more than the 1.0 GiB available" in err
    assert not (out / "widthlab.sqlite").exists()


def test_duplicate_keys_in_a_config_file(tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_text("name: a\ntrain: {lr: 0.1}\ntrain: {lr: 0.2}\n")
    assert main(["run", str(path), "--dry-run"]) == 2
    assert "key 'train' is given twice at line 3, column 1" in capsys.readouterr().err


def test_an_alias_bomb_in_a_config_file_is_refused(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(f"name: bomb\ntrain:\n  epochs: {ALIAS_BOMB}\n")
    assert len(path.read_bytes()) < 500
    assert main(["run", str(path), "--dry-run"]) == 2
    assert "its aliases (*name) expand to more than 10,000 values" in capsys.readouterr().err


def test_aliases_within_the_bound_read_as_safe_load_reads_them():
    from widthlab.study.yaml_io import safe_load

    assert safe_load("a: &x {lr: 0.1}\nb: *x\nc: [*x, *x]") == {"a": {"lr": 0.1}, "b": {"lr": 0.1},
                                                                  "c": [{"lr": 0.1}, {"lr": 0.1}]}
    with pytest.raises(Exception, match="refers to itself"):
        safe_load("a: &x [1, *x]")


def test_the_thread_bound_follows_the_machine(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 3)
    assert load_config("mlp-10d", ["threads=12"]).threads == 12
    with pytest.raises(WidthlabError, match=r"threads: must be at most 12 \(4 per core of this machine's 3"):
        load_config("mlp-10d", ["threads=13"])


# `widthlab analyze` of a hand-edited checkpoint or a bad data file ----------------------------------------------------

def _study_checkpoint(path, edit):
    """A checkpoint as a study's run writes it (mlp at width 0.25 on 10-d synthetic data), then `edit`ed."""
    import torch

    from widthlab.models import create_model
    from widthlab.train.checkpoint import save_checkpoint

    model = create_model("mlp", 0.25, input_dim=10, num_classes=2)
    state = {"model": model.state_dict(), "train_config": {"early_stopping": False},
             "meta": {"run_id": "default-w0.25-r0", "width": 0.25, "replicate": 0, "num_classes": 2,
                      "model": {"name": "mlp", "init": "glorot_normal", "sigma": None, "input_dim": 10},
                      "data": {"name": "synthetic", "root": None, "n_train": 64, "n_val": 32, "n_test": 32},
                      "study_seed": 0}}
    edit(state)
    save_checkpoint(path, state)
    torch.save({"x": torch.randn(20, 10), "y": torch.zeros(7, dtype=torch.long)}, path.parent / "xy.pt")
    return path


ANALYZE_CASES = [
    (lambda s: s["meta"].update(width=2.0), [], "its weights do not fit the model its meta describes (mlp at "
     "width 2): fc1.weight is (32, 10) in the file, (256, 10) in the model"),
    (lambda s: s.pop("model"), [], "is damaged: its 'model' is missing"),
    (lambda s: s["meta"].update(study_seed="abc"), [], "meta.study_seed must be an integer, got 'abc'"),
    (lambda s: s.update(train_config="x"), [], "is damaged: its 'train_config' is not a mapping"),
    (lambda s: s["meta"]["model"].update(input_dim=10 ** 12), [], "fc1.weight is (32, 10) in the file, "
     "(32, 1000000000000) in the model"),
    (lambda s: s["meta"].update(num_classes=10 ** 9), [], "readout.weight is (2, 32) in the file, (1000000000, 32)"),
    (lambda s: s["meta"]["data"].update(n_test=10 ** 10), [], "synthetic: 10,000,000,096 examples of 10 inputs "
     "needs about 447.0 GiB, more than the 8.0 GiB available"),
    (lambda s: None, ["--data", "{dir}/xy.pt"], "the inputs x have 20 examples but the labels y have 7"),
    (lambda s: None, ["--levels", "100000000000"], "--levels must be at most 1,000 (the bound on levels)"),
    (lambda s: None, ["--samplings", "100000000000"], "--samplings must be at most 1,000 (the bound on samplings)"),
]


@pytest.mark.parametrize("edit, extra, message", ANALYZE_CASES, ids=[m for _, _, m in ANALYZE_CASES])
def test_bad_analyze_input_is_one_line_and_writes_nothing(edit, extra, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(memory, "available_memory", lambda device: 8 * 2 ** 30)  # the same on every machine
    checkpoint = _study_checkpoint(tmp_path / "ck.pt", edit)
    out = tmp_path / "analysis"
    assert main(["analyze", str(checkpoint), *[a.format(dir=tmp_path) for a in extra], "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_the_unedited_checkpoint_is_analysed(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda device: 8 * 2 ** 30)
    checkpoint = _study_checkpoint(tmp_path / "ck.pt", lambda s: None)
    assert main(["analyze", str(checkpoint), "--levels", "3", "--samplings", "1", "--quiet",
                 "--out", str(tmp_path / "analysis")]) == 0
    assert (tmp_path / "analysis" / "analysis.csv").is_file()


def test_ctrl_c_in_analyze_does_not_promise_a_resume(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("widthlab.external.load_model", interrupted)
    assert main(["analyze", str(_study_checkpoint(tmp_path / "ck.pt", lambda s: None))]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "widthlab: interrupted; the analysis did not finish and nothing is resumed: rerun the " \
                          "command to measure again"
