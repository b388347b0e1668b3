"""Smoke mode shrinks the cost of a study, never what it exercises."""

from __future__ import annotations

import pytest

from widthlab.presets import list_presets
from widthlab.study.config import load_config
from widthlab.study.smoke import (SMOKE_BATCH, SMOKE_EVAL_EXAMPLES, SMOKE_EXAMPLES, SMOKE_MAX_ROWS, SMOKE_STEPS,
                                  smoke_config)


@pytest.mark.parametrize("preset", list_presets())
def test_smoke_keeps_every_measurement_and_variant_at_a_small_size(preset):
    full = load_config(preset)
    cfg = smoke_config(full)
    assert list(cfg.grid.variants) == list(full.grid.variants)
    for variant in cfg.grid.variants:
        small, big = cfg.variant_sections(variant), full.variant_sections(variant)
        # Every perturbation and split of the full study is measured: smoke runs its code paths.
        assert small["measure"].perturbations == big["measure"].perturbations
        assert small["measure"].split == big["measure"].split
        assert small["measure"].samplings == 1
        for levels in small["measure"].level_sets().values():
            assert len(levels) == 3 and levels[0] == 0  # 0 … the full range: prunability x* stays defined
        assert small["measure"].max_rows == min(big["measure"].max_rows or SMOKE_MAX_ROWS, SMOKE_MAX_ROWS)
        train = small["train"]
        assert (train.epochs, train.max_steps) == (1, SMOKE_STEPS)
        assert train.batch_size == min(big["train"].batch_size, SMOKE_BATCH)
        assert bool(train.snapshot_epochs) == bool(big["train"].snapshot_epochs)
        options = small["data"].options
        if small["data"].name in ("digits", "synthetic", "cifar10"):
            assert (options["n_train"], options["n_val"], options["n_test"]) == (
                SMOKE_EXAMPLES, SMOKE_EVAL_EXAMPLES, SMOKE_EVAL_EXAMPLES)
        if big["data"].options.get("random_labels"):
            assert options.get("random_labels") is True
    assert cfg.grid.selecting == full.grid.selecting


def test_a_preset_smaller_row_cap_is_kept():
    cfg = smoke_config(load_config("mlp-10d", ["measure.max_rows=100"]))
    assert all(cfg.variant_sections(v)["measure"].max_rows == 100 for v in cfg.grid.variants)
