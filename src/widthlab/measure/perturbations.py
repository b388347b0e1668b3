"""Perturbations (docs/metrics.md): their definitions, levels and plans. A new perturbation is a `Perturbation`
whose ``build`` returns a `Plan`, registered in `PERTURBATIONS`.


Perturbations (`PERTURBATIONS`). Levels of the share perturbations are shares in [0, 1] (default 0, 0.1, …, 1);
levels of the noise perturbations are multiples of a standard deviation σ (default 0, 0.2, …, 2). Every random
draw comes from a stream named by (seed, layer, sampling s), so a layer's curve does not depend on the others.

- ``zero``: sampling s orders the C units at random; at level p the first k = floor(p·C + 0.5 + 1e-9) units of
  that order are set to 0 at every row (nested masks, as the reference code).
- ``mean``: the same units set to their mean over the evaluated rows of the clean network.
- ``targeted``: u = the first unit of sampling s's random order; the units ordered by |r| with u (Pearson r from
  the clean layer's streamed moments; flat units have r = 0), descending, u first, ties kept in the random order;
  the first k units of that order set to 0.
- ``act_noise`` (noise): ε·level·std_unit added to every element of the layer's output, with std_unit the unit's
  std (ddof 1) over the evaluated rows and ε ~ N(0, 1) drawn for example n from the stream (seed, layer, s, n),
  so it does not depend on batching (for a token layer (N, T, C), token by token, so it does not depend on
  padding either); the same ε at every level.
- ``weight_noise`` (noise): ε·level·std(W) added to every weight of the Conv/Linear module producing the layer's
  units (`widthlab.measure.graph`: the layer itself, or the Conv/Linear before it through ReLU-like, BatchNorm,
  Dropout or Identity modules); std(W) over all its weights (ddof 0), bias untouched, ε per weight, the same at
  every level.
- ``weight_knockout``: the first k = floor(level·n + 0.5 + 1e-9) of a random order of that module's n weights set
  to 0 (nested, like the unit masks).

A curve records, per sampling and level, the share of examples whose argmax equals the unperturbed prediction
(and the accuracy when labels are known); robustness is its `robustness_auc`.

A *plan* is one layer's perturbation for every copy ``(sampling s, level index i)`` of a curve (`Plan`): the engine
(`widthlab.measure.engine`) asks it which copies perturb nothing (`identity`), which perturb identically
(`signature`), and then either to perturb stacked copies of the layer's output (`apply`, ``weights = False``) or
for each copy's weights of the module producing the layer (`weight`, ``weights = True``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from widthlab.errors import WidthlabError
from widthlab.measure.redundancy import Moments, flat_units
from widthlab.seeding import torch_generator

SHARE_LEVELS = np.arange(11) / 10  # 0, 0.1, ..., 1.0, each the float nearest its decimal
NOISE_LEVELS = np.arange(11) / 5  # 0, 0.2, ..., 2.0 standard deviations


class Plan(Protocol):
    """One layer's perturbation per copy (sampling s, level index i); see the module doc."""

    weights: bool  # True: perturbs the producing module's weights (`weight`), False: the layer output (`apply`)

    def identity(self, s: int, i: int) -> bool:
        """Whether copy (s, i) perturbs nothing (it then predicts as the clean pass and is not evaluated)."""

    def signature(self, s: int, i: int) -> Hashable:
        """Equal for copies that perturb identically (evaluated once)."""


class OutputPlan(Plan, Protocol):
    def apply(self, h: torch.Tensor, copies: Sequence[tuple[int, int]], start: int,
              fresh: bool = False) -> torch.Tensor:
        """Perturb m stacked copies of a batch of the layer output: h (m·B, ...), block j gets ``copies[j]``."""


class ParameterPlan(Plan, Protocol):
    module: nn.Module

    def weight(self, s: int, i: int) -> torch.Tensor:
        """The weight of `module` for copy (s, i)."""


# Unit orders and masks ----------------------------------------------------------------------------------------------

