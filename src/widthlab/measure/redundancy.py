"""Redundancy of a layer's units (docs/metrics.md): principal components needed, compressibility, similarity.

Every number comes from streamed float64 moments (`Moments`), so memory is O(units²) whatever the number of
rows; the correlation r_ij = cov_ij / sqrt(var_i var_j) is derived from the covariance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from widthlab.errors import WidthlabError, check_positive_int

FLAT_RTOL = 1e-6  # flat unit: std <= FLAT_RTOL x the layer's largest unit std
CONSTANT_RTOL = 1e-3  # constant unit: std <= CONSTANT_RTOL x the median std of the non-flat units
SILENT_SHARE = 0.01  # silent unit: > 0 on fewer than this share of rows
# Slack on the energy comparison: a rank-k layer's trailing eigenvalues are round-off (~1e-16 of the total),
# which must not push k past the rank when energy is 1.
ENERGY_SLACK = 1e-12
# Float64 values per block of rows that `Moments.update` converts and merges at once (2 MiB): the extra memory of
# streaming is a few such blocks whatever the chunk size; at least MIN_BLOCK_ROWS rows keep the O(C²) merge cheap
# next to the block's O(rows · C²) product for wide layers.
BLOCK_ELEMENTS = 1 << 18
MIN_BLOCK_ROWS = 256


def block_rows(units: int) -> int:
    """Rows per block of `Moments.update` for a layer of `units` units."""
    return max(MIN_BLOCK_ROWS, BLOCK_ELEMENTS // max(units, 1))


class Moments:
    """Streaming float64 count, mean, covariance and positive-count of the units of (rows, units) chunks.

    Chunks are merged with Chan et al.'s pairwise update on data shifted by the first row seen, so a constant
    unit (even of value 1e6) has exactly zero variance rather than round-off.

    Example: two chunks streamed give the covariance of the rows stacked:
        >>> rng = np.random.default_rng(0)
        >>> a, b = rng.standard_normal((300, 4)), rng.standard_normal((200, 4))
        >>> moments = Moments().update(a).update(b)
        >>> np.allclose(moments.cov.numpy(), np.cov(np.vstack([a, b]).T))
        True
    """

    def __init__(self, diagonal: bool = False) -> None:
        # `diagonal`: keep only the per-unit variances (O(C) work per row instead of O(C²)); `cov` is then the
        # diagonal matrix of them, enough for the flat / silent / constant census but not for correlations.
        self.diagonal = diagonal
        self.n = 0
        self._shift: torch.Tensor | None = None  # (C,) the first row seen
        self._mean: torch.Tensor | None = None  # (C,) mean of the shifted rows
        self._m2: torch.Tensor | None = None  # (C, C) sum of outer products of deviations from the mean
        self._positive: torch.Tensor | None = None  # (C,) rows > 0 per unit

    @classmethod
    def of(cls, acts: torch.Tensor | np.ndarray) -> Moments:
        """The moments of one whole (rows, units) matrix (checked as `as_matrix` does, converted block by block)."""
        return cls().update(checked_matrix(acts))

    def update(self, chunk: torch.Tensor | np.ndarray) -> Moments:
        """Add the rows of a (rows, units) chunk; returns self.

        The chunk is converted to float64 and merged block by block (`block_rows` rows at a time), so a large chunk
        costs about `BLOCK_ELEMENTS` float64 values of extra memory, not a float64 copy of itself; the result is
        exactly that of updating with each block in turn.
        """
        x = torch.as_tensor(chunk).detach()
        if x.dim() != 2:
            raise WidthlabError(f"a chunk must be 2-D (rows, units), got shape {tuple(x.shape)}")
        if self._shift is not None and x.shape[1] != len(self._shift):
            raise WidthlabError(f"chunk has {x.shape[1]} units, earlier chunks had {len(self._shift)}")
        step = block_rows(x.shape[1])
        for start in range(0, len(x), step):
            self._merge(x[start:start + step].to(torch.float64))
        return self

    def _merge(self, x: torch.Tensor) -> None:
        """Chan's pairwise update with one float64 (rows, C) block."""
        if self._shift is None:
            units = x.shape[1]
            self._shift = x[0].clone()
            self._mean = x.new_zeros(units)
            self._m2 = x.new_zeros(units) if self.diagonal else x.new_zeros(units, units)
            self._positive = torch.zeros(units, dtype=torch.int64, device=x.device)
        rows = len(x)
        self._positive += (x > 0).sum(0)
        y = x - self._shift  # (rows, C): exactly 0 for a unit that never changes
        mean_b = y.mean(0)
        dev = y - mean_b
        delta = mean_b - self._mean
        total = self.n + rows
        if self.diagonal:
            self._m2 += (dev * dev).sum(0) + delta * delta * (self.n * rows / total)
        else:
            self._m2 += dev.T @ dev + torch.outer(delta, delta) * (self.n * rows / total)
        self._mean += delta * (rows / total)
        self.n = total

    def _check(self) -> None:
        if self.n == 0:
            raise WidthlabError("no rows were accumulated; redundancy needs at least one row")

    @property
    def n_units(self) -> int:
        self._check()
        return len(self._shift)

    @property
    def mean(self) -> torch.Tensor:
        """(C,) per-unit mean."""
        self._check()
        return self._shift + self._mean

    @property
    def cov(self) -> torch.Tensor:
        """(C, C) covariance with ddof = 1 as `np.cov` (all zeros for a single row)."""
        self._check()
        m2 = torch.diag(self._m2) if self.diagonal else self._m2
        return m2 / max(self.n - 1, 1)

    @property
    def std(self) -> torch.Tensor:
        """(C,) per-unit standard deviation (ddof = 1)."""
        self._check()
        variance = self._m2 if self.diagonal else self._m2.diagonal()
        return (variance / max(self.n - 1, 1)).clamp(min=0).sqrt()

    @property
    def positive(self) -> torch.Tensor:
        """(C,) number of rows on which each unit is > 0."""
        self._check()
        return self._positive


