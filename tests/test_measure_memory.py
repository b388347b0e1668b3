"""Memory of a measurement and of a run's preflight: selectivity's float64 sums made block by block, and the
preflight checking the memory of the device the run will use."""

import numpy as np
import pytest
import torch

from widthlab import memory
from widthlab.errors import WidthlabError
from widthlab.measure import selectivity
from widthlab.measure.inputs import Batch
from widthlab.measure.selectivity import ClassSums
from widthlab.study import load_config, run_study


def test_class_sums_convert_to_float64_block_by_block(monkeypatch):
    g = torch.Generator().manual_seed(1)
    rows = torch.randn(1000, 12, generator=g) * 1e3
    y = torch.randint(0, 4, (250,), generator=g)  # 250 examples of 4 rows each (a conv layer's positions)
    batch = Batch((torch.zeros(250, 1),), {}, y)
    old_sums = torch.zeros(4, 12, dtype=torch.float64).index_add_(0, y.repeat_interleave(4), rows.double())
    sizes = []
    index_add = torch.Tensor.index_add_

    def spy(self, dim, index, source, *args, **kwargs):
        if source.dtype == torch.float64:
            sizes.append(len(source))
        return index_add(self, dim, index, source, *args, **kwargs)

    monkeypatch.setattr(selectivity, "CLASS_SUM_ELEMENTS", 12 * 64, raising=False)  # 64 rows per block
    monkeypatch.setattr(torch.Tensor, "index_add_", spy)
    acc = ClassSums({"layer": False})
    acc.add({"layer": rows}, batch)
    sums, counts = acc["layer"]
    assert sizes and max(sizes) == 64 and sum(sizes) == 1000
    assert np.array_equal(sums, old_sums.numpy())  # the same additions in the same order: bit-identical
    assert counts.tolist() == torch.bincount(y, minlength=4).mul(4).tolist()


# The preflight checks the device the run will use ---------------------------------------------------------------------

def _fake_gpu(monkeypatch, free: int):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *args: (free, 80 * 2 ** 30))


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_memory_of_a_run_that_will_use_the_gpu_is_the_gpus(monkeypatch, device):
    _fake_gpu(monkeypatch, 3 * 2 ** 20)
    assert memory.available_memory(device) == 3 * 2 ** 20
    assert memory.available_memory("cpu") != 3 * 2 ** 20  # the host's RAM


def test_memory_of_auto_without_a_gpu_is_the_hosts(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *args: pytest.fail("no GPU to ask"))
    assert memory.available_memory("auto") == memory.available_memory("cpu")


def test_preflight_refuses_a_model_too_big_for_the_gpu_that_auto_will_use(monkeypatch, tmp_path):
    _fake_gpu(monkeypatch, 10 * 2 ** 10)  # 10 KiB of GPU memory free; the host has plenty
    tiny = ["grid.select=null", "grid.widths=[4]", "grid.replicates=1", "train.epochs=1", "data.n_train=64",
            "data.n_val=32", "data.n_test=32", "grid.variants={'default': {}}", "train.device=auto"]
    with pytest.raises(WidthlabError, match=r"mlp at width 4 has 6,658 parameters: training needs .* more than the "
                       r"0\.0 GiB available"):
        run_study(load_config("mlp-10d", tiny), tmp_path, progress=False, report=False)
    assert not (tmp_path / "widthlab.sqlite").exists()