def n_ablated(level: float, n_units: int) -> int:
    """k = floor(level·C + 0.5 + 1e-9): units ablated at `level` (the 1e-9 rounds exact halves up)."""
    return int(math.floor(level * n_units + 0.5 + 1e-9))


def unit_order(layer: str, n_units: int, sampling: int, seed: int = 0) -> torch.Tensor:
    """(C,) the ablation order of sampling `sampling` of `layer`: a permutation from the stream (seed, layer, s)."""
    return torch.randperm(n_units, generator=torch_generator(seed, layer, sampling))


def targeted_order(layer: str, moments: Moments, sampling: int, seed: int = 0) -> torch.Tensor:
    """(C,) the ``targeted`` order: u = `unit_order`'s first unit, then the others by |r| with u, descending.

    Flat units (`flat_units`) have r = 0 with every unit; ties keep the random order, so a flat u gives the random
    order itself.

    Args:
        layer, sampling, seed: name the random stream, as for `unit_order` (seed default 0).
        moments: the clean layer's streamed `Moments` (its covariance gives r).

    Example: units [a, a, -a, b] of independent a and b; sampling 5's random order starts at unit 0, so its
    targeted order goes on with 2 and 1 (|r| = 1, in their random order), then 3:
        >>> rng = np.random.default_rng(0)
        >>> a, b = rng.standard_normal(1000), rng.standard_normal(1000)
        >>> moments = Moments.of(np.stack([a, a, -a, b], 1))
        >>> unit_order("relu1", 4, 5).tolist(), targeted_order("relu1", moments, 5).tolist()
        ([0, 2, 3, 1], [0, 2, 1, 3])
    """
    n_units = moments.n_units
    perm = unit_order(layer, n_units, sampling, seed)
    u = int(perm[0])
    cov = moments.cov.cpu()
    std = cov.diagonal().clamp(min=0).sqrt()
    live = torch.as_tensor(~flat_units(std.numpy()))
    abs_r = torch.zeros(n_units, dtype=torch.float64)
    if live[u]:
        abs_r[live] = (cov[u, live] / (std[u] * std[live])).abs()
    abs_r[u] = math.inf
    return perm[torch.argsort(abs_r[perm], descending=True, stable=True)]


def nested_masks(orders: Sequence[torch.Tensor], levels: Sequence[float] | np.ndarray) -> torch.Tensor:
    """(S, L, C) bool: True for the first `n_ablated(level, C)` units of each sampling's order."""
    n_units = len(orders[0])
    masks = torch.zeros(len(orders), len(levels), n_units, dtype=torch.bool)
    for s, order in enumerate(orders):
        for i, level in enumerate(levels):
            masks[s, i, order[:n_ablated(float(level), n_units)]] = True
    return masks


def ablation_masks(layer: str, n_units: int, levels: Sequence[float] | np.ndarray, samplings: int,
                   seed: int = 0) -> torch.Tensor:
    """(S, L, C) bool, True where a unit is ablated: the first `n_ablated` units of each sampling's order.

    Example: each sampling ablates 0, 5 and 10 of 10 units, and the masks are nested in level:
        >>> masks = ablation_masks("relu1", 10, [0, 0.5, 1], 3)
        >>> masks.shape, masks.sum(-1).tolist()
        (torch.Size([3, 3, 10]), [[0, 5, 10], [0, 5, 10], [0, 5, 10]])
        >>> bool((masks[:, 0] <= masks[:, 1]).all() and (masks[:, 1] <= masks[:, 2]).all())
        True
    """
    return nested_masks([unit_order(layer, n_units, s, seed) for s in range(samplings)], levels)


