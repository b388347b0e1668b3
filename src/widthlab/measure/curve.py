"""A perturbation curve and its area: what every robustness measurement returns (docs/metrics.md)."""

from __future__ import annotations

from collections.abc import Sequence

from dataclasses import dataclass

import numpy as np

from widthlab.errors import WidthlabError


@dataclass(frozen=True)
class Curve:
    """A perturbation curve over S samplings and L levels.

    Attributes:
        levels: (L,) perturbation levels.
        unchanged: (S, L) share of examples whose prediction equals the unperturbed one.
        accuracy: (S, L) top-1 accuracy, or None without labels.
        auc: (S,) `robustness_auc` of each sampling's ``unchanged`` row.
        path: ``"batched"`` (only the network after a cut ran per copy) or ``"full"`` (whole forward passes).
    """

    levels: np.ndarray
    unchanged: np.ndarray
    accuracy: np.ndarray | None
    auc: np.ndarray
    path: str


def robustness_auc(levels: Sequence[float] | np.ndarray, fractions: Sequence[float] | np.ndarray) -> float:
    """Trapezoid area under a curve; divided by the last level when the levels do not end at 1.

    Share levels end at 1, so the area is the robustness itself; noise levels (σ multiples) are normalised
    by their range so that a curve constant at 1 scores 1 either way.

    Args:
        levels: (L,) increasing levels, L >= 2.
        fractions: (L,) the curve's values at those levels.

    Example: a curve falling linearly to 0, and a noise curve (levels 0 … 2σ) constant at 1:
        >>> robustness_auc([0, 0.5, 1], [1, 0.5, 0]), robustness_auc([0, 1, 2], [1, 1, 1])
        (0.5, 1.0)
    """
    x = np.asarray(levels, dtype=np.float64)
    y = np.asarray(fractions, dtype=np.float64)
    if x.ndim != 1 or len(x) < 2 or y.shape != x.shape or np.any(np.diff(x) <= 0) or x[-1] <= 0:
        raise WidthlabError(f"robustness_auc needs at least two increasing levels ending above 0 and one fraction "
                            f"per level; got levels {x.tolist()} and fractions of shape {y.shape}")
    area = float(np.trapezoid(y, x))
    return area if x[-1] == 1.0 else area / float(x[-1])

