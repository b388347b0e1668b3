"""Verdicts that say when they mean nothing: accuracy at chance, smoke runs, stand-in data sets."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from widthlab.cli import main
from widthlab.report.caveats import caveats, chance_runs, voided


def _runs(accs, n=100, classes=2, variant="v"):
    return pd.DataFrame([dict(run_id=f"{variant}-{i}", variant=variant, width=2.0 ** i, replicate=0, status="done",
                              test_acc=a, test_examples=n, num_classes=classes) for i, a in enumerate(accs)])


def test_binomial_test_against_one_over_classes():
    tests = chance_runs(_runs([0.55, 0.70, 0.5]))
    # P(X >= 55 | n = 100, p = 1/2) = 0.184: not distinguishable from guessing; 70 of 100 is (p = 4e-5).
    assert tests["p_value"].tolist() == pytest.approx([binomtest(k, 100, 0.5, alternative="greater").pvalue
                                                       for k in (55, 70, 50)])
    assert tests["at_chance"].tolist() == [True, False, True]
    ten = chance_runs(_runs([0.14, 0.2], n=1000, classes=10))  # 140 of 1000 at p = 0.1: p ≈ 1e-5 → above chance
    assert ten["at_chance"].tolist() == [False, False]
    assert chance_runs(_runs([0.12], n=1000, classes=10))["at_chance"].tolist() == [True]  # p ≈ 0.025


def test_caveats_void_a_variant_mostly_at_chance_and_note_a_few():
    runs = pd.concat([_runs([0.5, 0.52, 0.9], variant="chance"), _runs([0.5, 0.9, 0.95], variant="fine")])
    table = caveats(runs)
    chance = table[table["variant"] == "chance"].iloc[0]
    assert not chance["meaningful"] and chance["caveat"].startswith("not meaningful: accuracy at chance in 2 of 3")
    fine = table[table["variant"] == "fine"].iloc[0]
    assert fine["meaningful"] and "1 of 3 runs" in fine["caveat"] and "fine-0" in fine["caveat"]
    assert voided(table, "chance") and not voided(table, "fine")


def test_study_caveats_and_unchecked_runs():
    runs = _runs([0.9, 0.95]).assign(test_examples=np.nan)
    from widthlab.study.smoke import SMOKE_CAVEAT

    table = caveats(runs, {"caveats": [SMOKE_CAVEAT, "digits stand in for cifar10 (its data was not found)"]})
    assert table["variant"].tolist() == ["*", "*", "v"]
    assert table["meaningful"].tolist() == [False, True, True]  # a smoke run voids every verdict
    assert "were not checked against chance" in table["caveat"].iloc[2]
    assert voided(table, "v")


@pytest.mark.slow
def test_smoke_run_says_its_verdict_is_not_meaningful(tmp_path, capsys):
    out = tmp_path / "smoke"
    assert main(["run", "mlp-10d", "--smoke", "--quiet", "--out", str(out), "--set", "grid.variants={only: {}}"]) == 0
    captured = capsys.readouterr()
    assert "widthlab: note: smoke run" in captured.err  # announced before the runs
    assert "caveat: smoke run" in captured.out
    summary = (out / "summary.md").read_text()
    verdict = summary[summary.index("## Verdict"):summary.index("## Hypothesis")]
    assert "**Caveat: smoke run" in verdict
    hypothesis = summary[summary.index("## Hypothesis"):summary.index("## Similarity calibration")]
    assert "`only`:" in hypothesis and "Caveat: smoke run" in hypothesis
    # 64 examples and 3 optimiser steps: the runs are at chance, and the report says that too.
    assert "accuracy at chance" in hypothesis
    assert (out / "caveats.csv").is_file() and (out / "selection.csv").is_file()  # mlp-10d selects the lr
    figures = {path.suffix for path in (out / "figures").iterdir()}
    assert figures == {".png"}  # a smoke run draws PNG alone unless --formats asks for more


def test_random_label_runs_are_not_tested_against_chance():
    import json

    runs = _runs([0.5, 0.51]).assign(config=json.dumps({"data": {"name": "cifar10", "random_labels": True}}))
    assert chance_runs(runs).empty and caveats(runs).empty  # at chance on true test labels is the expected result


def test_a_paper_cnn_on_digits_is_announced_as_a_stand_in():
    from widthlab.study.config import DIGITS_CAVEAT, load_config

    cfg = load_config("resnet56", ["data={name: digits}"])
    assert cfg.caveats == (DIGITS_CAVEAT,)
    assert load_config(cfg.model_dump(mode="json")).caveats == (DIGITS_CAVEAT,)  # written once, as config.yaml
    assert load_config("mlp-10d").caveats == ()
    table = caveats(_runs([0.9, 0.95]), cfg)
    assert table["meaningful"].tolist() == [True] and "stand in" in table["caveat"].iloc[0]
