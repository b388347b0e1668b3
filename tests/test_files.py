"""Atomic writes: a failed or killed write never leaves a torn, empty or half-new file; stale temps are removed."""

import errno
import os

import pytest
from matplotlib.figure import Figure

from widthlab import files
from widthlab.errors import WidthlabError


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "summary.md"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with files.atomic_path(path) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("killed")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.md"]
    files.write_text(path, "new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["summary.md"]


def test_a_full_disk_is_one_line_naming_the_file_and_the_free_space(tmp_path, monkeypatch):
    path = tmp_path / "overview.pdf"
    path.write_bytes(b"%PDF good")

    def savefig(self, target, **kwargs):
        open(target, "wb").write(b"%PDF tor")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", savefig)
    with pytest.raises(WidthlabError, match=r"disk full writing '.*overview.pdf' \(\d+ MiB free\)"):
        with files.atomic_path(path) as tmp:
            Figure().savefig(tmp)
    assert path.read_bytes() == b"%PDF good" and len(list(tmp_path.iterdir())) == 1


def test_a_write_that_fails_on_a_nearly_full_disk_counts_as_full(tmp_path, monkeypatch):
    """matplotlib hides a PDF's ENOSPC behind AttributeError("'Stream' object has no attribute 'pos'")."""
    monkeypatch.setattr(files.shutil, "disk_usage", lambda folder: type("U", (), {"free": 1000})())
    with pytest.raises(WidthlabError, match="disk full"):
        with files.atomic_path(tmp_path / "a.pdf"):
            raise AttributeError("'Stream' object has no attribute 'pos'")


def test_a_read_only_folder_is_one_line(tmp_path, monkeypatch):
    def denied(*args):
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files.os, "replace", denied)
    with pytest.raises(WidthlabError, match="cannot write .*Read-only file system.*--out"):
        files.write_text(tmp_path / "verdict.csv", "x")


def test_stale_temps_of_dead_processes_are_removed(tmp_path):
    dead = tmp_path / ".run-w1-r0.pt.999999999.tmp"
    dead_png = tmp_path / ".overview.999999999.tmp.png"
    mine = tmp_path / f".run-w2-r0.pt.{os.getpid()}.tmp"
    other = tmp_path / ".hidden-notes"
    for path in (dead, dead_png, mine, other):
        path.write_bytes(b"x")
    assert sorted(files.remove_stale_temps(tmp_path)) == sorted([dead, dead_png])
    assert mine.exists() and other.exists() and not dead.exists()


@pytest.mark.slow
def test_a_rerun_removes_stale_temps_and_a_killed_report_keeps_the_previous_figures(tmp_path, monkeypatch):
    import pandas as pd

    from widthlab.report import write_report
    from widthlab.study import load_config, load_results, run_study

    tiny = ["grid.select=null", "grid.widths=[0.25, 0.5]", "grid.replicates=1", "train.epochs=2", "data.n_train=64", "data.n_val=32",
            "data.n_test=32", "measure.samplings=1", "measure.levels=3", "grid.variants={'default': {}}"]
    run_study(load_config("mlp-10d", tiny), tmp_path, progress=False, report=True)
    stale = tmp_path / "checkpoints" / ".default-w0.25-r0.pt.999999999.tmp"
    stale.write_bytes(b"half a checkpoint of a killed run")
    run_study(load_config("mlp-10d", tiny), tmp_path, progress=False, report=False)  # the rerun cleans up
    assert not stale.exists()
    before = {p: p.read_bytes() for p in (tmp_path / "figures").iterdir()}
    summary = (tmp_path / "summary.md").read_text()

    def full(self, target, **kwargs):
        open(target, "wb").write(b"torn")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full)
    results = load_results(tmp_path)
    with pytest.raises(WidthlabError, match="disk full"):
        write_report(results.runs, results.metrics, tmp_path, title="t")
    assert {p: p.read_bytes() for p in (tmp_path / "figures").iterdir()} == before
    assert (tmp_path / "summary.md").read_text() == summary
    assert isinstance(pd.read_csv(tmp_path / "verdict.csv"), pd.DataFrame)


def test_a_full_disk_at_a_checkpoint_stops_the_study_with_one_line_and_the_store_intact(tmp_path, monkeypatch):
    import torch

    from widthlab.study import load_config, load_results, run_study

    tiny = ["grid.select=null", "grid.widths=[0.25, 0.5]", "grid.replicates=1", "train.epochs=2", "data.n_train=64", "data.n_val=32",
            "data.n_test=32", "measure.samplings=1", "measure.levels=3", "grid.variants={'default': {}}",
            "train.vectorize=off"]  # one by one (else the widths train as one group): one run done, then the other
    run_study(load_config("mlp-10d", tiny), tmp_path / "clean", progress=False, report=False)
    real_save, calls = torch.save, []

    def save(obj, handle, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second run's checkpoint (one per run: after its last epoch)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(WidthlabError, match=r"disk full writing '.*default-w0.5-r0.pt' \(\d+ MiB free\)"):
        run_study(load_config("mlp-10d", tiny), tmp_path / "full", progress=False, report=False)
    runs = load_results(tmp_path / "full").runs.set_index("run_id")
    assert runs["status"].to_dict() == {"default-w0.25-r0": "done", "default-w0.5-r0": "failed"}
    assert runs.loc["default-w0.5-r0", "error"].startswith("disk full writing")  # a rerun retries it
    assert not [p for p in (tmp_path / "full" / "checkpoints").iterdir() if p.name.startswith(".")]
    monkeypatch.setattr(torch, "save", real_save)
    run_study(load_config("mlp-10d", tiny), tmp_path / "full", progress=False, report=False)
    import pandas as pd
    pd.testing.assert_frame_equal(load_results(tmp_path / "full").metrics, load_results(tmp_path / "clean").metrics)
