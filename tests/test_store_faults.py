"""Damaged, empty and read-only stores: one clear line, nothing written, and archived studies stay readable."""

import os
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY_STUDY
from synthetic_results import fake_study, rising

from widthlab.cli import main
from widthlab.errors import WidthlabError
from widthlab.study import load_config, run_study
from widthlab.study.store import STORE_NAME, Store, load_results

TINY = TINY_STUDY


def _files(directory):
    """Every file's bytes, but the side files (-shm, -wal) SQLite opens beside a WAL store for any reader."""
    return {p.name: p.read_bytes() for p in directory.rglob("*")
            if p.is_file() and not p.name.startswith(".") and not p.name.endswith(("-shm", "-wal"))}


@pytest.mark.slow
@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(b""), "is empty"),
    (lambda p: p.write_bytes(b"this is not a database at all" * 100), "is not an SQLite database"),
    (lambda p: p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2]), "damaged"),
])
def test_a_damaged_store_is_one_line_and_nothing_is_written(study, damage, message, capsys):
    for extra in study.glob(STORE_NAME + "-*"):  # WAL side files: the damage is in the main file
        extra.unlink()
    damage(study / STORE_NAME)
    before = _files(study)
    with pytest.raises(WidthlabError, match=message):
        load_results(study)
    for argv in (["status", str(study)], ["report", str(study)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "move it away" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
    assert _files(study) == before  # neither the store nor summary.md, verdict.csv, figures were touched


@pytest.mark.slow
def test_a_store_moved_away_is_rebuilt_from_the_checkpoints(study):
    expected = load_results(study).metrics
    (study / STORE_NAME).rename(study / "widthlab.sqlite.bad")
    for extra in study.glob(STORE_NAME + "-*"):
        extra.unlink()
    run_study(load_config("mlp-10d", TINY), study, progress=False, report=False)
    rebuilt = load_results(study)
    pd.testing.assert_frame_equal(rebuilt.metrics, expected)
    assert rebuilt.runs["epochs"].tolist() == [2]


@pytest.mark.slow
def test_an_archived_read_only_study_can_be_read(study, tmp_path, monkeypatch, capsys):
    expected = load_results(study).metrics
    # As root the permission bits do not stop a writer, so the check that decides `immutable` is made to see a
    # read-only folder; the bits are set too, for a non-root run.
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if mode == os.W_OK and str(study) in str(path)
                        else real_access(path, mode))
    for path in [study / STORE_NAME, *study.glob(STORE_NAME + "-*")]:
        path.chmod(0o444)
    study.chmod(0o555)
    try:
        pd.testing.assert_frame_equal(load_results(study).metrics, expected)
        assert main(["status", str(study)]) == 0
        assert "done" in capsys.readouterr().out
        assert main(["report", str(study), "--out", str(tmp_path / "elsewhere")]) == 0
        assert (tmp_path / "elsewhere" / "summary.md").is_file()
    finally:
        study.chmod(0o755)


def _archive_of_a_killed_study(source, archive):
    """`archive` as a study SIGKILLed mid-run leaves it, copied: every run of the store in `source` committed to
    the ``-wal`` by a writer that is still open (so nothing was checkpointed into the main file), then the main file
    and its -wal copied while that writer holds them."""
    Store(archive.parent / "writer").close()  # the empty tables, checkpointed, as `widthlab run` registers them
    writer = Store(archive.parent / "writer")
    writer._db.execute("PRAGMA wal_autocheckpoint = 0")  # as a killed writer: no checkpoint ever ran
    writer._db.execute("ATTACH DATABASE ? AS source", (str(source / STORE_NAME),))
    with writer.transaction() as db:
        for table in ("runs", "metrics", "curves", "history"):
            db.execute(f"INSERT INTO main.{table} SELECT * FROM source.{table}")
    writer._db.execute("DETACH DATABASE source")
    shutil.copytree(source, archive, ignore=shutil.ignore_patterns(STORE_NAME + "*"))
    for name in (STORE_NAME, STORE_NAME + "-wal"):
        shutil.copyfile(writer.path.with_name(name), archive / name)
    writer.close()
    assert (archive / (STORE_NAME + "-wal")).stat().st_size > 0
    # The fault is real: the main file alone (all that `immutable=1` reads) holds no run.
    with sqlite3.connect((archive / STORE_NAME).as_uri() + "?immutable=1", uri=True) as db:
        assert db.execute("SELECT count(*) FROM runs").fetchone() == (0,)
    return archive


def _read_only(monkeypatch, folder):
    """`folder` made read-only: its permission bits, and, as root ignores them, `os.access` made to say so."""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if mode == os.W_OK and
                        str(folder) in str(path) else real_access(path, mode, **kw))
    for path in folder.iterdir():
        path.chmod(0o444 if path.is_file() else 0o555)
    folder.chmod(0o555)


