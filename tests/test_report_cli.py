"""`widthlab report DIR... [--out OUT] [--html]` on study stores filled with synthetic results (no training)."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest
from synthetic_results import fake_study, falling, rising

from widthlab.cli import main
from widthlab.study.build import parameter_counts
from widthlab.study.store import load_results


def test_report_of_one_study_prints_the_verdict_and_writes_html_pdf_and_params(tmp_path, capsys, caplog):
    study = fake_study(tmp_path / "glorot", "glorot", rising)
    with caplog.at_level(logging.INFO, logger="widthlab.report.figures"):
        assert main(["report", str(study), "--html"]) == 0
    # Figures without data are skipped with a reason: no snapshots, a single unit layer.
    assert "epochs.png not written" in caplog.text and "fewer than two unit layers" in caplog.text
    out = capsys.readouterr().out
    assert "slope/doubling" in out and "similar_fraction" in out
    assert "hypothesis holds for v" in out
    assert "similarity trend survives calibration for v: not judged" in out
    assert f"html:    {study / 'report.html'}" in out and "store:" in out
    assert "<table id=\"verdict-table\">" in (study / "report.html").read_text(encoding="utf-8")
    for name in ("overview", "similarity_calibration", "params"):
        assert (study / "figures" / f"{name}.png").is_file() and (study / "figures" / f"{name}.pdf").is_file()
    assert "(figures/params.png)" in (study / "summary.md").read_text(encoding="utf-8")


def test_parameter_counts_come_from_the_run_configs(tmp_path):
    study = fake_study(tmp_path / "s", "s", rising)
    counts = parameter_counts(load_results(study).runs)
    # The 10-d MLP with h = 128·width hidden units and 2 outputs has 10h + h + 2h + 2 parameters.
    assert counts.to_dict("list") == {"model": ["mlp", "mlp"], "width": [0.5, 2.0], "params": [834, 3330]}


@pytest.mark.parametrize("model", [{"name": "family_of_another_session"}, {"name": "mlp", "option_removed": 1},
                                   {"name": "mlp", "init": "no_such_init"}, "not a mapping"])
def test_parameter_counts_skip_a_stored_model_section_that_no_longer_builds(model):
    # The figure is optional: a report of an old or foreign store is still written, without it.
    runs = pd.DataFrame({"variant": ["v"], "width": [1.0], "config": [json.dumps({"model": model})]})
    assert parameter_counts(runs) is None


def test_report_of_several_studies_combines_them_into_out(tmp_path, capsys):
    glorot = fake_study(tmp_path / "a", "glorot", rising)
    he = fake_study(tmp_path / "b", "he", falling)
    out_dir = tmp_path / "combined"
    assert main(["report", str(glorot), str(he), "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "hypothesis holds for glorot: v" in out and "hypothesis does not hold for he: v" in out
    assert "store:" not in out and "html:" not in out
    summary = (out_dir / "summary.md").read_text(encoding="utf-8")
    assert summary.startswith("# Combined: glorot, he")
    verdict = pd.read_csv(out_dir / "verdict.csv").set_index(["variant", "metric"])["trend"]
    assert verdict["glorot: v", "robustness"] == "up" and verdict["he: v", "robustness"] == "down"
    assert "glorot:" in summary and "name: he" in summary  # both configurations, under their labels
    assert not (glorot / "summary.md").exists()  # the studies themselves are left alone


def test_several_studies_need_out(tmp_path, capsys):
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["report"], ["report", "x", "--html=yes"]])
def test_bad_report_arguments_exit_2(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
