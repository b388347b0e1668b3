"""`compress_study` / `widthlab compress STUDY_DIR`: every done run's compressed width stored in the study's store,
resumed, read back by `load_results`, reported; bad input refused in one line."""

import importlib
import shutil
import sqlite3

import pandas as pd
import pytest

from widthlab import compress_study, load_results
from widthlab.cli import main
from widthlab.errors import WidthlabError
from widthlab.study.store import STORE_NAME

cstudy = importlib.import_module("widthlab.compress.study")  # `widthlab.compress` is also the function


@pytest.fixture(scope="module")
def compressed(finished_study, tmp_path_factory):
    """A copy of the finished tiny study, compressed once (prune and merge at the default max_drop)."""
    out = tmp_path_factory.mktemp("compressed") / "study"
    shutil.copytree(finished_study, out)
    outcome = compress_study(out)
    return out, outcome


def copy_of(compressed, tmp_path):
    out = tmp_path / "study"
    shutil.copytree(compressed[0], out)
    return out


def test_rows_per_run_layer_and_method_in_the_store(compressed):
    directory, outcome = compressed
    runs = load_results(directory).runs
    done = set(runs.loc[runs["status"] == "done", "run_id"])
    rows = outcome.rows
    assert len(done) >= 1 and set(rows["run_id"]) == done
    assert set(rows["method"]) == {"prune", "merge"}
    # one row per run × unit layer × method, and nothing else
    assert not rows.duplicated(["run_id", "layer", "method"]).any()
    layers = rows["layer"].nunique()
    assert len(rows) == len(done) * layers * 2
    assert sorted(outcome.compressed) == sorted((r, m) for r in done for m in ("prune", "merge"))
    assert (rows["units_kept"] >= 1).all() and (rows["units_kept"] <= rows["units_before"]).all()
    # the search's promise, on the split the study measures on
    assert (rows["accuracy_before"] - rows["accuracy_after"] <= 0.01 + 1e-9).all()
    assert (rows["max_drop"] == 0.01).all() and (rows["split"] == "test").all()


def test_merge_keeps_no_more_units_than_prune_at_the_same_max_drop(compressed):
    rows = compressed[1].rows.pivot_table(index=["run_id", "layer"], columns="method", values="units_kept")
    assert (rows["merge"] <= rows["prune"]).all(), rows


def test_a_second_call_resumes_and_another_setting_is_kept_beside_the_first(compressed, tmp_path, monkeypatch):
    directory = copy_of(compressed, tmp_path)
    calls = []
    real = cstudy.compress

    def counting(*args, **kwargs):
        calls.append(kwargs["method"])
        return real(*args, **kwargs)

    monkeypatch.setattr(cstudy, "compress", counting)
    again = compress_study(directory)
    assert calls == [] and again.compressed == [] and len(again.resumed) == len(compressed[1].compressed)
    pd.testing.assert_frame_equal(again.rows, compressed[1].rows)

    other = compress_study(directory, max_drop=0.2, methods="prune")
    assert calls == ["prune"] * len(other.compressed) and len(other.compressed) >= 1
    stored = load_results(directory).compression
    assert len(stored) == len(compressed[1].rows) + len(other.rows)  # the first setting's rows are all still there
    assert set(stored["max_drop"]) == {0.01, 0.2}


def test_load_results_round_trip_and_an_empty_table_for_a_study_never_compressed(compressed, finished_study,
                                                                                   tmp_path):
    directory, outcome = compressed
    results = load_results(directory)
    pd.testing.assert_frame_equal(results.compression, outcome.rows)
    assert {"run_id", "variant", "width", "replicate", "layer", "method", "units_kept"} <= set(results.compression)
    assert results.compression.empty is False
    fresh = load_results(finished_study).compression
    assert fresh.empty and list(fresh.columns) == list(results.compression.columns)
    # a store written before the table existed: read-only loading does not need it
    old = copy_of(compressed, tmp_path)
    with sqlite3.connect(old / STORE_NAME) as db:
        db.execute("DROP TABLE compression")
    assert load_results(old).compression.empty


def test_report_writes_the_section_and_the_figure(compressed, tmp_path):
    directory = copy_of(compressed, tmp_path)
    assert main(["report", str(directory), "--html", "--formats", "png"]) == 0
    summary = (directory / "summary.md").read_text()
    assert "## Compression across widths" in summary
    # one width: no growth to state, and the section says so rather than print g = nan
    assert "no growth per doubling" in summary and "nan" not in summary.split("## Compression")[1]
    assert "figures/compression.png" in summary
    assert (directory / "figures" / "compression.png").stat().st_size > 1000
    html = (directory / "report.html").read_text()
    assert "Compression across widths" in html and 'id="fig-compression"' in html
    growth = pd.read_csv(directory / "compression_growth.csv")
    assert set(growth["quantity"]) == {"merge", "prune"}


