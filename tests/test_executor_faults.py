"""The processes executor under faults: a killed worker's run is retried and the study completes; workers never
outlive a killed driver; a run is "running" only while a worker is on it, and a stopped study leaves none so."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from widthlab.errors import WidthlabError
from widthlab.study import load_config, load_results, run_study, runs
from widthlab.study.store import Store

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


def _state(pid: int) -> str | None:
    """The process's state letter (R running, S sleeping, T stopped, Z zombie ...), None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def _alive(pid: int) -> bool:
    return _state(pid) not in (None, "Z")  # a zombie has exited; only its parent's bookkeeping is left


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
        # Workers die at once (the parent-death signal); the resource tracker when its pipe closes. The bound only
        # has to tell "exits" from "lives on": 10 s failed once under load 12 on 2 cores.
        deadline = time.monotonic() + 60
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


BROKEN_IMAGE = "imagenet: cannot decode image /data/n01/x.JPEG (broken data stream); replace or remove the file"


def _statuses(study) -> dict[str, str]:
    table = load_results(study).runs
    return dict(zip(table["run_id"], table["status"]))


def test_a_user_error_mid_run_fails_that_run_with_its_reason(tmp_path, monkeypatch):
    real_fit = runs.fit

    def fit(model, splits, cfg, **options):  # a corrupt image met while training the second run
        if options["meta"]["width"] == 0.5:
            raise WidthlabError(BROKEN_IMAGE)
        return real_fit(model, splits, cfg, **options)

    monkeypatch.setattr(runs, "fit", fit)
    with pytest.raises(WidthlabError, match="run default-w0.5-r0: imagenet: cannot decode image"):
        # One by one (the widths would otherwise train as one stacked group): the second run meets the image.
        run_study(load_config("mlp-10d", TINY + ["grid.widths=[0.25, 0.5, 1]", "train.vectorize=off"]), tmp_path,
                  progress=False, report=False)
    assert _statuses(tmp_path) == {"default-w0.25-r0": "done", "default-w0.5-r0": "failed",
                                   "default-w1-r0": "pending"}
    assert load_results(tmp_path).runs.set_index("run_id").loc["default-w0.5-r0", "error"] == BROKEN_IMAGE


@pytest.mark.slow
def test_processes_mark_a_run_running_only_while_a_worker_is_on_it(tmp_path, monkeypatch):
    (tmp_path / "breaks.py").write_text(f"""
import multiprocessing
from widthlab.errors import WidthlabError
from widthlab.models import create_model

def build(width, num_classes=None, **options):
    if multiprocessing.parent_process() is not None and width == 1:  # in a worker, not in the preflight
        raise WidthlabError({BROKEN_IMAGE!r})
    return create_model("mlp", width, num_classes=num_classes, **options)
""")
    monkeypatch.syspath_prepend(str(tmp_path))
    most = []
    mark = Store.mark

    def counting_mark(self, run_id, status, error=None):
        mark(self, run_id, status, error)
        most.append(list(self.statuses().values()).count("running"))

    monkeypatch.setattr(Store, "mark", counting_mark)
    cfg = load_config("mlp-10d", TINY + ["model.name=breaks:build", "grid.widths=[0.25, 0.5, 1, 2]"])
    with pytest.raises(WidthlabError, match="run default-w1-r0: imagenet: cannot decode image"):
        run_study(cfg, tmp_path / "study", executor="processes", workers=1, progress=False, report=False)
    assert max(most) == 1  # one worker: one run at a time, however many are queued
    assert _statuses(tmp_path / "study") == {"default-w0.25-r0": "done", "default-w0.5-r0": "done",
                                             "default-w1-r0": "failed", "default-w2-r0": "pending"}


def _workers(driver: int) -> list[int]:
    """The pool's worker processes of `driver` (not its resource tracker)."""
    found = []
    for pid in _children(driver):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"multiprocessing" in command and b"resource_tracker" not in command:
            found.append(pid)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find the worker processes")
def test_sigterm_with_stopped_workers_exits_within_seconds_and_leaves_no_run_running(tmp_path):
    study = tmp_path / "study"
    command = [sys.executable, "-m", "widthlab.cli", "run", "mlp-10d", "--quiet", "--executor", "processes",
               "--workers", "2", "--out", str(study), "--checkpoint-every", "0", "--set", "grid.replicates=1",
               "--set", "grid.select=null",
               "--set", "grid.variants={'default': {}}", "--set", "train.epochs=5000",
               "--set", "grid.widths=[0.25, 0.5, 1, 2]"]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list((study / "checkpoints").glob("*.pt"))) < 2:
            time.sleep(0.2)
        workers = _workers(driver.pid)
        assert len(workers) == 2, "the workers did not start training"
        for pid in workers:  # mid-run, as a debugger or `kill -STOP` would
            os.kill(pid, signal.SIGSTOP)
        while time.monotonic() < deadline and not all(_state(pid) == "T" for pid in workers):
            time.sleep(0.1)
        assert [_state(pid) for pid in workers] == ["T", "T"]
        driver.send_signal(signal.SIGTERM)
        _, err = driver.communicate(timeout=30)  # it hung until SIGCONT: stopped workers ignored SIGTERM
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 143
    assert err.strip().splitlines()[-1].startswith("widthlab: terminated (SIGTERM)") and "Traceback" not in err
    assert not [pid for pid in workers if _alive(pid)]
    # Two runs were on the (stopped) workers, two queued: none finished, and none is left "running".
    assert list(_statuses(study).values()) == ["pending"] * 4
