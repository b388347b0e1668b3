"""The one hook helper, the one row sampler and the one level validator of `widthlab.measure`."""

import numpy as np
import pytest
import torch
from torch import nn

from widthlab.errors import WidthlabError
from widthlab.measure.hooks import hooked
from widthlab.measure.perturbations import SHARE_LEVELS, level_sets
from widthlab.measure.rows import draw_rows


def _net():
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_unknown_layer_names_the_value_and_the_valid_ones():
    with pytest.raises(WidthlabError, match=r"unknown layer\(s\) 'nope'; valid module names: 0, 1, 2"):
        with hooked(_net(), ["1", "nope"], forward=lambda name: lambda *a: None):
            pass


def test_every_hook_is_removed_when_the_block_fails():
    net = _net()
    seen = []
    with pytest.raises(RuntimeError):
        with hooked(net, ["0", "1"], forward=lambda name: lambda m, a, o: seen.append(name),
                    pre=lambda name: lambda m, a: None):
            net(torch.randn(2, 3))
            raise RuntimeError("boom")
    assert seen == ["0", "1"]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_draw_rows_is_sorted_and_capped():
    rows = draw_rows(100, 10, 0, "layer", 0, "rows")
    assert len(rows) == 10 and np.all(np.diff(rows) > 0)
    assert np.array_equal(draw_rows(5, 10, 0, "layer", 0, "rows"), np.arange(5))
    assert not np.array_equal(rows, draw_rows(100, 10, 0, "layer", 0, "null-rows"))  # the stream name matters


def test_level_sets_take_a_count_a_list_or_a_mapping():
    assert level_sets(None, ["zero"])["zero"].tolist() == SHARE_LEVELS.tolist()
    assert level_sets(3, ["zero", "act_noise"])["act_noise"].tolist() == [0.0, 1.0, 2.0]
    assert level_sets([0, 0.5, 1], ["zero", "mean"])["mean"].tolist() == [0, 0.5, 1]
    mixed = level_sets({"act_noise": [0, 1, 3]}, ["zero", "act_noise"], default=3)
    assert mixed == {"zero": pytest.approx([0, 0.5, 1]), "act_noise": pytest.approx([0, 1, 3])}
    with pytest.raises(WidthlabError, match=r"levels given for \['mean'\]"):
        level_sets({"mean": 3}, ["zero"])
    with pytest.raises(WidthlabError, match="levels of 'zero' must be at least 2"):
        level_sets(1, ["zero"])
    with pytest.raises(WidthlabError, match="must start at 0"):
        level_sets([0.5, 1], ["zero"], from_zero=True)
