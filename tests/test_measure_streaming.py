"""Streaming in row blocks: the same moments as unblocked float64, constant units stay exact, clean rows survive
in-place ops that follow a layer."""

import numpy as np
import pytest
import torch
from torch import nn

from widthlab.errors import WidthlabError
from widthlab.measure import Moments, capture, redundancy, stream_activations
from widthlab.measure.redundancy import all_finite, block_rows


def test_a_chunk_of_many_blocks_is_merged_block_by_block_and_equals_np_cov():
    units = 8
    step = block_rows(units)
    rows = np.random.default_rng(0).standard_normal((3 * step + 17, units)).astype(np.float32) * 5 + 2
    whole = Moments().update(rows)
    by_block = Moments()
    for start in range(0, len(rows), step):
        by_block.update(rows[start:start + step])
    assert torch.equal(whole.cov, by_block.cov) and torch.equal(whole.mean, by_block.mean)
    assert whole.n == len(rows) and torch.equal(whole.positive, torch.as_tensor((rows > 0).sum(0)))
    expected = np.cov(rows.astype(np.float64), rowvar=False)
    np.testing.assert_allclose(whole.cov.numpy(), expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())
    np.testing.assert_allclose(whole.mean.numpy(), rows.astype(np.float64).mean(0), rtol=1e-12)


def test_a_constant_unit_stays_exactly_flat_across_blocks():
    units = 4
    rows = np.random.default_rng(1).standard_normal((2 * block_rows(units) + 5, units))
    rows[:, 2] = 1e6
    m = Moments().update(rows)
    assert m.cov[2, 2].item() == 0.0 and m.cov[2].abs().max().item() == 0.0
    assert redundancy(rows)["similarity"] == redundancy(rows[:, [0, 1, 3]])["similarity"] * 3 / 4


def test_all_finite_finds_nan_and_inf_anywhere():
    x = torch.randn(50, 7)
    assert all_finite(x) and all_finite(torch.arange(5)) and all_finite(torch.empty(0, 3))
    for bad in (float("nan"), float("inf"), float("-inf")):
        y = x.clone()
        y[31, 4] = bad
        assert not all_finite(y)
    with pytest.raises(WidthlabError, match="NaN or inf"):
        Moments.of(np.array([[1.0, np.nan], [2.0, 3.0]]))


def test_rows_are_the_clean_output_when_a_later_op_works_in_place():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 2))
    in_place = nn.Sequential(nn.Linear(5, 6), nn.ReLU(inplace=True), nn.Linear(6, 2))
    in_place.load_state_dict(plain.state_dict())
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(1))
    expected = plain[0](x).detach()  # before the ReLU, negatives included
    got = capture(in_place, x, ["0"], batch_size=16)["0"]
    assert torch.equal(got, expected) and bool((got < 0).any())
    assert torch.equal(capture(plain, x, ["0"], batch_size=16)["0"], expected)


def test_each_batch_rows_are_released_before_the_next_batch_runs():
    import weakref

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(2))
    seen, previous, alive_during_pass = [], [], []
    # Checked while the next batch's forward pass runs: that is when two batches' rows would coexist.
    model[0].register_forward_hook(lambda *_: alive_during_pass.append(any(ref() is not None for ref in previous)))
    for chunks, batch in stream_activations(model, x, ["1"], batch_size=4):
        seen.append(chunks["1"].clone())
        previous.append(weakref.ref(chunks["1"]))
    assert [len(rows) for rows in seen] == [4, 4, 2]
    assert not any(alive_during_pass)
    # Batch by batch as the stream runs it: a matrix product of 10 rows may round differently from 4 + 4 + 2.
    expected = torch.cat([torch.relu(model[0](x[i:i + 4])).detach() for i in range(0, 10, 4)])
    assert torch.equal(torch.cat(seen), expected)
