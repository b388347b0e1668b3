"""Robustness (DESIGN.md §1): how the network's predictions survive perturbing a layer's units.

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
  so it does not depend on batching; the same ε at every level.
- ``weight_noise`` (noise): ε·level·std(W) added to every weight of the Conv/Linear module producing the layer's
  units (`widthlab.measure.graph`: the layer itself, or the Conv/Linear before it through ReLU-like, BatchNorm,
  Dropout or Identity modules); std(W) over all its weights (ddof 0), bias untouched, ε per weight, the same at
  every level.
- ``weight_knockout``: the first k = floor(level·n + 0.5 + 1e-9) of a random order of that module's n weights set
  to 0 (nested, like the unit masks).

A curve records, per sampling and level, the share of examples whose argmax equals the unperturbed prediction
(and the accuracy when labels are known); robustness is its `robustness_auc`.

The engine (DESIGN.md §4) evaluates several curves — *jobs*, each a perturbation of a scope of layers — in one
sweep over the data. Per batch one clean forward pass gives the unperturbed predictions and the measured layers'
outputs; each job's perturbed copies (one per sampling and level) then run on one of two paths, which give
bit-identical curves for float64 models:

- ``batched``: the first layer of the scope (in execution order) is a proven cut (`widthlab.measure.graph`), so
  only the network after it runs, on copies of its clean output stacked along the batch, `ablations_per_eval`
  copies per evaluation; further layers of an ``"all"`` scope are perturbed copy by copy inside the stack;
- ``full``: one whole forward pass per copy, the perturbation applied by a forward hook (or, for weights, by the
  producing module's forward).

Copies that perturb nothing (level 0, k = 0) are not evaluated: they predict as the clean pass; copies that
perturb identically (level 1 ablates every unit whatever the sampling) are evaluated once. On the batched path a
zero ablation is applied after the modules that commute with it (`widthlab.measure.graph.zero_commuting_chain`:
ReLU, pooling, ... following the cut), which then run once per batch instead of once per copy. On the first
batch the batched path also checks that the network after the cut reproduces the model's scores on two stacked
copies (an operation mixing a batch's examples fails this); with ``path="auto"`` an fx-proven cut that fails it
falls back to full passes. The batched path assumes examples are independent through the network in eval mode.

Opt-in ``skip_zero_inputs``: in perturbed evaluations every plain Conv/Linear (one group) drops the input
channels that are exactly zero across a copy's batch, and their weights, so ablated units cost no arithmetic
downstream. This is mathematically the same sum in a different order: equal to round-off, not bit-identical.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from widthlab.errors import WidthlabError, check_positive_int
from widthlab.measure.capture import (Inputs, batches, check_unit_axis, default_layers, evaluating, resolve_modules,
                                      stream_activations, unit_rows)
from widthlab.measure.graph import (declared_suffix, is_plain_producer, probe, suffix_module, trace,
                                    weighted_forward, zero_commuting_chain)
from widthlab.measure.redundancy import Moments, flat_units
from widthlab.seeding import torch_generator

ALL = "all"  # the scope that perturbs every analysed layer at once
SHARE_LEVELS = np.arange(11) / 10  # 0, 0.1, ..., 1.0, each the float nearest its decimal
NOISE_LEVELS = np.arange(11) / 5  # 0, 0.2, ..., 2.0 standard deviations
PATHS = ("auto", "full", "batched")


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

    Example: ``robustness_auc([0, 0.5, 1], [1, 0.5, 0]) == 0.5``
    """
    x = np.asarray(levels, dtype=np.float64)
    y = np.asarray(fractions, dtype=np.float64)
    if x.ndim != 1 or len(x) < 2 or y.shape != x.shape or np.any(np.diff(x) <= 0) or x[-1] <= 0:
        raise WidthlabError(f"robustness_auc needs at least two increasing levels ending above 0 and one fraction "
                            f"per level; got levels {x.tolist()} and fractions of shape {y.shape}")
    area = float(np.trapezoid(y, x))
    return area if x[-1] == 1.0 else area / float(x[-1])


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

    Example: for units [a, a, -a, b] and u = 0, the order starts 0, then 1 and 2 (|r| = 1), then 3.
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


