"""report.html: self-contained, complete, and rendered by a real browser (headless Chromium)."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from importlib import metadata

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from synthetic_results import (
    PNG_MAGIC,
    history_of,
    make_tables,
    rising,
    with_calibration,
    with_histograms,
    with_snapshots,
)

from widthlab.report import package_versions, run_times, write_report

CONFIG = {"name": "calibrated-synthetic", "seed": 0, "grid": {"widths": [0.25, 1, 4], "replicates": 2}}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Headless Chromium as root in a container, offline, with nothing started beside the page.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A report of two variants with every kind of data: the null, |r| histograms, snapshots, history, params."""
    runs, metrics = make_tables({"real": rising, "chance": rising}, widths=(0.25, 1, 4), replicates=2)

    def null(variant, width):
        return rising(width, 0) - 0.2 if variant == "chance" else 0.1

    metrics = with_calibration(metrics, runs, null=null, excess=lambda v, w: rising(w, 0) - null(v, w),
                               fraction=lambda v, w: rising(w, 0) / 10)
    metrics = with_snapshots(with_histograms(metrics, runs))
    runs.loc[runs["variant"] == "chance", "seconds"] = 3.0
    params = pd.DataFrame({"model": "mlp", "width": [0.25, 1, 4], "params": [418, 1666, 6658]})
    out = tmp_path_factory.mktemp("report")
    result = write_report(runs, metrics, out, title="Calibrated <synthetic> study", config=CONFIG,
                          history=history_of(runs), params=params, html=True, formats="png")
    return result, result["html"].read_text(encoding="utf-8")


def test_every_figure_type_is_written(report):
    result, _ = report
    assert {p.name for p in result["figures"]} == {f"{n}.png" for n in (
        "accuracy", "robustness", "compressibility", "similarity", "similar_fraction", "similarity_excess",
        "similarity_calibration", "overview", "ablation_curves", "layerwise_robustness",
        "layerwise_compressibility", "layerwise_similarity", "abs_r_distributions", "epochs", "params")}
    summary = result["summary"].read_text(encoding="utf-8")
    assert "`real`: similarity trend survives calibration: **yes**" in summary
    assert "`chance`: similarity trend survives calibration: **no**" in summary
    assert "| similarity_null | similarity_excess |" in summary


def test_html_is_self_contained_with_every_figure_embedded(report):
    result, text = report
    assert text.startswith("<!DOCTYPE html>")
    # Nothing is fetched: no external stylesheet, script or image.
    assert not re.search(r"<(link|script)\b", text)
    assert not re.search(r"""src=["'](?!data:)""", text)
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(uris) == len(result["figures"])
    for uri in uris:
        assert base64.b64decode(uri).startswith(PNG_MAGIC)
    # The overview comes first, whatever order the figures were drawn in.
    assert text.index('id="fig-overview"') < text.index('id="fig-accuracy"') < text.index('id="fig-params"')


def test_html_holds_verdict_calibration_config_versions_and_run_times(report):
    result, text = report
    assert "<title>Calibrated &lt;synthetic&gt; study</title>" in text  # escaped, not markup
    assert '<table id="verdict-table">' in text
    assert text.count('<td class="up">up</td>') == (result["verdict"]["trend"] == "up").sum()
    assert "similarity trend survives calibration: <strong>yes</strong>" in text
    assert "name: calibrated-synthetic" in text and "replicates: 2" in text
    for package in ("widthlab", "torch", "numpy", "pandas", "python"):
        assert f"<td>{package}</td>" in text
    assert f"<td>{metadata.version('numpy')}</td>" in text
    assert '<table id="run-times-table">' in text and "<td>all</td>" in text


def test_run_times_summarise_done_runs_per_cell():
    runs, _ = make_tables({"a": rising, "b": rising}, widths=(0.5, 2), replicates=2)
    runs.loc[runs["variant"] == "b", "seconds"] = [1.0, 3.0, 5.0, 7.0]
    runs.loc[0, "status"] = "failed"
    times = run_times(runs)
    assert list(times.columns) == ["variant", "width", "runs", "total_s", "mean_s", "median_s", "min_s", "max_s"]
    assert list(times["width"]) == ["1/2", "2", "1/2", "2", "all"]
    b_half = times.iloc[2]
    assert (b_half.runs, b_half.total_s, b_half.mean_s, b_half.min_s, b_half.max_s) == (2, 4.0, 2.0, 1.0, 3.0)
    assert times.iloc[0].runs == 1  # the failed run is not counted
    assert times.iloc[-1].total_s == pytest.approx(1.0 * 3 + 16.0)
    assert run_times(runs.drop(columns="seconds")).empty


def test_package_versions_name_every_package():
    versions = package_versions()
    assert list(versions) == ["widthlab", "torch", "numpy", "pandas", "matplotlib", "python"]
    assert versions["pandas"] == pd.__version__


def _chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=90, check=False)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs it: apt-get install chromium)")
def test_html_renders_in_headless_chromium(report, tmp_path):
    result, _ = report
    url = result["html"].resolve().as_uri()
    dom = _chromium(tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # The DOM Chromium built holds the verdict table with its rows, and the figures decoded as images.
    assert '<table id="verdict-table">' in dom.stdout
    assert "similarity_excess" in dom.stdout and "survives calibration" in dom.stdout
    assert dom.stdout.count("<img ") == len(result["figures"])
    shot = tmp_path / "page.png"
    screenshot = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,900", url)
    assert screenshot.returncode == 0 and shot.is_file(), screenshot.stderr[-2000:]
    pixels = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("L"), dtype=float)
    assert pixels.shape == (900, 1200)
    # A blank (or error) page is one flat colour; rendered text, tables and rules vary a lot.
    assert pixels.std() > 20
    assert (pixels < 100).mean() > 0.005  # dark text covers a visible share of the page