def example_noise(layer: str, sampling: int, seed: int, start: int, like: torch.Tensor,
                  tokens: bool = False) -> torch.Tensor:
    """ε ~ N(0, 1) shaped like `like` (B, ...): example b drawn from the stream (seed, layer, s, start + b).

    With `tokens` (a (B, T, C) token layer, units last) the example's ε is drawn token by token, T draws of (C,)
    from its stream, so a token's noise does not depend on how far its sequence is padded.

    Args:
        layer, sampling, seed: name the stream; start: the index of the batch's first example in the inputs.
        like: a (B, ...) tensor giving the shape, dtype and device.

    Example: example 5's noise is the same in a batch starting at example 0 and in one starting at example 5:
        >>> h = torch.zeros(8, 128)
        >>> torch.equal(example_noise("relu1", 0, 0, 0, h)[5], example_noise("relu1", 0, 0, 5, h[5:])[0])
        True
    """
    def draw(b: int) -> torch.Tensor:
        g = torch_generator(seed, layer, sampling, "act_noise", start + b)
        if tokens:
            return torch.stack([torch.randn(like.shape[2:], dtype=like.dtype, generator=g)
                                for _ in range(like.shape[1])])
        return torch.randn(like.shape[1:], dtype=like.dtype, generator=g)

    return torch.stack([draw(b) for b in range(len(like))]).to(like.device)


# Plans: one layer's perturbation per copy (sampling s, level index i) ------------------------------------------------

class MaskPlan:
    """Ablated units (per sampling and level) replaced by a fill value: 0, or a per-unit value."""

    weights = False

    def __init__(self, ablated: torch.Tensor, fill: torch.Tensor | None, unit_axis: int):
        self.ablated = ablated  # (S, L, C) bool
        self.fill = fill  # (C,) float64, or None for 0
        self.unit_axis = unit_axis
        self._index = [[row.nonzero()[:, 0] for row in rows] for rows in ablated]  # [s][i] ablated unit indices
        self._on: dict[torch.device, list] = {}

    @property
    def zero_fill(self) -> bool:
        return self.fill is None

    def identity(self, s: int, i: int) -> bool:
        return not bool(self.ablated[s, i].any())

    def signature(self, s: int, i: int) -> bytes:
        """Equal for copies that perturb identically (at level 1 every sampling ablates every unit)."""
        return self.ablated[s, i].numpy().tobytes()

    def apply(self, h: torch.Tensor, copies: Sequence[tuple[int, int]], start: int,
              fresh: bool = False) -> torch.Tensor:
        """Perturb m stacked copies: h (m·B, ...), rows j·B … (j+1)·B − 1 get the mask of ``copies[j]``.

        `fresh` says h is a contiguous tensor of the caller's that may be changed in place.
        """
        out, axis, stacked = stacked_copies(h, len(copies), self.unit_axis, fresh)
        if h.device not in self._on:
            self._on[h.device] = [[index.to(h.device) for index in row] for row in self._index]
        # Filling selects values exactly (no arithmetic), so every path perturbs bit-identically.
        for part, (s, i) in zip(stacked, copies):
            index = self._on[h.device][s][i]
            if self.fill is None:
                part.index_fill_(axis, index, 0)
            else:
                shape = [1] * part.dim()
                shape[axis] = len(index)
                values = self.fill.to(h.device, h.dtype)[index].reshape(shape)
                part.index_copy_(axis, index, values.expand(*part.shape[:axis], len(index), *part.shape[axis + 1:]))
        return out


def stacked_copies(h: torch.Tensor, m: int, unit_axis: int,
                    fresh: bool) -> tuple[torch.Tensor, int, torch.Tensor]:
    """(out, unit axis, out viewed as (m, B, ...)) for perturbing m stacked copies of a batch in h (m·B, ...);
    out is h itself when `fresh` (the caller's contiguous tensor), else a contiguous copy."""
    out = h if fresh else h.clone(memory_format=torch.contiguous_format)
    return out, unit_axis % h.dim(), out.view(m, -1, *h.shape[1:])


