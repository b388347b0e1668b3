"""Nothing widthlab loads runs code: a checkpoint carrying a pickle payload is refused and the payload never runs."""

from pathlib import Path

import pytest
import torch

from widthlab.cli import main
from widthlab.errors import WidthlabError
from widthlab.study import load_config, run_study
from widthlab.train.checkpoint import load_checkpoint

TINY = ["grid.select=null", "grid.widths=[0.25]", "grid.replicates=1", "train.epochs=2", "data.n_train=64", "data.n_val=32",
        "data.n_test=32", "measure.samplings=1", "measure.levels=3", "grid.variants={'default': {}}"]


class Payload:
    """Unpickling this object creates the file `marker`: proof that a load ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def _poison(checkpoint: Path, marker: Path) -> None:
    state = torch.load(checkpoint, weights_only=True)  # a real widthlab checkpoint ...
    state["meta"]["note"] = Payload(marker)           # ... with a payload where free-form metadata lives
    torch.save(state, checkpoint)


@pytest.fixture
def study(tmp_path):
    out = tmp_path / "study"
    run_study(load_config("mlp-10d", TINY), out, progress=False, report=False)
    (checkpoint,) = (out / "checkpoints").glob("*.pt")
    return out, checkpoint


def test_a_legitimate_checkpoint_loads_without_unpickling_objects(study):
    _, checkpoint = study
    state = load_checkpoint(checkpoint)
    assert state["meta"]["model"]["name"] == "mlp" and isinstance(state["versions"]["torch"], str)
    assert torch.equal(state["rng"], torch.load(checkpoint, weights_only=True)["rng"])
    state["versions"]["torch"] = torch.__version__  # a TorchVersion, as widthlab 0.1 stored it: still loads
    torch.save(state, checkpoint)
    assert load_checkpoint(checkpoint)["versions"]["torch"] == str(torch.__version__)


def test_analyze_refuses_a_checkpoint_with_a_payload(study, tmp_path, capsys):
    _, checkpoint = study
    marker = tmp_path / "payload-ran"
    _poison(checkpoint, marker)
    assert main(["analyze", str(checkpoint), "--data", "synthetic", "--data-opt", "input_dim=10",
                 "--out", str(tmp_path / "a.csv")]) == 2
    err = capsys.readouterr().err
    assert "weights_only" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_resume_refuses_a_checkpoint_with_a_payload(study, tmp_path):
    import sqlite3

    out, checkpoint = study
    with sqlite3.connect(out / "widthlab.sqlite") as db:  # the run is unfinished: its checkpoint will be resumed
        db.execute("UPDATE runs SET status = 'running'")
        db.execute("DELETE FROM metrics")
    marker = tmp_path / "payload-ran"
    _poison(checkpoint, marker)
    with pytest.raises(WidthlabError, match="weights_only"):
        run_study(load_config("mlp-10d", TINY), out, progress=False, report=False)
    assert not marker.exists()
    with pytest.raises(WidthlabError, match="weights_only"):
        load_checkpoint(checkpoint)
    assert not marker.exists()


def test_report_imports_user_code_named_by_a_store_only_when_allowed(tmp_path, monkeypatch):
    import json
    import sys

    import pandas as pd

    from widthlab.study.build import parameter_counts

    marker = tmp_path / "imported"
    (tmp_path / "storecode.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
                                           "def build(width, **kw):\n    raise RuntimeError('not for counting')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "storecode", raising=False)
    runs = pd.DataFrame({"variant": ["a"], "width": [1.0],
                         "config": [json.dumps({"model": {"name": "storecode:build"}})]})
    assert parameter_counts(runs) is None
    assert not marker.exists()
    assert parameter_counts(runs, import_code=True) is None  # imported (with consent), then failed to build
    assert marker.exists()


def test_a_cifar10_batch_that_names_code_is_refused(tmp_path):
    import pickle

    from widthlab.data.cifar10 import read_batch

    marker = tmp_path / "payload-ran"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Payload(marker), b"labels": [0]}))
    with pytest.raises(WidthlabError, match="refusing to load pathlib"):
        read_batch(path)
    assert not marker.exists()


@pytest.mark.parametrize("override", ["name=../../escaped", "name=/tmp/escaped", "name=..", "name=a\\\\b"])
def test_study_names_that_would_leave_the_runs_folder_are_refused(override, tmp_path, capsys):
    with pytest.raises(WidthlabError, match="plain name"):
        load_config("mlp-10d", [override])
    assert main(["run", "mlp-10d", "--set", override, "--out", str(tmp_path / "s"), "--dry-run"]) == 2
    assert "plain name" in capsys.readouterr().err
    assert not (tmp_path / "s").exists() and not (tmp_path.parent / "escaped").exists()


@pytest.mark.parametrize("variant", ["../../../v", "/tmp/v", "k=1/4", "50%"])
def test_variant_names_that_look_like_paths_stay_inside_the_checkpoints_folder(variant, tmp_path):
    out = tmp_path / "deep" / "study"
    tiny = [o for o in TINY if not o.startswith("grid.variants")] + [f"grid.variants={{'{variant}': {{}}}}"]
    run_study(load_config("mlp-10d", tiny), out, progress=False, report=False)
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.pt"))
    assert len(written) == 1 and written[0].parent == (out / "checkpoints").relative_to(tmp_path)
    assert not (Path("/tmp/v-w0.25-r0.pt")).exists()


def test_plain_names_with_dots_and_equals_are_fine():
    cfg = load_config("mlp-10d", ["name=my.study-2", "grid.variants={'sigma=0.01': {}, 'lr.1': {}}"])
    assert cfg.name == "my.study-2" and set(cfg.grid.variants) == {"sigma=0.01", "lr.1"}
