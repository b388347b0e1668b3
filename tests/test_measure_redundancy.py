"""Redundancy metrics (docs/metrics.md): known answers first, then streaming moments and edge cases."""

import numpy as np
import pytest
import torch

from widthlab.errors import WidthlabError
from widthlab.measure import Moments, compressibility, pcs_needed, redundancy, redundancy_from_moments, similarity


def rng(seed=0):
    return np.random.default_rng(seed)


def twins_matrix(rows=2000):
    """Units [a, a, -a, b, const]: the first three are each similar to two others, b to none, const is flat."""
    r = rng(1)
    a, b = r.standard_normal(rows), r.standard_normal(rows)
    return np.stack([a, a, -a, b, np.full(rows, 3.0)], axis=1)


# Known answers ---------------------------------------------------------------------------------------------------

def test_rank_k_activations_need_exactly_k_components():
    r = rng(0)
    acts = r.standard_normal((2000, 3)) @ r.standard_normal((3, 20))
    assert pcs_needed(acts, energy=0.9999) == 3
    assert compressibility(acts, energy=0.9999) == pytest.approx(1 - 3 / 20)
    assert pcs_needed(torch.as_tensor(acts, dtype=torch.float32), energy=0.9999) == 3


def test_rank_k_with_energy_one_is_the_rank():
    r = rng(2)
    acts = r.standard_normal((500, 4)) @ r.standard_normal((4, 12))
    assert pcs_needed(acts, energy=1.0) == 4


def test_isotropic_data_needs_almost_every_component():
    acts = rng(3).standard_normal((5000, 20))
    assert pcs_needed(acts, energy=0.95) >= 18
    assert compressibility(acts) <= 0.1


def test_duplicate_units_are_similar_hand_computed():
    acts = twins_matrix()
    # counts per unit [2, 2, 2, 0, 0]; 4 non-flat units
    assert similarity(acts) == pytest.approx(6 / 5)
    out = redundancy(acts)
    assert out["n_units"] == 5
    assert out["similarity"] == pytest.approx(6 / 5)
    assert out["similarity_live"] == pytest.approx(6 / 4)
    assert out["similar_fraction"] == pytest.approx(6 / 5 / 4)
    # pairs among the 4 live units: 3 with |r| = 1 (top bin), 3 with |r| near 0
    assert out["abs_r_counts"].sum() == 6
    assert out["abs_r_counts"][-1] == 3
    assert out["abs_r_counts"][:5].sum() == 3  # |r| of independent noise ~ 1/sqrt(rows)
    assert out["constant_fraction"] == pytest.approx(1 / 5)


def test_similarity_matches_corrcoef_reference():
    r = rng(4)
    base = r.standard_normal((3000, 4))
    acts = base @ r.standard_normal((4, 15)) + 0.8 * r.standard_normal((3000, 15))
    corr = np.abs(np.corrcoef(acts.T))
    np.fill_diagonal(corr, 0)
    expected = (corr >= 0.5).sum(1).mean()
    assert similarity(acts, threshold=0.5) == pytest.approx(expected)
    hist, _ = np.histogram(corr[np.triu_indices(15, 1)], bins=50, range=(0, 1))
    np.testing.assert_array_equal(redundancy(acts)["abs_r_counts"], hist)


def test_dead_and_constant_units_count_zero_never_nan():
    r = rng(5)
    acts = np.column_stack([r.standard_normal((1000, 3)), np.zeros(1000), np.full(1000, 0.1)])
    out = redundancy(acts)
    assert all(np.isfinite(out[k]) for k in ("similarity", "similarity_live", "similar_fraction"))
    assert out["constant_fraction"] == pytest.approx(2 / 5)
    assert out["silent_fraction"] == pytest.approx(1 / 5)  # the zero unit; 0.1 is positive everywhere
    assert out["abs_r_counts"].sum() == 3  # pairs among the 3 live units only


def test_constant_unit_of_1e6_is_exactly_flat():
    r = rng(6)
    acts = np.column_stack([r.standard_normal((997, 4)), np.full(997, 1e6)])
    m = Moments()
    for chunk in np.array_split(acts, [13, 400, 401]):
        m.update(chunk)
    assert m.cov[4, 4].item() == 0.0
    assert m.mean[4].item() == 1e6
    out = redundancy_from_moments(m)
    assert out["constant_fraction"] == pytest.approx(1 / 5)
    assert out["abs_r_counts"].sum() == 6  # 4 live units


