"""The CLI under signals and concurrency: SIGTERM is one line and exit 143 and resumes exactly; a report never
races a run into its folder; a closed pipe is not a traceback; `widthlab report` redraws with the study's seed."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from synthetic_results import fake_study, rising

from widthlab.cli import main
from widthlab.errors import WidthlabError
from widthlab.study import load_config, load_results, run_study
from widthlab.study.store import study_lock

TINY = ["grid.select=null", "grid.widths=[0.25, 0.5]", "grid.replicates=1", "data.n_train=200", "data.n_val=50", "data.n_test=50",
        "measure.samplings=1", "measure.levels=3", "grid.variants={'default': {}}"]


@pytest.mark.slow
def test_sigterm_mid_run_is_one_line_exit_143_and_the_resumed_study_equals_a_clean_one(tmp_path):
    overrides = TINY + ["train.epochs=60"]
    command = [sys.executable, "-m", "widthlab.cli", "run", "mlp-10d", "--quiet", "--checkpoint-every", "0",
               "--out", str(tmp_path / "killed"), *[a for o in overrides for a in ("--set", o)]]
    study = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "killed" / "widthlab.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (log.is_file() and "done:" in log.read_text()):
        time.sleep(0.1)
    study.send_signal(signal.SIGTERM)  # during the second run
    _, err = study.communicate(timeout=60)
    assert study.returncode == 143
    assert err.strip().splitlines()[-1].startswith("widthlab: terminated (SIGTERM)") and "Traceback" not in err
    assert subprocess.run(command, capture_output=True).returncode == 0
    run_study(load_config("mlp-10d", overrides), tmp_path / "clean", progress=False, report=False)
    pd.testing.assert_frame_equal(load_results(tmp_path / "killed").metrics, load_results(tmp_path / "clean").metrics)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "study"
    run_study(load_config("mlp-10d", TINY + ["train.epochs=2", "grid.replicates=2", "seed=7"]), out,
              progress=False, report=True)
    return out


@pytest.mark.slow
def test_report_redraws_the_verdict_with_the_study_seed(study, tmp_path):
    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    written = pd.read_csv(copy / "verdict.csv")
    (copy / "verdict.csv").unlink()
    assert main(["report", str(copy)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(copy / "verdict.csv"), written)


@pytest.mark.slow
def test_report_into_a_study_a_run_is_writing_is_refused(study, tmp_path, capsys):
    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    before = (copy / "summary.md").read_bytes()
    with study_lock(copy):  # a run holds the study
        assert main(["report", str(copy)]) == 2
        assert "writes its report when it finishes; use --out" in capsys.readouterr().err
        assert main(["report", str(copy), "--out", str(tmp_path / "now")]) == 0
    assert (copy / "summary.md").read_bytes() == before and (tmp_path / "now" / "summary.md").is_file()


@pytest.mark.slow
def test_status_into_a_closed_pipe_and_version(study):
    status = subprocess.run(f"{sys.executable} -m widthlab.cli status {study} | head -1", shell=True,
                            capture_output=True, text=True)
    assert status.stdout.startswith("4 runs: 4 done") and "Traceback" not in status.stderr
    version = subprocess.run([sys.executable, "-m", "widthlab.cli", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("widthlab ")


@pytest.mark.slow
def test_status_lists_runs_of_an_earlier_grid_as_not_in_this_config(study, tmp_path, capsys):
    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    text = (copy / "config.yaml").read_text().replace("replicates: 2", "replicates: 1")
    (copy / "config.yaml").write_text(text)
    assert main(["status", str(copy)]) == 0
    assert "4 runs: 2 done, 2 not in this config" in capsys.readouterr().out


def test_dry_run_checks_module_function_names(tmp_path, capsys):
    assert main(["run", "mlp-10d", "--dry-run", "--set", "model.name=nosuchmodule:build"]) == 2
    assert "cannot import module 'nosuchmodule'" in capsys.readouterr().err


@pytest.mark.parametrize("existing", ["out", "out/figures"])
def test_analyze_out_an_existing_file_is_refused_before_measuring(existing, tmp_path, capsys):
    if existing != "out":
        (tmp_path / "out").mkdir()
    (tmp_path / existing).write_text("a user's file\n")
    # The model does not exist either: --out is checked first, before anything is loaded or measured.
    assert main(["analyze", str(tmp_path / "model.pt"), "--data", "digits", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"widthlab: error: --out: {str(tmp_path / existing)!r} is a file, not a folder")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert (tmp_path / existing).read_text() == "a user's file\n"


def test_report_removes_the_stale_temporary_files_of_a_killed_report(tmp_path, capsys):
    study = fake_study(tmp_path / "study", "s", rising)
    dead = 2 ** 22 + 1  # above Linux's largest pid: no process has it
    stale = [study / "figures" / f".robustness.{dead}.tmp.pdf", study / f".summary.{dead}.tmp.md"]
    kept = [study / "figures" / f".robustness.{os.getpid()}.tmp.pdf", study / "figures" / ".notes.tmp"]
    (study / "figures").mkdir()
    for path in stale + kept:
        path.write_bytes(b"%PDF-1.4 torn")
    assert main(["report", str(study), "--formats", "png"]) == 0
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept)  # a live process's temp, and a file that is not widthlab's


def test_a_second_report_into_a_study_is_told_a_report_is_being_written(tmp_path, capsys):
    study = fake_study(tmp_path / "study", "s", rising)
    with study_lock(study, report=True):  # a first `widthlab report STUDY` is drawing
        assert main(["report", str(study)]) == 2
        err = capsys.readouterr().err
        assert "another `widthlab report` is being written into" in err and "use --out" in err
        assert "widthlab run" not in err and err.count("\n") == 1
        with pytest.raises(WidthlabError, match="another `widthlab report` is being written.*wait for it to finish$"):
            with study_lock(study):  # a run is told the same, without the report's --out
                pass
    with study_lock(study):  # a run now: a report is told that
        assert main(["report", str(study)]) == 2
        assert "a widthlab run is writing" in capsys.readouterr().err


@pytest.fixture
def signalled_status(monkeypatch):
    """`widthlab status` replaced by a command that sends this process the signal it is given, with SIGTERM and
    SIGHUP at their defaults first (pytest may have been started under nohup)."""
    import os

    from widthlab.cli import study as study_cli

    def send(signum):
        def command(args):
            os.kill(os.getpid(), signum)
            time.sleep(1)  # a handler that raises ends the sleep at once; an ignored signal lets it return 0
            return 0
        monkeypatch.setattr(study_cli, "_cmd_status", command)

    saved = {signum: signal.signal(signum, signal.SIG_DFL) for signum in (signal.SIGTERM, signal.SIGHUP)}
    yield send
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_are_one_line_and_exit_128_plus_the_signal(signum, code, signalled_status, capsys):
    signalled_status(signum)
    assert main(["status", "anywhere"]) == code
    err = capsys.readouterr().err
    assert err == (f"widthlab: terminated ({signal.Signals(signum).name}); finished runs are stored: rerun the same "
                   "command to resume\n")
    assert signal.getsignal(signum) is signal.SIG_DFL  # the handler is put back


def test_an_ignored_sighup_stays_ignored(signalled_status, capsys):
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as `nohup widthlab run ...` starts it
    signalled_status(signal.SIGHUP)
    assert main(["status", "anywhere"]) == 0
    assert capsys.readouterr().err == "" and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN


@pytest.mark.slow
def test_too_many_open_files_is_one_line_and_loses_nothing(tmp_path):
    import resource

    out = tmp_path / "study"
    run_study(load_config("mlp-10d", TINY + ["train.epochs=1", "grid.widths=[0.25]"]), out, progress=False,
              report=False)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    command = [sys.executable, "-m", "widthlab.cli", "run", "mlp-10d", "--quiet", "--executor", "processes",
               "--workers", "2", "--out", str(out),
               *[a for o in TINY + ["train.epochs=1", "grid.widths=[0.25, 0.5, 1]"] for a in ("--set", o)]]
    ran = subprocess.run(command, capture_output=True, text=True, timeout=300,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (20, hard)))  # ulimit -n 20
    assert ran.returncode == 2, ran.stderr
    assert ran.stderr.strip().splitlines() == [
        "widthlab: error: too many open files (the limit is 20, see `ulimit -n`): raise it (e.g. `ulimit -n 4096`) "
        "or use fewer --workers; finished runs are stored: rerun the same command to resume"]
    table = load_results(out).runs
    assert dict(zip(table["run_id"], table["status"])) == {"default-w0.25-r0": "done", "default-w0.5-r0": "pending",
                                                             "default-w1-r0": "pending"}
