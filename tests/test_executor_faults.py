"""The processes executor under faults: a killed worker's run is retried and the study completes; workers never
outlive a killed driver."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from widthlab.study import load_config, load_results, run_study

TINY = ["grid.select=null", "grid.widths=[0.25, 0.5]", "grid.replicates=1", "train.epochs=2", "data.n_train=64", "data.n_val=32",
        "data.n_test=32", "measure.samplings=1", "measure.levels=3", "grid.variants={'default': {}}"]


@pytest.mark.slow
def test_a_worker_killed_mid_run_is_retried_and_the_study_completes(tmp_path, monkeypatch):
    marker = tmp_path / "killed-once"
    (tmp_path / "killer.py").write_text(f"""
import multiprocessing, os, pathlib, signal
from widthlab.models import create_model

def build(width, num_classes=None, **options):
    marker = pathlib.Path({str(marker)!r})
    if multiprocessing.parent_process() is not None and width == 0.5 and not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
    return create_model("mlp", width, num_classes=num_classes, **options)
""")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_config("mlp-10d", TINY + ["model.name=killer:build"])
    run_study(cfg, tmp_path / "study", executor="processes", workers=2, progress=False, report=False)
    runs = load_results(tmp_path / "study").runs
    assert marker.exists()  # a worker really died
    assert runs["status"].tolist() == ["done", "done"]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's bookkeeping is left


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find the worker processes")
def test_workers_exit_when_the_driver_is_killed(tmp_path):
    command = [sys.executable, "-m", "widthlab.cli", "run", "mlp-10d", "--quiet", "--executor", "processes",
               "--workers", "2", "--out", str(tmp_path / "study"), "--set", "grid.replicates=1",
               "--set", "train.epochs=500", "--set", "grid.widths=[0.25, 0.5]"]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        workers: list[int] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(workers) < 2:
            time.sleep(0.5)
            workers = [pid for pid in _children(driver.pid)
                       if b"multiprocessing" in Path(f"/proc/{pid}/cmdline").read_bytes()
                       and b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(workers) >= 2, "the workers did not start"
        everyone = _children(driver.pid)  # workers and the resource tracker
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid) for pid in everyone):
            time.sleep(0.2)
        assert not [pid for pid in everyone if _alive(pid)]
    finally:
        if driver.poll() is None:
            driver.kill()


def test_an_unreachable_ray_address_fails_within_seconds():
    from widthlab.errors import WidthlabError
    from widthlab.study.executors import check_reachable

    start = time.monotonic()
    with pytest.raises(WidthlabError, match="no Ray cluster answers at '127.0.0.1:1'"):
        check_reachable("127.0.0.1:1")
    with pytest.raises(WidthlabError, match="ray://127.0.0.1:1"):
        check_reachable("ray://127.0.0.1:1")
    assert time.monotonic() - start < 15
    check_reachable("auto")  # Ray finds (or refuses) its own cluster
