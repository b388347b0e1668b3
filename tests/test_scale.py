"""Studies at scale: executors agree, a SIGKILLed study resumes exactly, status / analyze commands."""

import importlib.util
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
import torch
import yaml

from widthlab import WidthlabError, load_results, run_study
from widthlab.cli import main
from widthlab.study.config import load_config
from widthlab.study.executors import gpu_for_worker

TINY = {"name": "tiny", "data": {"name": "synthetic", "n_train": 200, "n_val": 100, "n_test": 100},
        "model": {"name": "mlp", "init": "normal", "sigma": 0.1},
        "train": {"epochs": 3}, "measure": {"perturbations": ["zero", "mean"], "levels": 5, "samplings": 2},
        "grid": {"widths": [0.25, 0.5], "replicates": 1,
                 "variants": {"a": {}, "b": {"model": {"sigma": 0.01}}}}}
KEY = ["run_id", "layer", "metric", "perturbation", "level", "sampling"]


def _metrics(directory):
    return load_results(directory).metrics.sort_values(KEY).reset_index(drop=True)


@pytest.fixture(scope="module")
def local_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    run_study(load_config(TINY), out, progress=False, report=False)
    return out


@pytest.mark.slow
def test_processes_executor_matches_local(local_study, tmp_path):
    run_study(load_config(TINY), tmp_path, executor="processes", workers=2, progress=False, report=False)
    pd.testing.assert_frame_equal(_metrics(local_study), _metrics(tmp_path))
    runs = load_results(tmp_path).runs
    assert set(runs["status"]) == {"done"} and len(runs) == 4


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is an optional extra (widthlab[ray])")
def test_ray_executor_matches_local(local_study, tmp_path):
    run_study(load_config(TINY), tmp_path, executor="ray", progress=False, report=False)
    pd.testing.assert_frame_equal(_metrics(local_study), _metrics(tmp_path))


def test_gpus_are_dealt_round_robin_to_workers():
    assert [gpu_for_worker(w, 2) for w in range(5)] == ["0", "1", "0", "1", "0"]
    assert gpu_for_worker(3, 0) is None
    # A driver started with CUDA_VISIBLE_DEVICES=2,3 shares out GPUs 2 and 3, not the machine's 0 and 1.
    assert [gpu_for_worker(w, 2, "2,3") for w in range(3)] == ["2", "3", "2"]
    assert [gpu_for_worker(w, 2, "GPU-5a1f, GPU-77c2") for w in range(2)] == ["GPU-5a1f", "GPU-77c2"]


def test_unknown_executor_is_a_clear_error(tmp_path):
    with pytest.raises(WidthlabError, match="unknown executor 'slurm'"):
        run_study(load_config(TINY), tmp_path, executor="slurm")
    with pytest.raises(WidthlabError, match="workers must be a positive integer"):
        run_study(load_config(TINY), tmp_path / "w", executor="processes", workers=0)


# Slow enough per run (about a second) that kills land inside runs, not only between them.
CRASH = {**TINY, "name": "crash", "data": {"name": "synthetic", "n_train": 2000, "n_val": 200, "n_test": 200},
         "train": {"epochs": 12},
         "grid": {"widths": [0.5, 1, 2], "replicates": 1, "variants": {"a": {}, "b": {"model": {"sigma": 0.01}}}}}