class NoisePlan:
    """ε·level·std_unit added to the layer's output, ε per example from its own stream (`example_noise`)."""

    weights = False

    def __init__(self, layer: str, std: torch.Tensor, levels: np.ndarray, seed: int, unit_axis: int):
        self.layer, self.std, self.levels, self.seed, self.unit_axis = layer, std, levels, seed, unit_axis
        self._start: int | None = None
        self._eps: dict[int, torch.Tensor] = {}  # sampling -> (B, ...) ε of the batch at `_start`

    def identity(self, s: int, i: int) -> bool:
        return self.levels[i] == 0 or not bool((self.std > 0).any())

    def signature(self, s: int, i: int) -> tuple[int, int]:
        return s, i

    def apply(self, h: torch.Tensor, copies: Sequence[tuple[int, int]], start: int,
              fresh: bool = False) -> torch.Tensor:
        """Perturb m stacked copies: h (m·B, ...), rows j·B … (j+1)·B − 1 get the noise of ``copies[j]``.

        `fresh` says h is a contiguous tensor of the caller's that may be changed in place.
        """
        out, axis, stacked = stacked_copies(h, len(copies), self.unit_axis, fresh)
        shape = [1] * h.dim()
        shape[axis] = h.shape[axis]
        # Copies come sampling by sampling, so a batch only ever needs the ε of the samplings at hand.
        wanted = {s for s, _ in copies}
        self._eps = {s: eps for s, eps in self._eps.items() if s in wanted and self._start == start}
        self._start = start
        for part, (s, i) in zip(stacked, copies):
            if s not in self._eps:
                tokens = part.dim() == 3 and axis == 2
                self._eps[s] = example_noise(self.layer, s, self.seed, start, part, tokens)
            scale = (float(self.levels[i]) * self.std).to(h.device, h.dtype).reshape(shape)  # (1, C, 1...)
            part.add_(self._eps[s] * scale)
        return out


class WeightPlan:
    """Per-copy weights of the Conv/Linear `module` producing a layer's units; subclasses define `weight`."""

    weights = True

    def __init__(self, module: nn.Module):
        self.module = module

    def identity(self, s: int, i: int) -> bool:
        raise NotImplementedError

    def signature(self, s: int, i: int) -> object:
        """Equal for copies that perturb identically."""
        return s, i

    def weight(self, s: int, i: int) -> torch.Tensor:
        raise NotImplementedError


class WeightNoisePlan(WeightPlan):
    def __init__(self, layer: str, module: nn.Module, levels: np.ndarray, samplings: int, seed: int):
        super().__init__(module)
        w = module.weight.detach()
        self.levels = levels
        self.std = float(w.double().std(correction=0))
        self.eps = [torch.randn(w.shape, dtype=w.dtype, generator=torch_generator(seed, layer, s, "weight_noise"))
                    .to(w.device) for s in range(samplings)]

    def identity(self, s: int, i: int) -> bool:
        return self.levels[i] == 0 or self.std == 0

    def weight(self, s: int, i: int) -> torch.Tensor:
        return self.module.weight.detach() + self.eps[s] * (float(self.levels[i]) * self.std)


class WeightKnockoutPlan(WeightPlan):
    def __init__(self, layer: str, module: nn.Module, levels: np.ndarray, samplings: int, seed: int):
        super().__init__(module)
        n = module.weight.numel()
        self.k = [n_ablated(float(level), n) for level in levels]
        self.rank = []  # per sampling, (n,) the position of each weight in that sampling's random order
        for s in range(samplings):
            rank = torch.empty(n, dtype=torch.int64)
            rank[torch.randperm(n, generator=torch_generator(seed, layer, s, "weight_knockout"))] = torch.arange(n)
            self.rank.append(rank.to(module.weight.device))

    def identity(self, s: int, i: int) -> bool:
        return self.k[i] == 0

    def signature(self, s: int, i: int) -> object:
        return "all" if self.k[i] == len(self.rank[s]) else (s, i)

    def weight(self, s: int, i: int) -> torch.Tensor:
        w = self.module.weight.detach()
        return torch.where((self.rank[s] < self.k[i]).view(w.shape), torch.zeros((), dtype=w.dtype), w)