def test_all_units_flat():
    acts = np.column_stack([np.zeros(50), np.full(50, 0.1), np.full(50, -7.0)])
    out = redundancy(acts)
    assert out["pcs_needed"] == 0 and out["compressibility"] == 1.0
    assert out["similarity"] == 0 and out["similarity_live"] == 0 and out["similar_fraction"] == 0
    assert out["constant_fraction"] == 1.0
    assert out["abs_r_counts"].sum() == 0


def test_silent_fraction_threshold_is_one_percent_of_rows():
    rows = 1000
    unit_rare = np.zeros(rows)
    unit_rare[:9] = 1.0  # positive on 0.9% of rows -> silent
    unit_some = np.zeros(rows)
    unit_some[:20] = 1.0  # 2% -> not silent
    acts = np.column_stack([unit_rare, unit_some, rng(7).standard_normal(rows)])
    assert redundancy(acts)["silent_fraction"] == pytest.approx(1 / 3)


def test_single_unit_has_zero_similar_fraction():
    out = redundancy(rng(8).standard_normal((100, 1)))
    assert out["similar_fraction"] == 0.0 and out["pcs_needed"] == 1


# Streaming moments -----------------------------------------------------------------------------------------------

def test_moments_match_numpy_with_uneven_chunks():
    r = rng(9)
    acts = r.standard_normal((1003, 12)) * r.uniform(0.1, 10, 12) + r.uniform(-50, 50, 12)
    m = Moments()
    for chunk in np.array_split(acts, [1, 8, 8, 308, 700]):  # includes a 0-row chunk
        m.update(torch.as_tensor(chunk, dtype=torch.float64))
    assert m.n == 1003
    np.testing.assert_allclose(m.cov.numpy(), np.cov(acts.T), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(m.mean.numpy(), acts.mean(0), rtol=1e-12, atol=1e-10)
    np.testing.assert_array_equal(m.positive.numpy(), (acts > 0).sum(0))


def test_streamed_redundancy_equals_whole_matrix():
    r = rng(10)
    acts = np.maximum(r.standard_normal((600, 3)) @ r.standard_normal((3, 9)), 0)
    m = Moments()
    for chunk in np.array_split(acts, 7):
        m.update(chunk)
    streamed, whole = redundancy_from_moments(m), redundancy(acts)
    for key in ("pcs_needed", "similarity", "silent_fraction", "constant_fraction"):
        assert streamed[key] == pytest.approx(whole[key])
    np.testing.assert_array_equal(streamed["abs_r_counts"], whole["abs_r_counts"])


# Errors ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("acts", [np.zeros(5), np.zeros((2, 3, 4)), np.zeros((0, 3))])
def test_non_matrix_activations_are_rejected(acts):
    with pytest.raises(WidthlabError, match="2-D"):
        redundancy(acts)


def test_nan_and_bad_arguments_are_rejected():
    acts = rng(11).standard_normal((10, 3))
    with pytest.raises(WidthlabError, match="energy"):
        pcs_needed(acts, energy=0)
    with pytest.raises(WidthlabError, match="threshold"):
        similarity(acts, threshold=1.5)
    acts[2, 1] = np.nan
    with pytest.raises(WidthlabError, match="NaN"):
        redundancy(acts)
    with pytest.raises(WidthlabError, match="no rows"):
        redundancy_from_moments(Moments())


def test_diagonal_moments_give_the_full_census_per_unit():
    from widthlab.measure.redundancy import Moments, census

    x = torch.randn(500, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x[:, 3] = 5.0  # flat
    x[:, 5] = 0.0  # silent and flat
    x[:, 6] *= 1e-5  # constant next to the others
    full, diagonal = Moments(), Moments(diagonal=True)
    for chunk in x.split(64):
        full.update(chunk)
        diagonal.update(chunk)
    a, b = census(full), census(diagonal)
    np.testing.assert_allclose(b.std, a.std, rtol=1e-12)
    assert b.cov is None  # no C×C matrix is built
    for flag in ("flat", "silent", "constant"):
        np.testing.assert_array_equal(getattr(a, flag), getattr(b, flag))
    assert a.flat[3] and a.silent[5] and a.constant[6]
    torch.testing.assert_close(diagonal.std, full.std, rtol=1e-12, atol=0)