def _listing(folder, side_files=True):
    """Every path under `folder` with its bytes; without SQLite's -shm and -wal, which any reader of a writable
    folder may create (`side_files=False`)."""
    return {p.relative_to(folder): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))
            if side_files or not p.name.endswith(("-shm", "-wal"))}


def test_a_read_only_store_with_a_wal_shows_every_committed_run(tmp_path, monkeypatch, capsys):
    source = fake_study(tmp_path / "source", "archived", rising)
    expected = load_results(source)
    archive = _archive_of_a_killed_study(source, tmp_path / "archive")
    before = _listing(archive)
    _read_only(monkeypatch, archive)
    try:
        results = load_results(archive)
        assert main(["status", str(archive)]) == 0
        status = capsys.readouterr().out
        assert main(["report", str(archive), "--out", str(tmp_path / "elsewhere"), "--formats", "png"]) == 0
    finally:
        archive.chmod(0o755)
    pd.testing.assert_frame_equal(results.runs, expected.runs)
    pd.testing.assert_frame_equal(results.metrics, expected.metrics)
    assert status.startswith("4 runs: 4 done")
    assert len(pd.read_csv(tmp_path / "elsewhere" / "run_level.csv")) == 4
    assert _listing(archive) == before  # no -shm, no report: nothing written into the read-only folder
    assert not list(Path(tempfile.gettempdir()).glob("widthlab-ro-*"))  # the private copy is gone


def test_a_killed_study_on_a_real_read_only_bind_mount_shows_its_runs(tmp_path, capsys):
    if os.geteuid() != 0:
        pytest.skip("a bind mount needs root")
    archive = _archive_of_a_killed_study(fake_study(tmp_path / "source", "archived", rising), tmp_path / "archive")
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    if subprocess.run(["mount", "--bind", "-o", "ro", str(archive), str(mounted)], capture_output=True).returncode:
        pytest.skip("mount --bind -o ro is not permitted here (a container without CAP_SYS_ADMIN)")
    try:
        assert not os.access(mounted, os.W_OK)
        assert load_results(mounted).runs["status"].tolist() == ["done"] * 4
        assert main(["status", str(mounted)]) == 0
        assert capsys.readouterr().out.startswith("4 runs: 4 done")
    finally:
        subprocess.run(["umount", str(mounted)], check=True)
    assert not (archive / (STORE_NAME + "-shm")).exists()


@pytest.mark.slow
def test_a_full_disk_at_commit_is_one_line_and_leaves_the_store_intact(study, monkeypatch):
    store = Store(study)
    statuses = store.statuses()

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    with pytest.raises(WidthlabError, match=r"cannot write the study store .*disk is full.*MiB free.*intact|"
                                            r"cannot write the study store .*disk is full.*MiB free"):
        with store.transaction() as db:
            db.execute("UPDATE runs SET status = 'running'")
            full()
    assert store.statuses() == statuses
    store.close()


def test_a_sqlite_file_of_another_program_is_not_a_study(tmp_path):
    with sqlite3.connect(tmp_path / STORE_NAME) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    with pytest.raises(WidthlabError, match="not a widthlab store"):
        load_results(tmp_path)


def test_the_report_uses_only_the_runs_of_the_current_grid(tmp_path, caplog):
    grid = [o for o in TINY if not o.startswith("grid.")] + ["grid.variants={'default': {}}", "grid.select=null"]
    run_study(load_config("mlp-10d", grid + ["grid.widths=[0.25, 0.5]", "grid.replicates=2"]), tmp_path,
              progress=False, report=False)
    run_study(load_config("mlp-10d", grid + ["grid.widths=[0.25]", "grid.replicates=1"]), tmp_path,
              progress=False, report=True)
    assert len(load_results(tmp_path).runs) == 4  # nothing is deleted
    assert len(pd.read_csv(tmp_path / "run_level.csv")) == 1  # the report: the one run of this grid
    assert "3 stored run(s) are not in this config's grid" in caplog.text
    assert "3 stored run(s) are not in this config's grid (grid.* changed)" in (tmp_path / "summary.md").read_text()