# The registry ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerSpec:
    """What a plan is built from: one layer of a job."""

    name: str
    units: int
    unit_axis: int
    levels: np.ndarray
    samplings: int
    seed: int
    moments: Moments | None
    producer: nn.Module | None


@dataclass(frozen=True)
class Perturbation:
    """A registered perturbation (definitions in the module doc).

    Attributes:
        name: its name in configs and DataFrames.
        noise: levels are σ multiples >= 0 (default `NOISE_LEVELS`), not shares in [0, 1] (`SHARE_LEVELS`).
        weights: perturbs the weights of the Conv/Linear producing the layer's units, not the layer's output.
        needs_moments: needs the clean layer's streamed moments (mean, |r| or std).
        build: ``build(layer) -> plan`` for one layer.
    """

    name: str
    noise: bool
    weights: bool
    needs_moments: bool
    build: Callable[[LayerSpec], Plan]

    @property
    def default_levels(self) -> np.ndarray:
        return (NOISE_LEVELS if self.noise else SHARE_LEVELS).copy()


def _zero(layer: LayerSpec) -> MaskPlan:
    return MaskPlan(ablation_masks(layer.name, layer.units, layer.levels, layer.samplings, layer.seed), None,
                     layer.unit_axis)


def _mean(layer: LayerSpec) -> MaskPlan:
    return MaskPlan(ablation_masks(layer.name, layer.units, layer.levels, layer.samplings, layer.seed),
                     layer.moments.mean, layer.unit_axis)


def _targeted(layer: LayerSpec) -> MaskPlan:
    orders = [targeted_order(layer.name, layer.moments, s, layer.seed) for s in range(layer.samplings)]
    return MaskPlan(nested_masks(orders, layer.levels), None, layer.unit_axis)


def _act_noise(layer: LayerSpec) -> NoisePlan:
    return NoisePlan(layer.name, layer.moments.std, layer.levels, layer.seed, layer.unit_axis)


def _weight_noise(layer: LayerSpec) -> WeightNoisePlan:
    return WeightNoisePlan(layer.name, layer.producer, layer.levels, layer.samplings, layer.seed)


def _weight_knockout(layer: LayerSpec) -> WeightKnockoutPlan:
    return WeightKnockoutPlan(layer.name, layer.producer, layer.levels, layer.samplings, layer.seed)


PERTURBATIONS: dict[str, Perturbation] = {p.name: p for p in (
    Perturbation("zero", noise=False, weights=False, needs_moments=False, build=_zero),
    Perturbation("mean", noise=False, weights=False, needs_moments=True, build=_mean),
    Perturbation("targeted", noise=False, weights=False, needs_moments=True, build=_targeted),
    Perturbation("act_noise", noise=True, weights=False, needs_moments=True, build=_act_noise),
    Perturbation("weight_noise", noise=True, weights=True, needs_moments=False, build=_weight_noise),
    Perturbation("weight_knockout", noise=False, weights=True, needs_moments=False, build=_weight_knockout),
)}


def get_perturbation(perturbation: str) -> Perturbation:
    """The registered perturbation called `perturbation`, or a WidthlabError listing the implemented ones."""
    if perturbation not in PERTURBATIONS:
        raise WidthlabError(f"unknown perturbation {perturbation!r}; implemented: {', '.join(PERTURBATIONS)}")
    return PERTURBATIONS[perturbation]


# Bounds on what one curve measures: every level and sampling is a perturbed forward pass over the data, and the
# curves are held in memory; beyond these a typo (levels: 10000000000) would grow memory until the machine stops.
MAX_LEVELS = 1_000
MAX_SAMPLINGS = 1_000