def all_finite(x: torch.Tensor) -> bool:
    """Whether a tensor holds no NaN or inf, without `torch.isfinite`'s temporaries (an abs copy and bool masks,
    about twice the tensor): its min and max are finite exactly when every value is (both propagate NaN)."""
    if not x.is_floating_point() or x.numel() == 0:
        return True
    low, high = torch.aminmax(x)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def checked_matrix(acts: torch.Tensor | np.ndarray) -> torch.Tensor:
    """`acts` as a (rows, units) tensor in its own dtype, or a WidthlabError for any other shape or non-finite
    values."""
    x = torch.as_tensor(acts).detach()
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise WidthlabError(f"activations must be a 2-D (rows, units) matrix with rows and units, "
                            f"got shape {tuple(x.shape)}")
    if not all_finite(x):
        raise WidthlabError("activations contain NaN or inf")
    return x


def as_matrix(acts: torch.Tensor | np.ndarray) -> torch.Tensor:
    """`acts` as a float64 (rows, units) tensor, or a WidthlabError for any other shape or non-finite values."""
    return checked_matrix(acts).to(torch.float64)


def check_fraction(name: str, value: float, low_open: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
        (0 < value <= 1) if low_open else (0 <= value <= 1))
    if not ok:
        raise WidthlabError(f"{name} must be a number in {'(0' if low_open else '[0'}, 1], got {value!r}")
    return float(value)


def _pcs(cov: np.ndarray, energy: float) -> int:
    eig = np.clip(np.linalg.eigvalsh(cov), 0.0, None)[::-1]  # (C,) descending
    total = eig.sum()
    if total <= 0:
        return 0
    share = np.cumsum(eig) / total
    return min(int(np.searchsorted(share, energy - ENERGY_SLACK)) + 1, len(eig))


def flat_units(std: np.ndarray) -> np.ndarray:
    """(C,) bool, True for a flat unit: std <= FLAT_RTOL x the largest std (every unit when that is 0)."""
    top = std.max()
    return np.ones_like(std, dtype=bool) if top == 0 else std <= FLAT_RTOL * top


def abs_r_matrix(cov: np.ndarray, live: np.ndarray) -> np.ndarray:
    """(live, live) |Pearson r| among the non-flat units."""
    sub = cov[np.ix_(live, live)]
    std = np.sqrt(np.diag(sub))
    return np.clip(np.abs(sub / np.outer(std, std)), 0.0, 1.0)


