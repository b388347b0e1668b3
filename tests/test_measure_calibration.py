"""The permutation null of similarity: known answers (twins, chance correlations), then sampling and errors."""

import numpy as np
import pytest
import torch

from widthlab.errors import WidthlabError
from widthlab.measure.calibration import similarity_null
from widthlab.measure.redundancy import redundancy

KEYS = {"rows", "similarity", "similar_fraction", "similarity_null", "similar_fraction_null", "similarity_excess"}


def test_duplicated_units_are_similar_but_their_null_is_zero_with_many_rows():
    a = np.random.default_rng(0).standard_normal((5000, 10))
    result = similarity_null(np.hstack([a, a]))
    assert set(result) == KEYS
    assert result["rows"] == 5000
    assert result["similarity"] == 1.0  # every unit has exactly its twin
    assert result["similar_fraction"] == pytest.approx(1 / 19)
    # |r| of independent columns over 5,000 rows is ~0.014 in std: 0.5 is unreachable by chance.
    assert result["similarity_null"] == 0.0 and result["similar_fraction_null"] == 0.0
    assert result["similarity_excess"] == 1.0


def test_few_rows_give_a_clearly_positive_null():
    # With 5 rows, |r| >= 0.5 happens by chance for about 4 pairs in 10: the paper's count is inflated.
    acts = np.random.default_rng(1).standard_normal((5, 50))
    result = similarity_null(acts)
    assert result["similarity_null"] > 10
    assert 0.2 < result["similar_fraction_null"] < 0.6
    # Independent units: what is observed is chance, so the excess is small next to the null.
    assert abs(result["similarity_excess"]) < 0.5 * result["similarity_null"]


def test_observed_numbers_match_redundancy_on_all_rows():
    r = np.random.default_rng(2)
    a, b = r.standard_normal(300), r.standard_normal(300)
    acts = np.stack([a, a + 0.1 * b, -a, b, np.full(300, 3.0)], axis=1)
    expected = redundancy(acts)
    result = similarity_null(torch.as_tensor(acts, dtype=torch.float32), max_rows=300)
    assert result["rows"] == 300
    assert result["similarity"] == pytest.approx(expected["similarity"])
    assert result["similar_fraction"] == pytest.approx(expected["similar_fraction"])
    assert result["similarity_excess"] == pytest.approx(result["similarity"] - result["similarity_null"])


def test_flat_units_add_nothing_to_the_null_and_nothing_is_nan():
    acts = np.zeros((8, 6))
    acts[:, 0] = np.arange(8.0)
    result = similarity_null(acts)
    assert result["similarity"] == 0.0 and result["similarity_null"] == 0.0
    assert not any(np.isnan(v) for v in result.values())


def test_rows_are_capped_and_draws_are_seeded():
    acts = np.random.default_rng(3).standard_normal((400, 30))
    first = similarity_null(acts, max_rows=10, seed=7)
    assert first["rows"] == 10
    assert similarity_null(acts, max_rows=10, seed=7) == first
    others = [similarity_null(acts, max_rows=10, seed=s) for s in range(8, 12)]
    assert any(o != first for o in others)


def test_observed_similarity_is_measured_on_the_sample():
    # Six rows of independent units show many chance similarities that the full 2,000 rows do not.
    r = np.random.default_rng(4)
    acts = r.standard_normal((2000, 40))
    capped = similarity_null(acts, max_rows=6)
    assert capped["similarity"] > 5 * max(redundancy(acts)["similarity"], 0.1)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, None])
def test_bad_max_rows_is_a_clear_error(bad):
    with pytest.raises(WidthlabError, match="max_rows"):
        similarity_null(np.ones((4, 3)), max_rows=bad)


def test_bad_shapes_and_values_are_clear_errors():
    with pytest.raises(WidthlabError, match="2-D"):
        similarity_null(np.ones(10))
    with pytest.raises(WidthlabError, match="NaN"):
        similarity_null(np.full((4, 3), np.nan))
    with pytest.raises(WidthlabError, match="threshold"):
        similarity_null(np.ones((4, 3)), threshold=1.5)


def test_sampled_rows_are_real_rows_of_the_layer_and_reproducible():
    from torch import nn

    from widthlab.measure import capture
    from widthlab.measure.calibration import layer_similarity_null, sample_rows

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 5, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 6 * 6, 3)).double()
    x = torch.randn(30, 2, 6, 6, dtype=torch.float64)
    full = capture(model, x, ["1"])["1"].double()  # (30·36, 5)
    sample = sample_rows(model, x, ["1"], max_rows=200, seed=3, batch_size=7)["1"]
    assert sample.shape == (200, 5)
    # every sampled row is one of the layer's rows, and no row is drawn twice
    matches = (sample[:, None, :] == full[None, :, :]).all(-1)  # (200, 1080)
    assert (matches.sum(1) >= 1).all() and len({int(i) for i in matches.float().argmax(1)}) == 200
    again = sample_rows(model, x, ["1"], max_rows=200, seed=3, batch_size=13)["1"]
    assert torch.equal(sample, again)  # the draw does not depend on batching
    everything = sample_rows(model, x, ["1"], max_rows=10_000, seed=3)["1"]
    assert torch.equal(everything, full)
    null = layer_similarity_null(model, x, ["1"], max_rows=200, seed=3)["1"]
    assert null["rows"] == 200 and null["similarity_excess"] == null["similarity"] - null["similarity_null"]
