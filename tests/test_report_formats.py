"""Figure formats (`formats=`, `--formats`) and figures drawn by worker processes."""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys

import pandas as pd
import pytest
from synthetic_results import PNG_MAGIC, fake_study, falling, make_tables, rising

from widthlab.cli import main
from widthlab.errors import WidthlabError
from widthlab.report import growth, layer_counts, run_counts, write_figures, write_report
from widthlab.report.figures import FORMATS, drawing_workers, figure_formats

PDF_MAGIC = b"%PDF-"


@pytest.mark.parametrize("value, expected", [
    ("png,pdf", ("png", "pdf")),
    ("PDF, png", ("pdf", "png")),
    ("png,png", ("png",)),
    (["pdf"], ("pdf",)),
    (("png", "pdf", "PNG"), ("png", "pdf")),
])
def test_formats_are_parsed_in_order_without_repeats(value, expected):
    assert figure_formats(value) == expected


@pytest.mark.parametrize("value, named", [("png,jpg", "'jpg'"), ("svg", "'svg'"), (["png", "eps"], "'eps'"),
                                          ("", "''"), ("png,", "'png,'"), ([], "''")])
def test_a_bad_format_names_the_value_and_the_valid_ones(value, named):
    with pytest.raises(WidthlabError) as error:
        figure_formats(value)
    message = str(error.value)
    assert named in message and all(name in message for name in FORMATS)


def tables():
    return make_tables({"a": rising, "b": falling}, widths=(0.25, 1.0, 4.0), replicates=2)


def test_pdf_only_writes_no_png_and_links_the_pdfs(tmp_path):
    runs, metrics = tables()
    result = write_report(runs, metrics, tmp_path, title="t", formats="pdf", workers=1)
    written = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert written and all(name.endswith(".pdf") for name in written)
    assert sorted(p.name for p in result["figures"]) == written
    assert all(p.read_bytes().startswith(PDF_MAGIC) for p in result["figures"])
    summary = result["summary"].read_text(encoding="utf-8")
    assert "(figures/overview.pdf)" in summary and ".png" not in summary


def test_png_and_pdf_of_every_figure_by_default(tmp_path):
    runs, metrics = tables()
    paths = write_figures(runs, metrics, tmp_path, workers=1)
    assert paths and all(p.suffix == ".png" and p.read_bytes().startswith(PNG_MAGIC) for p in paths)
    assert all(p.with_suffix(".pdf").read_bytes().startswith(PDF_MAGIC) for p in paths)
    assert len(list(tmp_path.iterdir())) == 2 * len(paths)


def test_html_needs_png(tmp_path):
    runs, metrics = tables()
    with pytest.raises(WidthlabError, match="embeds PNG.*'pdf'"):
        write_report(runs, metrics, tmp_path, title="t", formats="pdf", html=True)
    assert not (tmp_path / "figures").exists()  # refused before any work


def test_the_deprecated_pdf_flag_still_means_png_only(tmp_path):
    runs, metrics = tables()
    with pytest.warns(DeprecationWarning, match="formats="):
        paths = write_figures(runs, metrics, tmp_path, pdf=False, workers=1)
    assert {p.suffix for p in tmp_path.iterdir()} == {".png"} and len(paths) == len(list(tmp_path.iterdir()))


FORKS = sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods()


@pytest.mark.skipif(not FORKS, reason="figures are drawn by forked workers only on Linux")
def test_workers_draw_the_same_files_as_one_process(tmp_path, caplog):
    runs, metrics = tables()
    serial = write_figures(runs, metrics, tmp_path / "serial", formats="png", workers=1)
    with caplog.at_level(logging.INFO, logger="widthlab.report.figures"):
        parallel = write_figures(runs, metrics, tmp_path / "parallel", formats="png", workers=3)
    assert [p.name for p in parallel] == [p.name for p in serial]  # same figures, same order
    for one, other in zip(serial, parallel):
        assert one.read_bytes() == other.read_bytes(), one.name  # Agg renders deterministically
    # A figure without data is reported by the caller's log, not lost in a worker.
    assert "epochs.png not written" in caplog.text


@pytest.mark.skipif(not FORKS, reason="figures are drawn by forked workers only on Linux")
@pytest.mark.parametrize("cpus, load, jobs, expected", [
    (2, 1.0, 20, 2),    # only this process was busy: both CPUs draw
    (2, 3.2, 20, 1),    # other jobs keep the CPUs busy: draw here
    (16, 0.0, 20, 4),   # at most MAX_WORKERS
    (16, 1.0, 3, 3),    # no more workers than figures
    (8, 6.5, 20, 2),
])
def test_one_worker_per_idle_cpu(monkeypatch, cpus, load, jobs, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert drawing_workers(jobs) == expected


def test_counts_given_equal_counts_computed(tmp_path):
    runs, metrics = tables()
    counts = layer_counts(runs, metrics)
    pd.testing.assert_frame_equal(growth(runs, metrics, counts=counts), growth(runs, metrics))
    pd.testing.assert_frame_equal(run_counts(runs, metrics, counts), run_counts(runs, metrics))


def test_cli_report_formats_png_writes_no_pdf(tmp_path, capsys):
    study = fake_study(tmp_path / "s", "s", rising)
    assert main(["report", str(study), "--formats", "png"]) == 0
    figures = study / "figures"
    assert (figures / "overview.png").is_file() and not list(figures.glob("*.pdf"))


@pytest.mark.parametrize("command", [["report", "{study}"], ["run", "mlp-10d", "--smoke", "--out", "{out}"]])
def test_cli_bad_formats_exit_2_with_one_line(tmp_path, capsys, command):
    study = fake_study(tmp_path / "s", "s", rising)
    out = tmp_path / "never"
    argv = [part.format(study=study, out=out) for part in command] + ["--formats", "png,tiff"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'tiff'" in err and "png, pdf" in err and "Traceback" not in err
    assert not out.exists()  # `run` refuses before training anything