def similar_counts(abs_r: np.ndarray, threshold: float) -> np.ndarray:
    """(live,) number of other units with |r| >= threshold."""
    similar = abs_r >= threshold
    np.fill_diagonal(similar, False)
    return similar.sum(1)


@dataclass(frozen=True)
class Census:
    """Per-unit facts of a layer's streamed moments (docs/metrics.md's flat unit and unit census).

    Attributes:
        cov: (C, C) float64 covariance (None for diagonal `Moments`); std: (C,) its diagonal's square root
            (ddof 1).
        flat: (C,) bool, `flat_units`; live: indices of the non-flat units.
        constant: (C,) bool, std <= CONSTANT_RTOL × the median std of the live units (all when none is live).
        silent: (C,) bool, > 0 on fewer than a share SILENT_SHARE of the rows.
    """

    cov: np.ndarray | None
    std: np.ndarray
    flat: np.ndarray
    live: np.ndarray
    constant: np.ndarray
    silent: np.ndarray


def census(moments: Moments) -> Census:
    """The `Census` of `moments`: what `redundancy_from_moments` and `unit_table` both report."""
    # Diagonal moments (per-unit flags only) never become a dense C×C matrix: `cov` is then None.
    cov = None if moments.diagonal else moments.cov.cpu().numpy()
    std = moments.std.cpu().numpy() if moments.diagonal else np.sqrt(np.clip(np.diag(cov), 0.0, None))
    flat = flat_units(std)
    live = np.flatnonzero(~flat)
    constant = std <= CONSTANT_RTOL * np.median(std[live]) if len(live) else np.ones(len(std), dtype=bool)
    silent = moments.positive.cpu().numpy() < SILENT_SHARE * moments.n
    return Census(cov, std, flat, live, constant, silent)


def similarity_from_census(layer: Census, *, threshold: float = 0.5, bins: int = 50) -> dict:
    """The similarity numbers of a layer's `Census` (no eigen-decomposition): what the permutation null needs.

    Returns a dict: ``n_units``, ``similarity``, ``similarity_live``, ``similar_fraction``, ``abs_r_counts`` ((bins,)
    int counts over the pairs i < j of non-flat units) and ``abs_r_edges`` ((bins + 1,) bin edges).

    Example:
        >>> acts = capture(model, x, "relu1")["relu1"]
        >>> similarity_from_census(census(Moments.of(acts)))["similarity"] == similarity(acts)
        True
    """
    cov, live = layer.cov, layer.live
    units = len(cov)
    abs_r = abs_r_matrix(cov, live)
    counts = similar_counts(abs_r, threshold)
    similarity_value = counts.sum() / units
    pairs = abs_r[np.triu_indices(len(live), 1)]
    hist, edges = np.histogram(pairs, bins=bins, range=(0.0, 1.0))
    return {
        "n_units": units,
        "similarity": float(similarity_value),
        "similarity_live": float(counts.sum() / len(live)) if len(live) else 0.0,
        "similar_fraction": float(similarity_value / (units - 1)) if units > 1 else 0.0,
        "abs_r_counts": hist.astype(np.int64),
        "abs_r_edges": edges,
    }


def redundancy_from_moments(moments: Moments, *, energy: float = 0.95, threshold: float = 0.5,
                            bins: int = 50) -> dict:
    """Every redundancy number (docs/metrics.md) of a layer from its accumulated `Moments`.

    Args:
        energy: share of variance the leading components must hold (default 0.95).
        threshold: |r| at or above which two units are similar (default 0.5).
        bins: bins of the |r| histogram on [0, 1] (default 50).

    Returns a dict: ``n_units``, ``pcs_needed``, ``compressibility``, ``similarity``, ``similarity_live``,
    ``similar_fraction``, ``silent_fraction``, ``constant_fraction``, ``abs_r_counts`` ((bins,) int counts over
    the pairs i < j of non-flat units) and ``abs_r_edges`` ((bins + 1,) bin edges).

    Example: the 200 rows of ``relu1`` streamed in two chunks give the numbers of the whole matrix:
        >>> acts = capture(model, x, "relu1")["relu1"]
        >>> redundancy_from_moments(Moments().update(acts[:100]).update(acts[100:]))["pcs_needed"]
        33
        >>> redundancy(acts)["pcs_needed"]
        33
    """
    energy = check_fraction("energy", energy, low_open=True)
    threshold = check_fraction("threshold", threshold, low_open=False)
    check_positive_int("bins", bins)
    layer = census(moments)
    numbers = similarity_from_census(layer, threshold=threshold, bins=bins)
    units = numbers["n_units"]
    pcs = _pcs(layer.cov, energy)
    numbers.update(pcs_needed=pcs, compressibility=1.0 - pcs / units, silent_fraction=float(layer.silent.mean()),
                   constant_fraction=float(layer.constant.mean()))
    return numbers


