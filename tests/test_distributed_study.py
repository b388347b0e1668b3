"""A study of several runs under torchrun (2 gloo processes) whose measurement outlasts the training group's
timeout: every process measures its share, none waits idle in a training collective, and the stored numbers
are the single process's."""

import os
import shutil
import socket
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from widthlab import load_results, run_study
from widthlab.study.config import load_config

# A training collective may wait TIMEOUT seconds; each (weights, perturbation) piece of a measurement sleeps
# about PIECE_SLEEP seconds (SLOW_MODEL), so measuring one run, 4 pieces (a snapshot and the trained weights,
# two perturbations), takes twice TIMEOUT. Before the fix rank 1 waited in run 2's DDP constructor while
# rank 0 measured run 1 alone: "Timed out waiting 3000ms".
TIMEOUT = 3
PIECE_SLEEP = 1.5
SLOW_MODEL = """
import os, time
from widthlab.models import create_model


def build(width, num_classes=None, **options):
    model = create_model("mlp", width, num_classes=num_classes, **options)
    delay = float(os.environ.get("SLOW_MEASURE_SECONDS", "0"))

    def slow(module, args):  # a measurement puts forward hooks on relu1; training and evaluation do not
        if delay and module._forward_hooks:
            time.sleep(delay)
    model.relu1.register_forward_pre_hook(slow)
    return model
"""
DRIVER = """
import sys
from widthlab import run_study
from widthlab.train.distributed import shutdown

try:
    run_study(sys.argv[1], sys.argv[2], progress=False, report=False)  # no figures: seconds saved
finally:
    shutdown()
"""
STUDY = {"name": "ddp-measure", "data": {"name": "synthetic", "n_train": 128, "n_val": 48, "n_test": 37},
         "model": {"name": "slowmlp:build", "init": "normal", "sigma": 0.1},
         "train": {"epochs": 2, "batch_size": 32, "snapshot_epochs": [1]},
         "measure": {"perturbations": ["zero", "mean"], "levels": 3, "samplings": 2},
         "grid": {"widths": [0.5, 1], "replicates": 1}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _counting_hooked_passes(monkeypatch) -> list[int]:
    """The hooked passes of relu1 (those SLOW_MODEL sleeps in) of each `analyze` call of a study, appended."""
    from widthlab.study import runs

    counted = []
    original = runs.analyze

    def counting(model, *args, **kwargs):
        calls = []
        handle = model.relu1.register_forward_pre_hook(lambda m, a: calls.append(1) if m._forward_hooks else None)
        try:
            return original(model, *args, **kwargs)
        finally:
            handle.remove()
            counted.append(len(calls))

    monkeypatch.setattr(runs, "analyze", counting)
    return counted


@pytest.mark.slow
def test_torchrun_measures_in_shares_past_the_timeout_and_matches_one_process(tmp_path, monkeypatch):
    (tmp_path / "slowmlp.py").write_text(SLOW_MODEL)
    (tmp_path / "driver.py").write_text(DRIVER)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(STUDY))
    passes = _counting_hooked_passes(monkeypatch)
    run_study(load_config({**STUDY, "grid": {"widths": [0.5], "replicates": 1}}), tmp_path / "count",
              progress=False, report=False)
    assert len(passes) == 2 and min(passes) > 0  # a snapshot and the trained weights, both perturbations at once
    delay = PIECE_SLEEP / (min(passes) / 2)  # a piece measures one perturbation: about half the passes
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "WIDTHLAB_DDP_TIMEOUT": str(TIMEOUT), "SLOW_MEASURE_SECONDS": f"{delay:.6f}"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={_free_port()}", str(tmp_path / "driver.py"), str(config), str(tmp_path / "ddp")],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # One process resumes the DDP runs' finished checkpoints (DDP's averaged gradients round differently, so
    # only the same weights give the same numbers) and measures and evaluates them alone.
    shutil.copytree(tmp_path / "ddp" / "checkpoints", tmp_path / "single" / "checkpoints")
    run_study(load_config(STUDY), tmp_path / "single", progress=False, report=False)

    ddp, single = load_results(tmp_path / "ddp"), load_results(tmp_path / "single")
    assert set(ddp.runs["status"]) == {"done"} and len(ddp.runs) == 2
    for checkpoint in (tmp_path / "ddp" / "checkpoints").iterdir():  # resumed finished: nothing trained again
        assert (tmp_path / "single" / "checkpoints" / checkpoint.name).read_bytes() == checkpoint.read_bytes()
    # Snapshot and trained weights, both perturbations: the same rows, in the same order, with the same values,
    # whichever rank measured them.
    assert len(ddp.snapshots) and set(ddp.snapshots["epoch"]) == {1.0}
    pd.testing.assert_frame_equal(ddp.metrics, single.metrics, check_exact=True)
    pd.testing.assert_frame_equal(ddp.snapshots, single.snapshots, check_exact=True)
    for split in ("train_acc", "val_acc", "test_acc"):  # evaluation sharded across ranks: counts summed exactly
        assert ddp.runs[split].tolist() == single.runs[split].tolist()


@pytest.mark.parametrize("value", ["0", "-5", "ten", "inf", "nan"])
def test_a_bad_timeout_is_one_error_naming_it(monkeypatch, value):
    from widthlab.errors import WidthlabError
    from widthlab.train.distributed import ddp_timeout

    monkeypatch.setenv("WIDTHLAB_DDP_TIMEOUT", value)
    with pytest.raises(WidthlabError, match=f"WIDTHLAB_DDP_TIMEOUT='{value}': must be a number of seconds > 0"):
        ddp_timeout()


def test_the_timeout_is_seconds_or_torchs_default(monkeypatch):
    from datetime import timedelta

    from widthlab.train.distributed import ddp_timeout

    monkeypatch.delenv("WIDTHLAB_DDP_TIMEOUT", raising=False)
    assert ddp_timeout() is None
    monkeypatch.setenv("WIDTHLAB_DDP_TIMEOUT", "2.5")
    assert ddp_timeout() == timedelta(seconds=2.5)
