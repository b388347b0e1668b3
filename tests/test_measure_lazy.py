"""Measuring a lazy split (decoded per item, as ImageNet's): each example decoded once per measurement, the same
numbers when it is too big to keep, and DataLoader workers giving the same numbers."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from widthlab import analyze, memory
from widthlab.errors import WidthlabError
from widthlab.measure import inputs as measure_inputs

pytestmark = pytest.mark.usefixtures("one_thread")


class Decoded(Dataset):
    """A lazy split: each item is "decoded" on access (a conv input and its label); `reads` counts accesses per
    index (in this process: DataLoader workers count in theirs)."""

    def __init__(self, n: int = 60):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 6, 6, generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)
        self.reads = np.zeros(n, dtype=np.int64)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.reads[i] += 1
        return self.x[i].clone(), self.y[i]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4 * 4, 7), nn.ReLU(),
                         nn.Linear(7, 3)).eval()


OPTIONS = {"levels": 3, "samplings": 2, "max_rows": 100, "null_rows": 50, "batch_size": 16}


@pytest.mark.parametrize("perturbations", [("zero",), ("zero", "mean")])
def test_a_lazy_split_is_decoded_once_per_example_per_measurement(perturbations):
    data = Decoded()
    frame = analyze(_model(), data, perturbations=perturbations, **OPTIONS)
    assert data.reads.tolist() == [1] * len(data)  # not once for counting, once per pass, once per probe
    expected = analyze(_model(), (data.x, data.y), perturbations=perturbations, **OPTIONS)
    pd.testing.assert_frame_equal(frame, expected)


def test_a_lazy_split_too_big_to_keep_streams_with_the_same_numbers(monkeypatch):
    data = Decoded()
    expected = analyze(_model(), (data.x, data.y), **OPTIONS)
    monkeypatch.setattr(memory, "available_memory", lambda device: 1000)  # 1 kB: nothing is kept
    pd.testing.assert_frame_equal(analyze(_model(), data, **OPTIONS), expected)
    # Read by the sweep alone, not counted apart: the first batch also sized the split, and its first two
    # examples probed the layers and their rows.
    assert (data.reads[OPTIONS["batch_size"]:] == 1).all() and data.reads.max() <= 4


def test_dataloader_workers_give_the_same_numbers(monkeypatch):
    data = Decoded()
    monkeypatch.setenv(measure_inputs.WORKERS_ENV, "0")
    alone = analyze(_model(), data, **OPTIONS)
    monkeypatch.setenv(measure_inputs.WORKERS_ENV, "2")
    assert measure_inputs.loader_workers(torch.device("cpu")) == 2
    helped = analyze(_model(), Decoded(), **OPTIONS)
    pd.testing.assert_frame_equal(helped, alone)


@pytest.mark.parametrize("value", ["-1", "two"])
def test_a_bad_worker_count_is_one_error(monkeypatch, value):
    monkeypatch.setenv(measure_inputs.WORKERS_ENV, value)
    with pytest.raises(WidthlabError, match=measure_inputs.WORKERS_ENV):
        measure_inputs.loader_workers(torch.device("cpu"))


def test_workers_decode_on_cuda_only_by_default(monkeypatch):
    monkeypatch.delenv(measure_inputs.WORKERS_ENV, raising=False)
    assert measure_inputs.loader_workers(torch.device("cpu")) == 0
    assert measure_inputs.loader_workers(torch.device("cuda")) >= 1