def _nested_masks(orders: Sequence[torch.Tensor], levels: Sequence[float] | np.ndarray) -> torch.Tensor:
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

    Example: ``ablation_masks("relu1", 10, [0, 0.5, 1], 3)[s, 1].sum() == 5``; the masks are nested in level.
    """
    return _nested_masks([unit_order(layer, n_units, s, seed) for s in range(samplings)], levels)


def example_noise(layer: str, sampling: int, seed: int, start: int, like: torch.Tensor) -> torch.Tensor:
    """ε ~ N(0, 1) shaped like `like` (B, ...): example b drawn from the stream (seed, layer, s, start + b).

    Args:
        layer, sampling, seed: name the stream; start: the index of the batch's first example in the inputs.
        like: a (B, ...) tensor giving the shape, dtype and device.

    Example: ``example_noise("relu1", 0, 0, 0, h)[5]`` equals ``example_noise("relu1", 0, 0, 5, h[5:])[0]``.
    """
    return torch.stack([torch.randn(like.shape[1:], dtype=like.dtype,
                                    generator=torch_generator(seed, layer, sampling, "act_noise", start + b))
                        for b in range(len(like))]).to(like.device)


# Plans: one layer's perturbation per copy (sampling s, level index i) ------------------------------------------------

class _MaskPlan:
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
        out, axis, stacked = _stacked_copies(h, len(copies), self.unit_axis, fresh)
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


def _stacked_copies(h: torch.Tensor, m: int, unit_axis: int,
                    fresh: bool) -> tuple[torch.Tensor, int, torch.Tensor]:
    """(out, unit axis, out viewed as (m, B, ...)) for perturbing m stacked copies of a batch in h (m·B, ...);
    out is h itself when `fresh` (the caller's contiguous tensor), else a contiguous copy."""
    out = h if fresh else h.clone(memory_format=torch.contiguous_format)
    return out, unit_axis % h.dim(), out.view(m, -1, *h.shape[1:])


class _NoisePlan:
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
        out, axis, stacked = _stacked_copies(h, len(copies), self.unit_axis, fresh)
        shape = [1] * h.dim()
        shape[axis] = h.shape[axis]
        # Copies come sampling by sampling, so a batch only ever needs the ε of the samplings at hand.
        wanted = {s for s, _ in copies}
        self._eps = {s: eps for s, eps in self._eps.items() if s in wanted and self._start == start}
        self._start = start
        for part, (s, i) in zip(stacked, copies):
            if s not in self._eps:
                self._eps[s] = example_noise(self.layer, s, self.seed, start, part)
            scale = (float(self.levels[i]) * self.std).to(h.device, h.dtype).reshape(shape)  # (1, C, 1...)
            part.add_(self._eps[s] * scale)
        return out


class _WeightPlan:
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


class _WeightNoisePlan(_WeightPlan):
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


class _WeightKnockoutPlan(_WeightPlan):
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
class _Layer:
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
    build: Callable[[_Layer], object]

    @property
    def default_levels(self) -> np.ndarray:
        return (NOISE_LEVELS if self.noise else SHARE_LEVELS).copy()


def _zero(layer: _Layer) -> _MaskPlan:
    return _MaskPlan(ablation_masks(layer.name, layer.units, layer.levels, layer.samplings, layer.seed), None,
                     layer.unit_axis)


def _mean(layer: _Layer) -> _MaskPlan:
    return _MaskPlan(ablation_masks(layer.name, layer.units, layer.levels, layer.samplings, layer.seed),
                     layer.moments.mean, layer.unit_axis)


def _targeted(layer: _Layer) -> _MaskPlan:
    orders = [targeted_order(layer.name, layer.moments, s, layer.seed) for s in range(layer.samplings)]
    return _MaskPlan(_nested_masks(orders, layer.levels), None, layer.unit_axis)


def _act_noise(layer: _Layer) -> _NoisePlan:
    return _NoisePlan(layer.name, layer.moments.std, layer.levels, layer.seed, layer.unit_axis)


def _weight_noise(layer: _Layer) -> _WeightNoisePlan:
    return _WeightNoisePlan(layer.name, layer.producer, layer.levels, layer.samplings, layer.seed)


def _weight_knockout(layer: _Layer) -> _WeightKnockoutPlan:
    return _WeightKnockoutPlan(layer.name, layer.producer, layer.levels, layer.samplings, layer.seed)


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


def evenly_spaced_levels(n: int, perturbation: str = "zero") -> np.ndarray:
    """`n` evenly spaced levels over `perturbation`'s default range: shares 0 … 1, or noise 0 … 2σ.

    Example: ``evenly_spaced_levels(3, "act_noise").tolist() == [0.0, 1.0, 2.0]``
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise WidthlabError(f"the number of levels must be an integer of at least 2, got {n!r}")
    top = get_perturbation(perturbation).default_levels[-1]
    # top · i is an exact integer, so each level is the float nearest its decimal (0.1, not 0.30000000000000004).
    return np.array([top * i / (n - 1) for i in range(n)])


def check_levels(levels, perturbation: str = "zero") -> np.ndarray:
    """(L,) float64 levels of `perturbation`: its defaults for None, else at least two increasing levels, shares
    in [0, 1] or, for a noise perturbation, σ multiples >= 0 ending above 0."""
    spec = get_perturbation(perturbation)
    if levels is None:
        return spec.default_levels
    x = np.asarray(levels, dtype=np.float64)
    ok = x.ndim == 1 and len(x) >= 2 and np.all(np.isfinite(x)) and np.all(np.diff(x) > 0) and x[0] >= 0
    if spec.noise and not (ok and x[-1] > 0):
        raise WidthlabError(f"levels of {perturbation!r} must be at least two increasing multiples of σ, >= 0 and "
                            f"ending above 0, got {levels!r}")
    if not spec.noise and not (ok and x[-1] <= 1):
        raise WidthlabError(f"levels of {perturbation!r} must be at least two increasing shares in [0, 1], "
                            f"got {levels!r}")
    return x


# The engine -----------------------------------------------------------------------------------------------------------

@dataclass
class _Entry:
    """A point a batched evaluation starts from: the clean output of cut `layer`, or, for weight perturbations,
    the clean input of the `chain` (producer, ..., layer) that recomputes it. A zero ablation at `layer` is applied
    after its `hoist` modules (`zero_commuting_chain`), which run once per batch; `suffix` runs the network from
    the last of them."""

    layer: str
    suffix: Callable[[torch.Tensor], object]
    proof: str  # "declared" or "fx"
    chain: list[str] | None = None
    hoist: list[str] = field(default_factory=list)

    @property
    def resumes_at(self) -> str:
        """The module whose output `suffix` takes."""
        return self.hoist[-1] if self.hoist else self.layer

    @property
    def skipped(self) -> list[str]:
        """The measured layer an evaluation from here does not run (a weight chain may run it again)."""
        return [] if self.chain and self.layer in self.chain else [self.layer]


@dataclass(eq=False)
class _Job:
    """One curve being measured: a perturbation of a scope, its plans, how it is evaluated, and its counts.

    A job of several layers may continue a *donor*, the job of its first layer alone: up to its second layer,
    each of its perturbed copies computes exactly what the donor's copy of the same sampling and level does. It
    then takes the donor's value there (captured at ``resume.resumes_at``) and runs only the network after it.
    """

    perturbation: Perturbation
    scope: list[str]
    levels: np.ndarray
    plans: dict[str, object] = field(default_factory=dict)  # layer -> plan
    weight_plans: dict[str, _WeightPlan] = field(default_factory=dict)  # producer module name -> plan
    identical: torch.Tensor | None = None  # (S, L) bool: the copy perturbs nothing
    copies: list[tuple[int, int]] = field(default_factory=list)  # the (sampling, level index) pairs to evaluate
    twins: dict = field(default_factory=dict)  # evaluated copy -> other copies that perturb identically
    entry: _Entry | None = None  # None: full forward passes
    donor: _Job | None = None
    resume: _Entry | None = None  # where a job with a donor continues: its second layer
    donated: dict = field(default_factory=dict)  # own copy -> the donor's evaluated copy it continues
    recipients: list[_Job] = field(default_factory=list)  # jobs continuing this one
    agree: torch.Tensor | None = None  # (S, L) examples whose prediction is unchanged
    correct: torch.Tensor | None = None  # (S, L) examples predicted correctly

    def sites(self, *ran: str) -> tuple[set[str], set[str]]:
        """``(hooked layers, producer modules)`` that must run exactly once in an evaluation that starts after
        the layers `ran` (their outputs come from elsewhere)."""
        return set(self.scope) - set(ran), set(self.weight_plans)


class _Cuts:
    """The proven cuts of a model (declared, else by its fx graph) and batched entries on them, cached."""

    def __init__(self, model: nn.Module, graph, measured: set[str]):
        self.model, self.graph, self.measured = model, graph, measured
        self._suffixes: dict[str, tuple | None] = {}

    def suffix(self, layer: str) -> tuple[Callable, str] | None:
        """``(h -> scores from layer's output, proof)``, or None when `layer` is not a proven cut."""
        if layer not in self._suffixes:
            declared = declared_suffix(self.model, layer)
            traced = None if declared is not None or self.graph is None else suffix_module(self.model, self.graph,
                                                                                            layer)
            self._suffixes[layer] = ((declared, "declared") if declared is not None else
                                     None if traced is None else (traced, "fx"))
        return self._suffixes[layer]

    def entry(self, layer: str, plan, chain: list[str] | None = None) -> _Entry | None:
        """An entry at cut `layer` for `plan`, a zero ablation hoisted as far as it goes; None if not a cut."""
        if self.suffix(layer) is None:
            return None
        if getattr(plan, "zero_fill", False) and self.graph is not None:
            hoist = zero_commuting_chain(self.model, self.graph, layer, self.measured)
            for end in range(len(hoist), 0, -1):
                if self.suffix(hoist[end - 1]) is not None:
                    # The hoist rests on the fx graph, so a failed check may fall back as for fx proofs.
                    return _Entry(layer, self.suffix(hoist[end - 1])[0], "fx", hoist=hoist[:end])
        return _Entry(layer, *self.suffix(layer), chain=chain)


def _link_donor(job: _Job, work: list[_Job], order: list[str], cuts: _Cuts) -> None:
    """Let a batched job of several layers continue the job of its first layer alone, if the sweep has one."""
    if job.entry is None or job.perturbation.weights or len(job.scope) < 2:
        return
    first = job.entry.layer
    donor = next((other for other in work if other is not job and other.scope == [first] and other.entry
                  and other.perturbation is job.perturbation and np.array_equal(other.levels, job.levels)), None)
    second = next(name for name in order if name in job.scope and name != first)
    resume = None if donor is None else cuts.entry(second, job.plans[second])
    if resume is None:
        return
    job.donor, job.resume = donor, resume
    donor.recipients.append(job)
    evaluated = {copy: copy for copy in donor.copies}
    evaluated.update({twin: copy for copy, twins in donor.twins.items() for twin in twins})
    # A copy whose first layer the donor leaves unperturbed (k = 0 there) starts from the clean value instead.
    job.donated = {copy: evaluated[copy] for copy in job.copies if copy in evaluated}


def _unlink_donor(job: _Job) -> None:
    job.donor.recipients.remove(job)
    job.donor, job.resume, job.donated = None, None, {}


class _Sites:
    """The engine's handles on the model during a sweep: forward hooks on the measured layers and on the modules
    whose outputs donors pass on, and forward overrides on the Conv/Linear modules it perturbs or skips zeros in.
    Used as a context manager: everything is removed in ``finally``.

    ``mode`` says what a forward pass is: ``"clean"`` (check and keep outputs), ``"perturb"`` (apply the current
    job's plans to the current copies) or ``"pass"`` (change nothing).
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], overridden: Sequence[str], captures: Sequence[str],
                 unit_axis: int, skip_zero_inputs: bool):
        self.modules = dict(model.named_modules())
        self.layers, self.overridden, self.captures = list(layers), list(overridden), list(captures)
        self.unit_axis, self.skip = unit_axis, skip_zero_inputs
        self.mode, self.job, self.copies, self.start = "pass", None, [], 0
        self.rows: dict[str, torch.Tensor] | None = None  # clean (rows, units) chunks, when wanted
        self.keep_outputs: set[str] = set()
        self.keep_inputs: set[str] = set()
        self.outputs: dict[str, torch.Tensor] = {}  # clean outputs of `keep_outputs` layers, this batch
        self.hoisted: dict[tuple[str, ...], torch.Tensor] = {}  # those outputs after an entry's hoist, this batch
        self.inputs: dict[str, torch.Tensor] = {}  # clean inputs of `keep_inputs` modules, this batch
        self.capture_at: set[str] = set()  # modules whose outputs this evaluation passes on
        self.captured: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}  # hooked layer -> runs in this evaluation
        self.forwards: dict[str, int] = {}  # overridden module -> runs in this evaluation
        self._handles: list = []
        self._shadowed: list = []  # (module, its own instance-level forward or None) per override installed

    def __enter__(self) -> _Sites:
        try:
            for name in self.layers:
                self._handles.append(self.modules[name].register_forward_hook(self._hook(name)))
            for name in self.captures:  # after the layer hooks, so a captured layer output is the clean one
                self._handles.append(self.modules[name].register_forward_hook(self._capture(name)))
            for name in self.overridden:
                # An instance attribute shadows the class's forward for nn.Module.__call__, hooks included.
                module = self.modules[name]
                self._shadowed.append((module, module.__dict__.get("forward")))
                module.forward = self._forward(name)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        for module, previous in self._shadowed:
            del module.forward
            if previous is not None:
                module.forward = previous

    def new_batch(self, keep_outputs: set[str], keep_inputs: set[str], rows: bool) -> None:
        """Forget the previous batch's values; the clean pass to come keeps these and (if `rows`) layer rows."""
        self.keep_outputs, self.keep_inputs = keep_outputs, keep_inputs
        self.rows = {} if rows else None
        self.outputs.clear()
        self.hoisted.clear()
        self.inputs.clear()

    def entry_value(self, entry: _Entry) -> torch.Tensor:
        """The clean output of `entry`'s layer after its hoist modules (computed once per batch)."""
        if not entry.hoist:
            return self.outputs[entry.layer]
        key = (entry.layer, *entry.hoist)
        if key not in self.hoisted:
            h = self.outputs[entry.layer].clone()  # a hoisted module may work in place
            for name in entry.hoist:
                h = self.modules[name](h)
            self.hoisted[key] = h
        return self.hoisted[key]

    def begin(self, mode: str, job: _Job | None = None, copies: Sequence[tuple[int, int]] = (),
              start: int = 0) -> None:
        """Start one forward evaluation of `mode`."""
        self.mode, self.job, self.copies, self.start = mode, job, list(copies), start
        self.calls.clear()
        self.forwards.clear()
        self.captured.clear()
        self.capture_at = set() if job is None else {r.resume.resumes_at for r in job.recipients}

    def ran_once(self, sites: tuple[set[str], set[str]]) -> bool:
        """Whether every hooked layer and overridden module of `sites` ran exactly once in this evaluation."""
        layers, modules = sites
        return (all(self.calls.get(name, 0) == 1 for name in layers)
                and all(self.forwards.get(name, 0) == 1 for name in modules))

    def check_calls(self, sites: tuple[set[str], set[str]], what: str) -> None:
        """A WidthlabError naming any of `sites` that did not run exactly once in the evaluation just done."""
        layers, modules = sites
        wrong = sorted({name for name in layers if self.calls.get(name, 0) != 1}
                       | {name for name in modules if self.forwards.get(name, 0) != 1})
        if wrong:
            raise WidthlabError(f"{', '.join(map(repr, wrong))} did not run exactly once in {what}")

    def _hook(self, name: str):
        def hook(module, args, output):
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.calls[name] > 1:
                raise WidthlabError(f"layer {name!r} ran more than once in one forward pass, so its output is not "
                                    "one layer; measure a module that runs once (e.g. not a shared ReLU)")
            if self.mode == "clean":
                if self.rows is not None:
                    self.rows[name] = unit_rows(output, name, self.unit_axis)  # checks the axis and values
                else:
                    check_unit_axis(output, name, self.unit_axis)
                    if not torch.isfinite(output).all():
                        raise WidthlabError(f"layer {name!r} produced NaN or inf activations")
                if name in self.keep_outputs:
                    # Kept for the batched path after the pass; a later in-place op must not touch it.
                    self.outputs[name] = output.detach().clone()
            elif self.mode == "perturb":
                plan = self.job.plans.get(name)
                if plan is not None and not plan.weights:
                    return plan.apply(output, self.copies, self.start)
            return None
        return hook

    def _capture(self, name: str):
        def hook(module, args, output):
            if name in self.capture_at:
                self.captured[name] = output.detach().clone()  # later in-place ops must not touch it
        return hook

    def _forward(self, name: str):
        module = self.modules[name]
        plain = type(module).forward

        def forward(x: torch.Tensor) -> torch.Tensor:
            self.forwards[name] = self.forwards.get(name, 0) + 1
            if self.mode == "clean" and name in self.keep_inputs:
                self.inputs[name] = x.detach().clone()
            plan = self.job.weight_plans.get(name) if self.mode == "perturb" else None
            skip = self.skip and self.mode == "perturb" and getattr(module, "groups", 1) == 1
            if plan is None and not skip:
                return plain(module, x)
            parts = x.reshape(len(self.copies), -1, *x.shape[1:])  # (m, B, ...) one batch per copy
            outs = []
            for part, (s, i) in zip(parts, self.copies):
                weight = module.weight if plan is None or plan.identity(s, i) else plan.weight(s, i)
                outs.append(_forward_skipping_zeros(module, part, weight) if skip
                            else weighted_forward(module, part, weight))
            return outs[0] if len(outs) == 1 else torch.cat(outs)
        return forward


def _forward_skipping_zeros(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`weighted_forward` without the input channels of `x` that are exactly zero everywhere (nor their weights)."""
    axis = x.dim() - 1 if isinstance(module, nn.Linear) else 1
    # abs().amax() is several times faster than ne().any(); "!= 0" keeps a NaN channel alive.
    alive = x.abs().amax(dim=tuple(d for d in range(x.dim()) if d != axis)) != 0  # (C_in,)
    if bool(alive.all()):
        return weighted_forward(module, x, weight)
    # One channel is kept when all are zero, so the shapes stay valid (the output is then the bias).
    index = alive.nonzero()[:, 0] if bool(alive.any()) else alive.new_zeros(1, dtype=torch.int64)
    return weighted_forward(module, x.index_select(axis, index), weight.index_select(1, index))


def _predictions(out: object) -> torch.Tensor:
    """(N,) argmax of (N, classes) scores, or a WidthlabError for any other model output."""
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise WidthlabError(f"the model must return (N, classes) scores to measure robustness, got {got}")
    return out.argmax(1)


def _label_source(labels) -> torch.Tensor | None:
    if labels is None:
        return None
    y = torch.as_tensor(labels)
    if y.dim() != 1 or y.is_floating_point():
        raise WidthlabError(f"labels must be a 1-D integer sequence, got shape {tuple(y.shape)} of {y.dtype}")
    return y


def _clean_moments(model: nn.Module, inputs: Inputs, names: Sequence[str], unit_axis: int,
                   batch_size: int) -> dict[str, Moments]:
    """Streamed float64 moments of each layer over all evaluated rows (examples × positions)."""
    moments = {name: Moments() for name in names}
    for chunks, _ in stream_activations(model, inputs, names, unit_axis=unit_axis, batch_size=batch_size):
        for name, rows in chunks.items():
            moments[name].update(rows)
    return moments


def _plan(job: _Job, units: dict[str, int], chains: dict[str, list[str]], modules: dict[str, nn.Module],
          moments: Mapping[str, Moments], samplings: int, seed: int, unit_axis: int) -> None:
    """Build `job`'s plans and the copies that need evaluating."""
    spec = job.perturbation
    for name in job.scope:
        producer = chains[name][0] if spec.weights else None
        if producer is not None and producer in job.weight_plans:
            raise WidthlabError(f"layers {job.scope} share the producing module {producer!r}; perturb its weights "
                                "through one of them")
        if spec.needs_moments and moments[name].n_units != units[name]:
            raise WidthlabError(f"moments of layer {name!r} have {moments[name].n_units} units, the layer has "
                                f"{units[name]}")
        plan = spec.build(_Layer(name, units[name], unit_axis, job.levels, samplings, seed,
                                 moments.get(name), modules.get(producer)))
        job.plans[name] = plan
        if producer is not None:
            job.weight_plans[producer] = plan
    job.identical = torch.tensor([[all(plan.identity(s, i) for plan in job.plans.values())
                                   for i in range(len(job.levels))] for s in range(samplings)])
    groups: dict[tuple, list[tuple[int, int]]] = {}  # copies that perturb identically are evaluated once
    for s in range(samplings):
        for i in range(len(job.levels)):
            if not job.identical[s, i]:
                groups.setdefault(tuple(plan.signature(s, i) for plan in job.plans.values()), []).append((s, i))
    job.copies = [members[0] for members in groups.values()]
    job.twins = {members[0]: members[1:] for members in groups.values() if len(members) > 1}


def _batched_scores(job: _Job, entry: _Entry, sites: _Sites, copies: Sequence[tuple[int, int]],
                    rows: slice = slice(None)) -> object:
    """Scores of m stacked copies (m·B, classes) run from `entry` on the batch's clean values in `sites` (rows
    `rows` of them). The caller sets the sites' mode."""
    m = len(copies)
    if entry.chain is None:
        h = sites.entry_value(entry)[rows]
        h = h.repeat(m, *[1] * (h.dim() - 1))  # (m·B, ...) m stacked copies of the batch
        if sites.mode == "perturb":
            h = job.plans[entry.layer].apply(h, copies, sites.start, fresh=True)
    else:
        h = sites.inputs[entry.chain[0]][rows]
        h = h.repeat(m, *[1] * (h.dim() - 1))
        for name in entry.chain:  # the producer applies each copy's weights (its forward override)
            h = sites.modules[name](h)
    return entry.suffix(h)


def _reproduces(job: _Job, entry: _Entry, sites: _Sites, scores: torch.Tensor, ran: Sequence[str]) -> bool:
    """Whether the network after `entry` gives the model's `scores` for two stacked clean copies of the first rows
    of the batch, running each of the job's layers and producers after the layers `ran` exactly once."""
    rows = slice(0, 4)
    sites.begin("pass")
    got = _batched_scores(job, entry, sites, [(0, 0), (0, 0)], rows)
    expected = scores[rows].repeat(2, 1)
    tol = 1e-4 * float(expected.abs().max()) if expected.numel() else 0.0
    return (isinstance(got, torch.Tensor) and got.shape == expected.shape
            and bool(torch.allclose(got, expected, rtol=1e-4, atol=tol)) and sites.ran_once(job.sites(*ran)))


def _check_paths(work: list[_Job], sites: _Sites, scores: torch.Tensor, path: str) -> None:
    """On the first batch: keep the batched entries and donors that reproduce the model's scores."""
    for job in work:
        if job.entry is None or _reproduces(job, job.entry, sites, scores, job.entry.skipped):
            continue
        if job.entry.proof == "fx" and path == "auto":
            job.entry = None
            for recipient in list(job.recipients):
                _unlink_donor(recipient)
            continue
        raise WidthlabError(f"the network after cut {job.entry.layer!r} ({job.entry.proof}) does not reproduce the "
                            "model's scores on stacked copies of a batch (does forward_from run the rest of the "
                            "network and its layers, and does no operation mix the examples of a batch?); pass "
                            "path='full'")
    for job in work:
        if job.donor is not None and (job.entry is None or not _reproduces(
                job, job.resume, sites, scores, [job.entry.layer, job.resume.layer])):
            _unlink_donor(job)


def sweep(model: nn.Module, inputs: Inputs, jobs: Sequence[tuple[str, Sequence[str], np.ndarray]], *,
          samplings: int, seed: int, labels=None, unit_axis: int = 1, batch_size: int = 256, path: str = "auto",
          ablations_per_eval: int = 1, moments: Mapping[str, Moments] | None = None,
          skip_zero_inputs: bool = False,
          on_clean: Callable[[dict[str, torch.Tensor], int], None] | None = None) -> list[Curve]:
    """Measure several curves in one pass over the data: one `Curve` per ``(perturbation, scope, levels)`` job.

    A job of several layers whose first layer is also measured alone continues that job's evaluation from its
    second layer (see `_Job`), as ``analyze``'s ``"all"`` scope does.

    Args:
        jobs: ``(perturbation name, scope layers, checked levels)`` per curve; layers are validated module names.
        moments: streamed clean moments of the layers (computed here when a perturbation needs them and a layer
            is missing).
        on_clean: called after each batch's clean pass with what `stream_activations` yields for the jobs'
            layers, ``({layer: (rows, units) chunk}, examples in the batch)``, so statistics can be streamed in
            the same pass.
        Everything else as in `perturbation_curve`.

    Example: ``sweep(model, x, [("zero", ["relu1"], SHARE_LEVELS)], samplings=3, seed=0)[0].auc``
    """
    if path not in PATHS:
        raise WidthlabError(f"unknown path {path!r}; valid: {', '.join(PATHS)}")
    check_positive_int("ablations_per_eval", ablations_per_eval)
    work = [_Job(get_perturbation(name), list(scope), levels) for name, scope, levels in jobs]
    layers = list(dict.fromkeys(name for job in work for name in job.scope))
    weight_layers = list(dict.fromkeys(name for job in work if job.perturbation.weights for name in job.scope))
    moment_layers = [name for job in work if job.perturbation.needs_moments for name in job.scope]
    moments = dict(moments or {})
    missing = list(dict.fromkeys(name for name in moment_layers if name not in moments))
    if missing:
        moments.update(_clean_moments(model, inputs, missing, unit_axis, batch_size))
    labels = _label_source(labels)
    modules = dict(model.named_modules())

    with evaluating(model), torch.no_grad():
        source = batches(model, inputs, batch_size)
        first = next(source, None)
        if first is None:
            raise WidthlabError("inputs yielded no examples")
        found = probe(model, first[0][:2], layers, weight_layers)
        units = {name: output.shape[check_unit_axis(output, name, unit_axis)]
                 for name, output in found.outputs.items()}
        for job in work:
            _plan(job, units, found.chains, modules, moments, samplings, seed, unit_axis)
        if path != "full":
            cuts = _Cuts(model, trace(model, {*layers, *(name for chain in found.chains.values() for name in chain)}),
                         set(layers))
            for job in work:
                head = next(name for name in found.order if name in job.scope)
                job.entry = cuts.entry(head, job.plans[head], found.chains[head] if job.perturbation.weights else None)
                if job.entry is None and path == "batched":
                    raise WidthlabError(f"path='batched' needs the first layer of the scope to be a cut of the graph "
                                        f"(proven by torch.fx, or in model.cut_layers with model.forward_from); "
                                        f"{head!r} is not")
            for job in work:
                _link_donor(job, work, found.order, cuts)
        overridden = {name for job in work for name in job.weight_plans}
        if skip_zero_inputs:
            overridden |= {name for name, module in modules.items()
                           if is_plain_producer(module) and getattr(module, "groups", 1) == 1}
        captures = sorted({job.resume.resumes_at for job in work if job.resume is not None})
        with _Sites(model, layers, sorted(overridden), captures, unit_axis, skip_zero_inputs) as sites:
            n = _run(model, work, sites, itertools.chain([first], source), labels, path, ablations_per_eval,
                     on_clean)
    if labels is not None and n != len(labels):
        raise WidthlabError(f"labels has {len(labels)} entries but the inputs yielded {n} examples")
    curves = []
    for job in work:
        unchanged = job.agree.cpu().numpy() / n
        accuracy = None if job.correct is None else job.correct.cpu().numpy() / n
        curves.append(Curve(levels=job.levels, unchanged=unchanged, accuracy=accuracy,
                            auc=np.array([robustness_auc(job.levels, row) for row in unchanged]),
                            path="full" if job.entry is None else "batched"))
    return curves


def _run(model, work: list[_Job], sites: _Sites, source, labels, path: str, per_eval: int, on_clean) -> int:
    """Evaluate every job on every batch of `source`; fill the jobs' counts and return the number of examples."""
    n, labelled, first = 0, True, True
    for x, batch_y in source:
        sites.new_batch(
            keep_outputs={job.entry.layer for job in work if job.entry and job.entry.chain is None}
            | {job.resume.layer for job in work if job.resume is not None},
            keep_inputs={job.entry.chain[0] for job in work if job.entry and job.entry.chain is not None},
            rows=on_clean is not None)
        sites.begin("clean")
        scores = model(x)
        base = _predictions(scores)  # (B,)
        sites.check_calls((set(sites.layers), set()), "the clean forward pass")
        if not torch.isfinite(scores).all():
            raise WidthlabError("the model returned NaN or inf scores")
        if on_clean is not None:
            on_clean(sites.rows, len(x))
        if labels is not None:
            if n + len(x) > len(labels):
                raise WidthlabError(f"labels has {len(labels)} entries but the inputs yield more examples")
            y = labels[n:n + len(x)].to(base.device)
        else:
            y = batch_y
            labelled = labelled and y is not None
        if first:
            _check_paths(work, sites, scores, path)
            for job in work:
                job.agree = torch.zeros(job.identical.shape, dtype=torch.int64, device=base.device)
                job.correct = torch.zeros_like(job.agree)
            first = False
        for job in work:
            _evaluate_batch(model, job, sites, x, base, y, n, per_eval)
        n += len(x)
    if not (labels is not None or labelled):
        for job in work:
            job.correct = None
    return n


def _evaluate_batch(model, job: _Job, sites: _Sites, x: torch.Tensor, base: torch.Tensor, y: torch.Tensor | None,
                    start: int, per_eval: int) -> None:
    """Add one batch to `job`'s counts: clean predictions for copies that perturb nothing, evaluations otherwise
    (a job with a donor evaluates here only the copies its donor does not; the rest follow the donor's)."""
    identical = job.identical.to(base.device)
    job.agree += identical * len(x)
    if y is not None:
        job.correct += identical * (base == y).sum()
    if job.donor is not None:
        own = [copy for copy in job.copies if copy not in job.donated]
        for lo in range(0, len(own), per_eval):
            copies = own[lo:lo + per_eval]
            sites.begin("perturb", job, copies, start)
            scores = _batched_scores(job, job.resume, sites, copies)
            sites.check_calls(job.sites(job.entry.layer, job.resume.layer), f"the network after {job.resume.layer!r}")
            _tally(job, copies, scores, base, y)
        return
    batched = job.entry is not None
    step = per_eval if batched else 1
    for lo in range(0, len(job.copies), step):
        copies = job.copies[lo:lo + step]
        sites.begin("perturb", job, copies, start)
        if batched:
            scores = _batched_scores(job, job.entry, sites, copies)
            ran, what = job.entry.skipped, f"the network after {job.entry.layer!r}"
        else:
            scores, ran, what = model(x), [], "a perturbed forward pass"
        sites.check_calls(job.sites(*ran), what)
        captured = dict(sites.captured)
        _tally(job, copies, scores, base, y)
        for recipient in job.recipients:
            _continue(recipient, copies, captured, sites, base, y, start)


def _continue(job: _Job, donor_copies: list[tuple[int, int]], captured: dict[str, torch.Tensor], sites: _Sites,
              base: torch.Tensor, y: torch.Tensor | None, start: int) -> None:
    """Evaluate the copies of `job` that continue `donor_copies`, from the values the donor's evaluation passed on
    at ``job.resume.resumes_at``."""
    position = {copy: j for j, copy in enumerate(donor_copies)}
    mine = [(copy, position[donated]) for copy, donated in job.donated.items() if donated in position]
    if not mine:
        return
    at = job.resume.resumes_at
    if at not in captured:
        raise WidthlabError(f"{at!r} did not run in the network after {job.entry.layer!r}")
    values = captured[at].view(len(donor_copies), -1, *captured[at].shape[1:])  # (m, B, ...)
    copies = [copy for copy, _ in mine]
    h = torch.cat([values[j] for _, j in mine])  # (m'·B, ...) a fresh tensor
    sites.begin("perturb", job, copies, start)
    scores = job.resume.suffix(job.plans[job.resume.layer].apply(h, copies, start, fresh=True))
    sites.check_calls(job.sites(job.entry.layer, job.resume.layer), f"the network after {job.resume.layer!r}")
    _tally(job, copies, scores, base, y)


def _tally(job: _Job, copies: list[tuple[int, int]], scores: object, base: torch.Tensor,
           y: torch.Tensor | None) -> None:
    """Add the predictions of m evaluated copies, scores (m·B, classes), to the counts of them and their twins."""
    pred = _predictions(scores).reshape(len(copies), len(base))  # (m, B)
    targets = [(j, twin) for j, copy in enumerate(copies) for twin in (copy, *job.twins.get(copy, ()))]
    rows = torch.tensor([j for j, _ in targets], device=pred.device)
    index = torch.tensor([twin for _, twin in targets], device=pred.device)
    job.agree[index[:, 0], index[:, 1]] += (pred == base).sum(1)[rows]
    if y is not None:
        job.correct[index[:, 0], index[:, 1]] += (pred == y).sum(1)[rows]


# Public entry points --------------------------------------------------------------------------------------------------

def resolve_scope(model: nn.Module, inputs: Inputs, layer: str, layers: Sequence[str] | None,
                  batch_size: int) -> list[str]:
    """The layers perturbed together: ``[layer]``, or the analysed set for ``layer="all"``."""
    if not isinstance(layer, str):
        raise WidthlabError(f"layer must be a module name or {ALL!r}, got {layer!r}")
    if layer == ALL:
        names = default_layers(model, inputs, batch_size=batch_size) if layers is None else list(layers)
    elif layers is not None:
        raise WidthlabError(f"layers= names the set of the {ALL!r} scope; got layer={layer!r} with layers={layers!r}")
    else:
        names = [layer]
    resolve_modules(model, names)
    return names


def perturbation_curve(model: nn.Module, inputs: Inputs, layer: str, *, perturbation: str = "zero",
                       levels: Sequence[float] | None = None, samplings: int = 3, seed: int = 0, labels=None,
                       layers: Sequence[str] | None = None, unit_axis: int = 1, batch_size: int = 256,
                       path: str = "auto", ablations_per_eval: int = 1, moments: Mapping[str, Moments] | None = None,
                       skip_zero_inputs: bool = False) -> Curve:
    """Perturb a layer's units at increasing levels and record how often the prediction stays the same.

    Args:
        model: returns (N, classes) scores; runs on its device in eval mode (training flags restored).
        inputs: a tensor (N, ...), or a Dataset / DataLoader yielding ``(x, y)`` or ``x``.
        layer: a module name, or ``"all"`` to perturb every layer of `layers` at once, each with its own streams.
        perturbation: a name of `PERTURBATIONS` (module doc): ``zero``, ``mean``, ``targeted``, ``act_noise``,
            ``weight_noise`` or ``weight_knockout`` (default ``"zero"``).
        levels: increasing levels: shares in [0, 1] (default 0, 0.1, ..., 1.0), or σ multiples for ``act_noise``
            and ``weight_noise`` (default 0, 0.2, ..., 2.0).
        samplings: S random draws (default 3), sampling s from the streams (seed, layer, s, ...).
        seed: the seed of those streams (default 0).
        labels: (N,) class labels in the order of `inputs`; default: the inputs' own 1-D integer labels, if any.
        layers: the analysed set for ``layer="all"`` (default: `default_layers`).
        unit_axis: channel axis of the layer outputs (default 1).
        batch_size: examples per batch for tensor/Dataset inputs (default 256).
        path: ``"auto"`` (batched where the scope starts at a proven cut, else full), ``"full"`` or ``"batched"``.
        ablations_per_eval: perturbed copies stacked along the batch per evaluation on the batched path (default 1:
            the memory of one batch, still saving the network before the cut); raise it to fill a GPU.
        moments: clean streamed `Moments` per layer over the same inputs, reused by ``mean``, ``targeted`` and
            ``act_noise`` (default: streamed here when needed).
        skip_zero_inputs: Conv/Linear modules skip exactly-zero input channels in perturbed evaluations (default
            False; faster when units are ablated, equal only to round-off; see the module doc).

    Example: ``perturbation_curve(mlp, x, "relu1").unchanged[:, 0]`` is all ones (nothing ablated at level 0).
    """
    levels = check_levels(levels, perturbation)
    samplings = check_positive_int("samplings", samplings)
    scope = resolve_scope(model, inputs, layer, layers, batch_size)
    return sweep(model, inputs, [(perturbation, scope, levels)], samplings=samplings, seed=seed, labels=labels,
                 unit_axis=unit_axis, batch_size=batch_size, path=path, ablations_per_eval=ablations_per_eval,
                 moments=moments, skip_zero_inputs=skip_zero_inputs)[0]


def ablation_curve(model: nn.Module, inputs: Inputs, layer: str, *, levels: Sequence[float] | None = None,
                   samplings: int = 3, seed: int = 0, mode: str = "zero", **options) -> np.ndarray:
    """(S, L) share of unchanged predictions when a growing share of `layer`'s units is ablated.

    Args:
        layer: a module name, or ``"all"``.
        levels: shares of units in [0, 1] (default 0, 0.1, ..., 1.0).
        samplings: random unit orders (default 3); seed: their seed (default 0).
        mode: ``"zero"`` or ``"mean"`` (default ``"zero"``).
        **options: further keywords of `perturbation_curve` (layers, unit_axis, batch_size, path, ...).

    Example: ``ablation_curve(mlp, x, "relu1", levels=[0, 1], samplings=1)``
    """
    if mode not in ("zero", "mean"):
        raise WidthlabError(f"unknown ablation mode {mode!r}; valid: zero, mean")
    return perturbation_curve(model, inputs, layer, perturbation=mode, levels=levels, samplings=samplings,
                              seed=seed, **options).unchanged