def _sql(statement):
    def damage(study):
        with sqlite3.connect(study / STORE_NAME) as db:
            db.execute(statement)
        db.close()
    return damage


def _config(text):
    return lambda study: (study / "config.yaml").write_bytes(text if isinstance(text, bytes) else text.encode())


def _replaced_by(kind, name):
    def damage(study):
        path = study / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        path.mkdir() if kind == "dir" else path.write_text("not widthlab's\n")
    return damage


# A damaged study or the wrong kind of file at one of widthlab's paths: (case, damage, the message of `status`
# (None: status reads nothing there and works), the message of `report`, and whether `run` into the folder is
# refused with it too; " … " separates parts of a message). Each is one line and exit 2.
DAMAGED = [
    ("config not YAML", _config("name: [a\n"), "is not valid YAML: expected ',' or ']'", None, False),
    ("config a list", _config("- a\n- b\n"), "holds a YAML list, not a study config", None, False),
    ("config Latin-1", _config("name: caf\xe9\n".encode("latin-1")), "is not UTF-8 text (byte 0xe9 at offset 9)",
     None, False),
    ("config seed 'x'", _config("name: s\nseed: x\n"), "seed must be an integer, got 'x'", None, False),
    ("metrics table dropped", _sql("DROP TABLE metrics"), "is damaged (its table(s) metrics are missing); move it away",
     None, False),
    ("metrics rows deleted", _sql("DELETE FROM metrics"), None,
     "4 of the 4 done run(s) in … lack their measurements in its metrics or curves table … move it away", False),
    ("store a directory", _replaced_by("dir", STORE_NAME), "widthlab.sqlite' is a directory, not a widthlab store",
     None, True),
    ("checkpoints a file", _replaced_by("file", "checkpoints"), None,
     "checkpoints' is a file where widthlab keeps its checkpoints folder; move it away", True),
    ("figures a file", _replaced_by("file", "figures"), None,
     "figures' is a file where the report keeps its figures folder; move it away", True),
    ("lock a directory", _replaced_by("dir", ".widthlab.lock"), None,
     ".widthlab.lock' is a directory where widthlab keeps its .widthlab.lock file; move it away", True),
    ("summary.md a directory", _replaced_by("dir", "summary.md"), None,
     "summary.md' is a directory where the report writes its summary.md; move it away", True),
    ("config.yaml a directory", _replaced_by("dir", "config.yaml"), "config.yaml' is a directory", None, False),
    ("widthlab.log a directory", _replaced_by("dir", "widthlab.log"), None,
     "widthlab.log' is a directory where widthlab keeps its widthlab.log file; move it away", True),
]


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A finished study of synthetic runs with its report written, as a colleague would hand it over."""
    study = fake_study(tmp_path_factory.mktemp("reported") / "study", "s", rising)
    (study / "config.yaml").write_text((study / "config.yaml").read_text() + "seed: 3\n")
    (study / "widthlab.log").write_text("")
    (study / "checkpoints").mkdir()
    assert main(["report", str(study), "--formats", "png"]) == 0
    return study


@pytest.mark.parametrize("case, damage, status_message, message, run", DAMAGED, ids=[c[0] for c in DAMAGED])
def test_a_damaged_study_is_one_line_and_nothing_is_rewritten(case, damage, status_message, message, run, reported,
                                                             tmp_path, capsys):
    study = tmp_path / "study"
    shutil.copytree(reported, study)
    damage(study)
    before = _listing(study, side_files=False)
    capsys.readouterr()
    commands = [(["status", str(study)], status_message), (["report", str(study)], status_message or message)]
    if run:  # the wrong kind of file where a run writes: refused before anything is read or registered
        commands.append((["run", "mlp-10d", "--out", str(study)], status_message or message))
    for argv, expected in commands:
        code = main(argv)
        err = capsys.readouterr().err
        if expected is None:
            assert code == 0, err
            continue
        assert code == 2, (argv, err)
        assert err.count("\n") == 1 and err.startswith("widthlab: error: ") and "Traceback" not in err, err
        assert all(part in err for part in expected.split(" … ")), err
        assert _listing(study, side_files=False) == before  # not one figure, table or stored row rewritten