def test_report_of_a_study_never_compressed_has_no_section(finished_study, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(finished_study), "--out", str(out), "--formats", "png"]) == 0
    assert "Compression across widths" not in (out / "summary.md").read_text()
    assert not (out / "figures" / "compression.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["--max-drop", "1.5"], "max_drop must be a share"),
    (["--max-drop", "-0.01"], "max_drop must be a share"),
    (["--max-drop", "nan"], "max_drop must be a share"),
    (["--method", "squash"], "unknown method 'squash'"),
    (["--keep", "4"], "--keep applies to one checkpoint"),
    (["--data", "digits"], "--data applies to one checkpoint"),
])
def test_bad_options_for_a_study_are_one_line_and_exit_2(compressed, argv, message, capsys):
    assert main(["compress", str(compressed[0]), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_a_folder_that_is_not_a_study_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["compress", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a study folder" in err
    with pytest.raises(WidthlabError, match="does not exist"):
        compress_study(tmp_path / "nowhere")
    with pytest.raises(WidthlabError, match="max_drop must be a share"):
        compress_study(tmp_path / "empty", max_drop=1)


def test_a_link_in_the_study_folder_is_refused_before_anything_is_read(compressed, tmp_path, monkeypatch):
    directory = copy_of(compressed, tmp_path)
    checkpoint = next((directory / "checkpoints").glob("*.pt"))
    elsewhere = tmp_path / "elsewhere.pt"
    checkpoint.rename(elsewhere)
    checkpoint.symlink_to(elsewhere)
    monkeypatch.setattr(cstudy, "compress", lambda *a, **k: pytest.fail("compressed through a link"))
    with pytest.raises(WidthlabError, match="symbolic link"):
        compress_study(directory, max_drop=0.3)


def test_a_run_measured_again_loses_its_stale_compression_rows(compressed, tmp_path):
    from widthlab.study.store import Store

    directory = copy_of(compressed, tmp_path)
    run_id = compressed[1].rows["run_id"].iloc[0]
    with Store(directory) as store:
        store.finish(run_id, {"status": "done", "seconds": 1.0}, None)
    assert run_id not in set(load_results(directory).compression["run_id"])


def test_a_report_without_compression_rows_removes_an_earlier_compression_figure(tmp_path):
    from widthlab.report.figures.compression import draw_compression
    from widthlab.study.store import empty_compression

    (tmp_path / "compression.png").write_bytes(b"old")
    section, growth, path = draw_compression(pd.DataFrame(columns=["run_id", "status"]), pd.DataFrame(),
                                             empty_compression(), tmp_path, ("png",))
    assert section is None and growth.empty and path is None and not (tmp_path / "compression.png").exists()


def test_growth_per_doubling_and_its_phrase_from_known_counts():
    """Kept units 4, 6, 9 at widths 1/4, 1/2, 1 (×1.5 per doubling) for merge and 4, 8, 16 for prune, two
    replicates each: g = 1.5 and 2, as the frivolous units' growth computes it."""
    from widthlab.report.compression import compression_counts, compression_growth, growth_phrase

    runs, rows = [], []
    for width, merge, prune in ((0.25, 4, 4), (0.5, 6, 8), (1.0, 9, 16)):
        for rep in (0, 1):
            run_id = f"v-w{width}-r{rep}"
            runs.append(dict(run_id=run_id, variant="v", width=width, replicate=rep, status="done", test_acc=0.9))
            for method, kept in (("merge", merge + rep * 0.0), ("prune", prune)):
                rows.append(dict(run_id=run_id, variant="v", width=width, replicate=rep, layer="relu1",
                                 method=method, importance="ablation", max_drop=0.01, calibration_examples=2048,
                                 split="test", method_used=method, units_before=int(128 * width),
                                 units_kept=kept, params_before=0, params_after=0, accuracy_before=0.9,
                                 accuracy_after=0.9, agreement=1.0))
    counts = compression_counts(pd.DataFrame(runs), pd.DataFrame(rows))
    growth = compression_growth(counts).set_index("quantity")
    assert growth.loc["merge", "g"] == pytest.approx(1.5) and growth.loc["prune", "g"] == pytest.approx(2.0)
    assert growth.loc["merge", "pace"] == "slower than width"
    assert growth_phrase(growth.reset_index(), "v") == \
        "compressed width grows g = 1.5 [1.5, 1.5] per doubling (merge), 2 [2, 2] (prune)"
    # a second setting: each line names what differs, and only that
    magnitude = pd.DataFrame(rows).query("method == 'prune'").assign(importance="magnitude")
    both = compression_counts(pd.DataFrame(runs), pd.concat([pd.DataFrame(rows), magnitude]))
    assert [c for c in both.columns if c.startswith(("merge", "prune")) and not c.endswith("_norm")] == \
        ["merge (ablation)", "prune (ablation)", "prune (magnitude)"]


def test_widthlab_run_resumed_on_a_compressed_study_keeps_the_section(compressed, tmp_path):
    """The report a (resumed) `run_study` writes reads the store's compression rows too, not only `report`."""
    from conftest import TINY_STUDY

    from widthlab.study import load_config, run_study

    directory = copy_of(compressed, tmp_path)
    run_study(load_config("mlp-10d", TINY_STUDY), directory, progress=False, report=True, formats=("png",))
    assert "## Compression across widths" in (directory / "summary.md").read_text()
    assert len(load_results(directory).compression) == len(compressed[1].rows)


def test_a_study_being_written_is_refused(compressed, tmp_path):
    from widthlab.study.store import study_lock

    directory = copy_of(compressed, tmp_path)
    with study_lock(directory):
        with pytest.raises(WidthlabError, match="another widthlab process is writing"):
            compress_study(directory, max_drop=0.3)
    assert (load_results(directory).compression["max_drop"] == 0.01).all()
