"""Work done once: a layer's spectrum per distinct row draw, and no spectrum for the similarity null."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from widthlab.measure import analyze, redundancy, similarity
from widthlab.measure.calibration import similarity_null
from widthlab.measure.redundancy import Moments, census, redundancy_from_moments, similarity_from_census

LEVELS = [0.0, 0.5, 1.0]


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))


@pytest.fixture
def inputs():
    return torch.randn(80, 6, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def eigen_calls(monkeypatch):
    """Counts numpy.linalg.eigvalsh calls (every spectrum widthlab computes goes through it)."""
    calls = []
    plain = np.linalg.eigvalsh

    def counting(a, *args, **kw):
        calls.append(np.asarray(a).shape)
        return plain(a, *args, **kw)

    monkeypatch.setattr(np.linalg, "eigvalsh", counting)
    return calls


def redundancy_rows(frame, sampling):
    rows = frame[(frame.perturbation == "") & (frame.sampling == sampling)
                 & ~frame.metric.str.endswith("_null") & (frame.metric != "similarity_excess")]
    return rows.reset_index(drop=True)


def test_one_spectrum_per_layer_without_max_rows_null_included(inputs, eigen_calls):
    # One layer: its spectrum once; the permutation null (on by default) needs similarity only.
    analyze(mlp(), inputs, layers=["1"], levels=LEVELS, samplings=3)
    assert eigen_calls == [(12, 12)]


def test_samplings_that_draw_every_row_share_one_spectrum_and_its_numbers(inputs, eigen_calls):
    shared = analyze(mlp(), inputs, layers=["1"], levels=LEVELS, samplings=3, max_rows=80, null_rows=None)
    assert len(eigen_calls) == 1  # three samplings, each of all 80 rows in order: one draw
    unlimited = analyze(mlp(), inputs, layers=["1"], levels=LEVELS, samplings=3, null_rows=None)
    assert len(eigen_calls) == 2
    for s in range(3):  # the same numbers, bit for bit, as all rows measured once
        pd.testing.assert_frame_equal(redundancy_rows(shared, s).drop(columns="sampling"),
                                      redundancy_rows(unlimited, 0).drop(columns="sampling"), check_exact=True)
    expected = redundancy(mlp()[1](mlp()[0](inputs)).detach())
    got = redundancy_rows(shared, 2).set_index("metric").value
    assert got["pcs_needed"] == expected["pcs_needed"] and got["similarity"] == pytest.approx(expected["similarity"])


def test_samplings_that_draw_different_rows_keep_their_own_spectra(inputs, eigen_calls):
    frame = analyze(mlp(), inputs, layers=["1"], levels=LEVELS, samplings=3, max_rows=30, null_rows=None)
    assert len(eigen_calls) == 3
    counts = [redundancy_rows(frame, s).query("metric == 'abs_r_count'").value.to_numpy() for s in range(3)]
    assert not np.array_equal(counts[0], counts[1])


def test_similarity_from_census_equals_the_full_redundancy_numbers(eigen_calls):
    r = np.random.default_rng(4)
    a = r.standard_normal((200, 5))
    acts = np.hstack([a, a[:, :2] + 0.2 * r.standard_normal((200, 2)), np.full((200, 1), 2.0)])
    full = redundancy_from_moments(Moments.of(acts))
    calls = len(eigen_calls)
    alone = similarity_from_census(census(Moments.of(acts)))
    assert len(eigen_calls) == calls  # no spectrum
    for key in ("n_units", "similarity", "similarity_live", "similar_fraction"):
        assert alone[key] == full[key]
    np.testing.assert_array_equal(alone["abs_r_counts"], full["abs_r_counts"])
    assert alone["similarity"] == similarity(acts) == 4 / 8  # two pairs of similar units among 8 (one flat)


def test_permutation_null_computes_no_spectrum_and_keeps_its_numbers(eigen_calls):
    # Values pinned from the implementation that ran the full redundancy (with spectra) on both matrices.
    acts = np.random.default_rng(3).standard_normal((7, 30))
    result = similarity_null(acts, seed=1)
    assert eigen_calls == []
    assert result["rows"] == 7
    assert result["similarity"] == pytest.approx(6.466666666666667, rel=1e-15)
    assert result["similar_fraction"] == pytest.approx(0.22298850574712645, rel=1e-15)
    assert result["similarity_null"] == pytest.approx(7.6, rel=1e-15)
    assert result["similar_fraction_null"] == pytest.approx(0.26206896551724135, rel=1e-15)
    assert result["similarity_excess"] == pytest.approx(-1.1333333333333329, rel=1e-12)


def test_the_null_rides_the_clean_pass_with_the_rows_of_its_own_pass(inputs):
    from widthlab.vocab import NULL_METRICS
    from widthlab.measure.calibration import layer_similarity_null

    model = mlp()
    passes = []
    model[0].register_forward_hook(lambda module, args, out: passes.append(len(args[0])))
    frame = analyze(model, inputs, layers=["1"], levels=LEVELS, samplings=2, null_rows=50, batch_size=32)
    # Probes of 2 examples aside, the layer before the cut runs once per input: in the clean pass (the copies run
    # from the cut on), which also draws the null's rows; a pass of the null's own would make it 160.
    assert sum(n for n in passes if n > 2) == 80
    expected = layer_similarity_null(mlp(), inputs, ["1"], max_rows=50, seed=0, batch_size=32)["1"]
    for metric in NULL_METRICS:
        got = frame[(frame.metric == metric)].value.iloc[0]
        assert got == expected[metric]