def evenly_spaced_levels(n: int, perturbation: str = "zero") -> np.ndarray:
    """`n` evenly spaced levels over `perturbation`'s default range: shares 0 … 1, or noise 0 … 2σ.

    Example:
        >>> evenly_spaced_levels(3).tolist(), evenly_spaced_levels(3, "act_noise").tolist()
        ([0.0, 0.5, 1.0], [0.0, 1.0, 2.0])
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 2 <= n <= MAX_LEVELS:
        raise WidthlabError(f"the number of levels must be an integer from 2 to {MAX_LEVELS:,} (the bound on "
                            f"levels), got {n!r}")
    top = get_perturbation(perturbation).default_levels[-1]
    # top · i is an exact integer, so each level is the float nearest its decimal (0.1, not 0.30000000000000004).
    return np.array([top * i / (n - 1) for i in range(n)])


def check_levels(levels, perturbation: str = "zero", *, from_zero: bool = False) -> np.ndarray:
    """(L,) float64 levels of `perturbation`: its defaults for None, n evenly spaced ones for a count n >= 2
    (`evenly_spaced_levels`), else at least two increasing levels, shares in [0, 1] or, for a noise
    perturbation, σ multiples >= 0 ending above 0; with `from_zero` (default False) the first must be 0."""
    spec = get_perturbation(perturbation)
    if levels is None:
        return spec.default_levels
    if isinstance(levels, (int, np.integer)) and not isinstance(levels, bool):
        if levels < 2:
            raise WidthlabError(f"levels of {perturbation!r} must be at least 2, got {levels}")
        if levels > MAX_LEVELS:
            raise WidthlabError(f"levels of {perturbation!r} must be at most {MAX_LEVELS:,} (the bound on levels), "
                                f"got {levels:,}")
        return evenly_spaced_levels(levels, perturbation)
    x = np.asarray(levels, dtype=np.float64)
    if len(x) > MAX_LEVELS:
        raise WidthlabError(f"levels of {perturbation!r} are {len(x):,} values, more than {MAX_LEVELS:,} (the bound "
                            "on levels)")
    ok = x.ndim == 1 and len(x) >= 2 and np.all(np.isfinite(x)) and np.all(np.diff(x) > 0) and x[0] >= 0
    if spec.noise and not (ok and x[-1] > 0):
        raise WidthlabError(f"levels of {perturbation!r} must be at least two increasing multiples of σ, >= 0 and "
                            f"ending above 0, got {levels!r}")
    if not spec.noise and not (ok and x[-1] <= 1):
        raise WidthlabError(f"levels of {perturbation!r} must be at least two increasing shares in [0, 1], "
                            f"got {levels!r}")
    if from_zero and x[0] != 0:
        raise WidthlabError(f"levels of {perturbation!r} must start at 0 (the unperturbed network), got "
                            f"{list(levels)}")
    return x


def level_sets(levels, perturbations: Sequence[str], *, default=None,
               from_zero: bool = False) -> dict[str, np.ndarray]:
    """The checked levels of each perturbation (`check_levels`): the one validator of levels, for `analyze`, the
    study config and the CLI.

    Args:
        levels: None, a count, a list (for every perturbation), or a mapping perturbation → None, a count or a
            list; a mapping naming a perturbation not in `perturbations` is an error.
        perturbations: the perturbations measured.
        default: what a perturbation without levels gets (default None: its own `default_levels`; or a count).
        from_zero: every set must start at 0 (default False).

    Example: three levels over each perturbation's range:
        >>> {name: levels.tolist() for name, levels in level_sets(3, ["zero", "act_noise"]).items()}
        {'zero': [0.0, 0.5, 1.0], 'act_noise': [0.0, 1.0, 2.0]}
    """
    perturbations = list(perturbations)
    if isinstance(levels, Mapping):
        unknown = sorted(set(levels) - set(perturbations))
        if unknown:
            raise WidthlabError(f"levels given for {unknown}, which are not among the perturbations {perturbations}")
        per = dict(levels)
    else:
        per = dict.fromkeys(perturbations, levels)
    return {name: check_levels(default if per.get(name) is None else per[name], name, from_zero=from_zero)
            for name in perturbations}
