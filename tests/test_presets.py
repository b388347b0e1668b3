"""Every preset runs end to end in smoke mode on the CPU (digits stand in for absent CIFAR-10 / ImageNet)."""

import math

import pytest

from widthlab import load_results, run_study
from widthlab.presets import list_presets
from widthlab.study.catalog import describe_presets
from widthlab.study.config import load_config
from widthlab.study.smoke import SMOKE_STEPS, smoke_config

PAPER_FIGURES = {"1a", "1b", "1c", "2a", "2b", "2c", "3", "4", "5", "B2", "C3", "C4", "C5", "C6", "C7", "C8", "C9",
                 "C10", "C11", "C12", "C13", "C14"}


def test_presets_cover_every_figure_of_the_paper():
    covered = {f.strip() for row in describe_presets() for f in row["figure"].split(",")}
    assert PAPER_FIGURES <= covered, PAPER_FIGURES - covered


def test_paper_hyperparameters():
    r56 = load_config("resnet56").train
    assert (r56.lr, r56.batch_size, r56.epochs, r56.milestones, r56.weight_decay) == (0.1, 128, 182, (91, 136), 2e-4)
    r18 = load_config("resnet18").train
    assert (r18.lr, r18.batch_size, r18.epochs, r18.milestones, r18.weight_decay) == (0.1, 256, 90, (30, 60, 80), 1e-4)
    inc = load_config("inception-v3")
    assert (inc.train.optimizer, inc.train.lr, inc.train.rmsprop_alpha, inc.train.eps) == ("rmsprop", 0.045, 0.9, 1.0)
    assert (inc.train.lr_decay, inc.train.lr_decay_every, inc.model.init, inc.model.sigma) == (0.96, 8, "truncated_normal", 0.1)
    assert inc.grid.widths == (0.25, 0.5, 1.0) and load_config("inception-v3-mixed5d").grid.widths[-1] == 4.0
    alex = load_config("alexnet-inits")
    assert (alex.train.lr, alex.train.lr_decay, alex.train.batch_size, alex.train.early_stopping) == (0.01, 0.95, 128, True)
    assert {alex.variant_sections(v)["model"].init for v in alex.grid.variants} == {"glorot_normal", "lecun_normal",
                                                                                    "he_normal"}
    random = load_config("alexnet-random-labels").variant_sections("random-labels")
    assert random["data"].options["random_labels"] and not random["train"].early_stopping


@pytest.mark.slow
@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_runs_in_smoke_mode(preset, tmp_path):
    cfg = smoke_config(load_config(preset))
    run_study(cfg, tmp_path, progress=False, report=False)
    res = load_results(tmp_path)
    cells = 2 * len(cfg.grid.variants)
    candidates = len(cfg.grid.select.candidates) if cfg.grid.selecting else 1
    assert len(res.runs) == cells * candidates
    measured = res.runs[res.runs["chosen"] == 1] if cfg.grid.selecting else res.runs
    assert len(measured) == cells
    assert set(measured["status"]) == {"done"}, res.runs[["run_id", "status", "error"]].to_string()
    assert "smoke run" in cfg.caveats[-1] or "smoke run" in " ".join(cfg.caveats)
    assert set(res.runs["width"]) == {0.25, 0.5}
    assert (res.history.groupby("run_id")["epoch"].max() == 1).all()
    auc = res.metrics.query("metric == 'auc' and perturbation == 'zero'")["value"]
    assert len(auc) > 0 and auc.between(0, 1).all() and not any(map(math.isnan, auc))
    if load_config(preset).train.snapshot_epochs:
        assert set(res.snapshots["epoch"]) == {1.0}


def test_smoke_caps_examples_and_steps():
    cfg = smoke_config(load_config("resnet56"))
    for variant in cfg.grid.variants:
        sections = cfg.variant_sections(variant)
        assert sections["train"].max_steps == SMOKE_STEPS
        assert sections["data"].name == "digits" and sections["data"].options["n_train"] == 64
    assert cfg.variant_sections("random-labels")["data"].options["random_labels"] is True
    assert smoke_config(load_config("inception-v3")).variant_sections("default")["data"].options["image_size"] == 75
    assert "digits stand in for cifar10 (its data was not found)" in cfg.caveats  # no CIFAR-10 folder here