def pcs_needed(acts: torch.Tensor | np.ndarray, energy: float = 0.95) -> int:
    """The number of principal components holding a share `energy` of the variance (0 when there is none).

    Args:
        acts: (rows, units) activations, tensor or ndarray.
        energy: share of the total variance in (0, 1] (default 0.95).

    Example: 20 units that are mixtures of 3 signals:
        >>> g = torch.Generator().manual_seed(0)
        >>> pcs_needed(torch.randn(2000, 3, generator=g) @ torch.randn(3, 20, generator=g), energy=0.9999)
        3
    """
    energy = check_fraction("energy", energy, low_open=True)
    return _pcs(Moments.of(acts).cov.cpu().numpy(), energy)


def compressibility(acts: torch.Tensor | np.ndarray, energy: float = 0.95) -> float:
    """1 − pcs_needed / units: the share of units a linear compression to `energy` of the variance saves.

    Args:
        acts: (rows, units) activations, tensor or ndarray.
        energy: share of the total variance in (0, 1] (default 0.95).

    Example: 20 units that are mixtures of 3 signals:
        >>> g = torch.Generator().manual_seed(0)
        >>> compressibility(torch.randn(2000, 3, generator=g) @ torch.randn(3, 20, generator=g), energy=0.9999)
        0.85
    """
    return 1.0 - pcs_needed(acts, energy) / checked_matrix(acts).shape[1]


def similarity(acts: torch.Tensor | np.ndarray, threshold: float = 0.5) -> float:
    """The mean over all units of the number of other units with |Pearson r| >= `threshold`.

    Flat units (std <= 1e-6 x the layer's largest std) count 0 and are counted by nobody; never NaN.

    Args:
        acts: (rows, units) activations, tensor or ndarray.
        threshold: |r| in [0, 1] at or above which two units are similar (default 0.5).

    Example: for independent noise vectors a and b, each of a, a, -a has two similar units and b none:
        >>> rng = np.random.default_rng(0)
        >>> a, b = rng.standard_normal(1000), rng.standard_normal(1000)
        >>> similarity(np.stack([a, a, -a, b], 1))
        1.5
    """
    threshold = check_fraction("threshold", threshold, low_open=False)
    cov = Moments.of(acts).cov.cpu().numpy()
    std = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    counts = similar_counts(abs_r_matrix(cov, np.flatnonzero(~flat_units(std))), threshold)
    return float(counts.sum() / len(cov))


def redundancy(acts: torch.Tensor | np.ndarray, *, energy: float = 0.95, threshold: float = 0.5,
               bins: int = 50) -> dict:
    """Every redundancy number (docs/metrics.md) of one (rows, units) activation matrix.

    Args:
        acts: (rows, units) activations, tensor or ndarray.
        energy: share of variance for `pcs_needed` / `compressibility` (default 0.95).
        threshold: |r| for `similarity` (default 0.5).
        bins: bins of the |r| histogram on [0, 1] (default 50).

    Returns the dict of `redundancy_from_moments`.

    Example:
        >>> numbers = redundancy(capture(model, x, "relu1")["relu1"])
        >>> numbers["n_units"], numbers["pcs_needed"], round(numbers["compressibility"], 4), numbers["similarity"]
        (128, 33, 0.7422, 4.875)
    """
    return redundancy_from_moments(Moments.of(acts), energy=energy, threshold=threshold, bins=bins)