def _start(config_path, out):
    # A checkpoint after every epoch, so a kill can land between any two epochs of a run.
    return subprocess.Popen([sys.executable, "-m", "widthlab.cli", "run", str(config_path), "--out", str(out),
                             "--quiet", "--checkpoint-every", "0"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _done_runs(out) -> int:
    try:
        with sqlite3.connect(f"file:{out / 'widthlab.sqlite'}?mode=ro", uri=True) as db:
            return db.execute("SELECT count(*) FROM runs WHERE status = 'done'").fetchone()[0]
    except sqlite3.Error:
        return 0


def _wait(predicate, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"study ended before the kill point: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.02)


@pytest.mark.slow
def test_sigkill_at_any_point_then_rerun_gives_exactly_the_uninterrupted_results(tmp_path):
    config_path = tmp_path / "crash.yaml"
    config_path.write_text(yaml.safe_dump(CRASH))
    reference = tmp_path / "reference"
    run_study(load_config(CRASH), reference, progress=False, report=False)

    out = tmp_path / "killed"
    checkpoints = out / "checkpoints"
    kill_points = [
        lambda: checkpoints.is_dir() and any(checkpoints.glob("*.pt")),  # inside the first run
        lambda: _done_runs(out) >= 2,  # between or inside later runs
        lambda: _done_runs(out) >= 4 and len(list(checkpoints.glob("*.pt"))) >= 5,  # inside the fifth run
    ]
    for point in kill_points:
        proc = _start(config_path, out)
        _wait(point, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc = _start(config_path, out)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()

    final, expected = load_results(out), load_results(reference)
    assert len(final.runs) == 6 and set(final.runs["status"]) == {"done"}
    pd.testing.assert_frame_equal(_metrics(out), _metrics(reference))  # no row lost, none duplicated
    cols = ["run_id", "train_acc", "val_acc", "test_acc", "epochs", "best_epoch"]
    pd.testing.assert_frame_equal(final.runs[cols], expected.runs[cols])
    pd.testing.assert_frame_equal(final.history.sort_values(["run_id", "epoch"]).reset_index(drop=True),
                                  expected.history.sort_values(["run_id", "epoch"]).reset_index(drop=True))
    assert "resumed from epoch" in (out / "widthlab.log").read_text()


def test_a_second_study_process_on_the_same_directory_is_refused(tmp_path):
    config_path = tmp_path / "crash.yaml"
    config_path.write_text(yaml.safe_dump(CRASH))
    out = tmp_path / "busy"
    proc = _start(config_path, out)
    try:
        _wait(lambda: (out / "checkpoints").is_dir(), proc)
        with pytest.raises(WidthlabError, match="another widthlab process"):
            run_study(load_config(CRASH), out, progress=False)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The first study's store is intact and readable (an unreadable one raises here): its 6 runs registered.
    with sqlite3.connect(f"file:{out / 'widthlab.sqlite'}?mode=ro", uri=True) as db:
        statuses = [status for (status,) in db.execute("SELECT status FROM runs")]
    assert len(statuses) == 6 and set(statuses) <= {"pending", "running", "done"}


def test_status_prints_every_run(local_study, capsys):
    assert main(["status", str(local_study)]) == 0
    out = capsys.readouterr().out
    assert "4 runs: 4 done" in out and "a-w0.25-r0" in out and "b-w0.5-r0" in out


def test_analyze_a_model_widthlab_did_not_build(tmp_path, monkeypatch, capsys):
    (tmp_path / "foreign_net.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn
        def build():
            torch.manual_seed(0)
            return nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Conv2d(6, 8, 3), nn.ReLU(),
                                 nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    x = torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    torch.save({"x": x, "y": torch.arange(40) % 3}, tmp_path / "inputs.pt")
    out = tmp_path / "analysis"
    assert main(["analyze", "foreign_net:build", "--data", str(tmp_path / "inputs.pt"), "--samplings", "2",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    frame = pd.read_csv(out / "analysis.csv")
    assert set(frame["layer"]) == {"1", "3", "all"}  # default rule: every ReLU, plus the joint scope
    assert frame.query("layer == '1' and metric == 'n_units'")["value"].item() == 6
    assert "accuracy" in set(frame["metric"])  # labels came with the .pt file
    assert (out / "figures" / "layer_1.png").stat().st_size > 1000
    assert "compressibility" in printed


def test_analyze_a_study_checkpoint_matches_the_study(local_study, tmp_path):
    out = tmp_path / "analysis"
    data_opts = [a for k, v in TINY["data"].items() if k != "name" for a in ("--data-opt", f"{k}={v}")]
    assert main(["analyze", str(local_study / "checkpoints" / "a-w0.5-r0.pt"), "--data", "synthetic", *data_opts,
                 "--perturbations", "zero,mean", "--levels", "5", "--samplings", "2", "--out", str(out)]) == 0
    fresh = pd.read_csv(out / "analysis.csv", keep_default_na=False, na_values=[""])
    stored = load_results(local_study).metrics.query("run_id == 'a-w0.5-r0'")
    for metric in ("compressibility", "similarity", "pcs_needed"):
        assert fresh.query(f"metric == '{metric}'")["value"].item() == pytest.approx(
            stored.query(f"metric == '{metric}'")["value"].item())


@pytest.mark.parametrize("args,match", [
    (["analyze", "/nonexistent/model.pt", "--data", "digits"], "does not exist"),
    (["analyze", "nosuchmodule_xyz:build", "--data", "digits"], "cannot import module"),
    (["analyze", "torchvision:resnet18", "--data", "digits"], "torchvision"),
    (["analyze", "mlp", "--data", "digits"], "neither a checkpoint"),
    (["status", "/nonexistent/study"], "does not exist"),
])
def test_analyze_and_status_user_errors_exit_2(args, match):
    proc = subprocess.run([sys.executable, "-m", "widthlab.cli", *args], capture_output=True, text=True,
                          env={**os.environ})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert match in proc.stderr
