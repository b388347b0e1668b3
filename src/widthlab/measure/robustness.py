"""Robustness (DESIGN.md §1): how the network's predictions survive perturbing a layer's units.

For each sampling s a layer gets one random order of its units, drawn from the stream (seed, layer, s); at level
p the first k = floor(p·C + 0.5 + 1e-9) units of that order are perturbed (nested masks). A curve records, per
sampling and level, the share of examples whose argmax is unchanged (and the accuracy when labels are known).

Two paths give the same curves. ``full``: a forward hook replaces the layer's output and the whole network runs
once per (sampling, level). ``batched``: when the layer is a cut of the graph, the clean pass gives the layer's
output once per batch, and perturbed copies stacked along the batch run through the rest of the network only.
A layer is a cut when it is a top-level child of a plain ``nn.Sequential``, or when the model lists it in
``model.cut_layers`` and provides ``model.forward_from(layer, h) -> scores`` running the network from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn

from widthlab.errors import WidthlabError
from widthlab.measure.capture import (Inputs, batches, check_unit_axis, default_layers, evaluating, layer_hooks,
                                      resolve_modules, stream_activations)
from widthlab.seeding import torch_generator

ALL = "all"  # the scope that perturbs every analysed layer at once
DEFAULT_LEVELS = np.arange(11) / 10  # 0, 0.1, ..., 1.0, each the float nearest its decimal
PATHS = ("auto", "full", "batched")


@dataclass(frozen=True)
class Curve:
    """A perturbation curve over S samplings and L levels.

    Attributes:
        levels: (L,) perturbation levels.
        unchanged: (S, L) share of examples whose prediction equals the unperturbed one.
        accuracy: (S, L) top-1 accuracy, or None without labels.
        auc: (S,) `robustness_auc` of each sampling's ``unchanged`` row.
        path: ``"batched"`` (suffix-only evaluation at a cut) or ``"full"`` (whole forward passes).
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


def n_ablated(level: float, n_units: int) -> int:
    """k = floor(level·C + 0.5 + 1e-9): units ablated at `level` (the 1e-9 rounds exact halves up)."""
    return int(math.floor(level * n_units + 0.5 + 1e-9))


def unit_order(layer: str, n_units: int, sampling: int, seed: int = 0) -> torch.Tensor:
    """(C,) the ablation order of sampling `sampling` of `layer`: a permutation from the stream (seed, layer, s)."""
    return torch.randperm(n_units, generator=torch_generator(seed, layer, sampling))


def ablation_masks(layer: str, n_units: int, levels: Sequence[float] | np.ndarray, samplings: int,
                   seed: int = 0) -> torch.Tensor:
    """(S, L, C) bool, True where a unit is ablated: the first `n_ablated` units of each sampling's order.

    Example: ``ablation_masks("relu1", 10, [0, 0.5, 1], 3)[s, 1].sum() == 5``; the masks are nested in level.
    """
    masks = torch.zeros(samplings, len(levels), n_units, dtype=torch.bool)
    for s in range(samplings):
        order = unit_order(layer, n_units, s, seed)
        for i, level in enumerate(levels):
            masks[s, i, order[:n_ablated(float(level), n_units)]] = True
    return masks


class _MaskPlan:
    """One layer's ablation schedule: ablated units (per sampling and level) are replaced by a fill value."""

    def __init__(self, ablated: torch.Tensor, fill: torch.Tensor | None):
        self.ablated = ablated  # (S, L, C) bool
        self.fill = fill  # (C,) float64 per-unit value, or None for 0

    def identity(self, sampling: int, level: int) -> bool:
        return not bool(self.ablated[sampling, level].any())

    def apply(self, h: torch.Tensor, copies: Sequence[tuple[int, int]], unit_axis: int) -> torch.Tensor:
        """Perturb m stacked copies of a batch: h (m·B, ...) with copy j in rows j·B … (j+1)·B − 1 gets the
        mask of ``copies[j] = (sampling, level index)``."""
        axis = unit_axis % h.dim()  # validated on the clean pass
        m = len(copies)
        stacked = h.reshape(m, -1, *h.shape[1:])  # (m, B, ...)
        shape = [1] * stacked.dim()
        shape[axis + 1] = h.shape[axis]
        index = torch.tensor(copies)
        keep = ~self.ablated[index[:, 0], index[:, 1]]  # (m, C)
        keep = keep.to(h.device).reshape([m, *shape[1:]])
        fill = (torch.zeros((), dtype=h.dtype, device=h.device) if self.fill is None
                else self.fill.to(h.device, h.dtype).reshape(shape))
        # torch.where selects values exactly, so every path perturbs bit-identically.
        return torch.where(keep, stacked, fill).reshape(h.shape)


@dataclass(frozen=True)
class _Perturbation:
    """How a perturbation plans one layer: ``build(layer, n_units, levels, samplings, seed, clean_mean)``.

    A plan answers ``identity(s, l)`` and ``apply(h, copies, unit_axis)``. Further activation perturbations
    (``targeted``: an order by |r| from clean `Moments`; ``act_noise``: additive noise with σ-multiple levels)
    are new builders here; weight perturbations would set the producing module's weights per copy instead.
    """

    build: Callable[..., _MaskPlan]
    needs_mean: bool


def _zero_plan(layer, n_units, levels, samplings, seed, clean_mean) -> _MaskPlan:
    return _MaskPlan(ablation_masks(layer, n_units, levels, samplings, seed), None)


def _mean_plan(layer, n_units, levels, samplings, seed, clean_mean) -> _MaskPlan:
    return _MaskPlan(ablation_masks(layer, n_units, levels, samplings, seed), clean_mean)


PERTURBATIONS = {"zero": _Perturbation(_zero_plan, needs_mean=False),
                 "mean": _Perturbation(_mean_plan, needs_mean=True)}


def get_perturbation(perturbation: str) -> _Perturbation:
    """The registered perturbation called `perturbation`, or a WidthlabError listing the implemented ones."""
    if perturbation not in PERTURBATIONS:
        raise WidthlabError(f"unknown perturbation {perturbation!r}; implemented: {', '.join(PERTURBATIONS)}")
    return PERTURBATIONS[perturbation]


def check_levels(levels) -> np.ndarray:
    """(L,) float64 levels: `DEFAULT_LEVELS` for None, else at least two increasing shares in [0, 1]."""
    if levels is None:
        return DEFAULT_LEVELS.copy()
    x = np.asarray(levels, dtype=np.float64)
    if x.ndim != 1 or len(x) < 2 or not np.all(np.isfinite(x)) or np.any(np.diff(x) <= 0) or x[0] < 0 or x[-1] > 1:
        raise WidthlabError(f"levels must be at least two increasing shares in [0, 1], got {levels!r}")
    return x


def check_positive(name: str, value: object) -> int:
    """`value` if it is a positive integer, else a WidthlabError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise WidthlabError(f"{name} must be a positive integer, got {value!r}")
    return value


def _scope(model: nn.Module, inputs: Inputs, layer: str, layers: Sequence[str] | None, batch_size: int) -> list[str]:
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


def _cut_stages(model: nn.Module, scope: list[str]) -> list[tuple[str, Callable]] | None:
    """``[(layer, run_from_layer_to_next_stage)]`` in execution order when the scope is a chain of cuts, else None."""
    if isinstance(model, nn.Sequential) and type(model).forward is nn.Sequential.forward:
        names = [name for name, _ in model.named_children()]
        if all(layer in names for layer in scope):
            children = list(model.children())
            starts = sorted(names.index(layer) for layer in scope)
            ends = [*(p + 1 for p in starts[1:]), len(children)]
            return [(names[p], nn.Sequential(*children[p + 1:end])) for p, end in zip(starts, ends)]
    forward_from = getattr(model, "forward_from", None)
    if len(scope) == 1 and scope[0] in (getattr(model, "cut_layers", None) or ()) and callable(forward_from):
        return [(scope[0], partial(forward_from, scope[0]))]
    return None


def _predictions(out: object) -> torch.Tensor:
    """(N,) argmax of (N, classes) scores, or a WidthlabError for any other model output."""
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise WidthlabError(f"the model must return (N, classes) scores to measure robustness, got {got}")
    return out.argmax(1)


def _clean_means(model: nn.Module, inputs: Inputs, scope: list[str], unit_axis: int,
                 batch_size: int) -> dict[str, torch.Tensor]:
    """(C,) float64 per-unit mean of each layer over all evaluated rows (examples × positions)."""
    sums: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}
    for chunks, _ in stream_activations(model, inputs, scope, unit_axis=unit_axis, batch_size=batch_size):
        for name, x in chunks.items():
            sums[name] = sums.get(name, 0) + x.sum(0, dtype=torch.float64)
            rows[name] = rows.get(name, 0) + len(x)
    if not rows:
        raise WidthlabError("inputs yielded no examples")
    return {name: sums[name] / rows[name] for name in scope}


def _label_source(labels) -> torch.Tensor | None:
    if labels is None:
        return None
    y = torch.as_tensor(labels)
    if y.dim() != 1 or y.is_floating_point():
        raise WidthlabError(f"labels must be a 1-D integer sequence, got shape {tuple(y.shape)} of {y.dtype}")
    return y


def perturbation_curve(model: nn.Module, inputs: Inputs, layer: str, *, perturbation: str = "zero",
                       levels: Sequence[float] | None = None, samplings: int = 3, seed: int = 0, labels=None,
                       layers: Sequence[str] | None = None, unit_axis: int = 1, batch_size: int = 256,
                       path: str = "auto", ablations_per_eval: int = 1) -> Curve:
    """Perturb a layer's units at increasing levels and record how often the prediction stays the same.

    Args:
        model: returns (N, classes) scores; runs on its device in eval mode (training flags restored).
        inputs: a tensor (N, ...), or a Dataset / DataLoader yielding ``(x, y)`` or ``x``.
        layer: a module name, or ``"all"`` to perturb every layer of `layers` at once, each with its own order.
        perturbation: ``"zero"`` (ablated units set to 0) or ``"mean"`` (to their mean over the evaluated rows
            of the clean network) (default ``"zero"``).
        levels: increasing shares of units in [0, 1] (default 0, 0.1, ..., 1.0).
        samplings: random unit orders S (default 3), sampling s drawn from the stream (seed, layer, s).
        seed: the seed of those streams (default 0).
        labels: (N,) class labels in the order of `inputs`; default: the inputs' own 1-D integer labels, if any.
        layers: the analysed set for ``layer="all"`` (default: `default_layers`).
        unit_axis: channel axis of the layer outputs (default 1).
        batch_size: examples per batch for tensor/Dataset inputs (default 256).
        path: ``"auto"`` (batched where the scope is a chain of cuts, else full), ``"full"`` or ``"batched"``.
        ablations_per_eval: perturbed copies stacked along the batch per suffix evaluation on the batched path
            (default 1: the memory of one batch, saving the prefix); raise it on a GPU to fill the device.

    Example: ``perturbation_curve(mlp, x, "relu1").unchanged[:, 0]`` is all ones (nothing ablated at level 0).
    """
    spec = get_perturbation(perturbation)
    levels = check_levels(levels)
    samplings = check_positive("samplings", samplings)
    ablations_per_eval = check_positive("ablations_per_eval", ablations_per_eval)
    if path not in PATHS:
        raise WidthlabError(f"unknown path {path!r}; valid: {', '.join(PATHS)}")
    scope = _scope(model, inputs, layer, layers, batch_size)
    stages = None if path == "full" else _cut_stages(model, scope)
    if path == "batched" and stages is None:
        raise WidthlabError(f"path='batched' needs layers that are cuts of the graph (top-level children of an "
                            f"nn.Sequential, or model.cut_layers with model.forward_from); {scope} are not")
    means = _clean_means(model, inputs, scope, unit_axis, batch_size) if spec.needs_mean else {}

    def build(units: dict[str, int]) -> dict:
        return {name: spec.build(name, units[name], levels, samplings, seed, means.get(name)) for name in scope}

    with evaluating(model), torch.no_grad():
        agree, correct, n = _evaluate(model, inputs, scope, build, (samplings, len(levels)), _label_source(labels),
                                      unit_axis, batch_size, stages, ablations_per_eval)
    unchanged = agree / n
    return Curve(levels=levels, unchanged=unchanged, accuracy=None if correct is None else correct / n,
                 auc=np.array([robustness_auc(levels, row) for row in unchanged]),
                 path="full" if stages is None else "batched")


def _suffix_predictions(h: torch.Tensor, stages: list[tuple[str, Callable]], plans: dict,
                        copies: list[tuple[int, int]], unit_axis: int) -> torch.Tensor:
    """(m, B) predictions of m perturbed copies of a batch, run from the first cut's clean output h (B, ...)."""
    batch = len(h)
    h = h.repeat(len(copies), *[1] * (h.dim() - 1))  # (m·B, ...) m stacked copies of the batch
    for name, rest in stages:
        h = rest(plans[name].apply(h, copies, unit_axis))
    return _predictions(h).reshape(len(copies), batch)


def _evaluate(model, inputs, scope, build, grid, labels, unit_axis, batch_size, stages, per_eval):
    """Count, per (sampling, level), examples whose prediction is unchanged and correct; return them and N."""
    samplings, n_levels = grid
    plans: dict | None = None
    current: list[tuple[int, int]] = []  # the (sampling, level) a full pass perturbs; empty = clean pass
    clean: dict[str, torch.Tensor] = {}
    first = stages[0][0] if stages else None
    n, labelled = 0, True

    def hook(name: str, output):
        if current:
            return plans[name].apply(output, current, unit_axis)
        check_unit_axis(output, name, unit_axis)
        # The batched path reuses this output after the pass; an in-place op later in the net must not touch it.
        clean[name] = output.detach().clone() if name == first else output
        return None

    def tally(copies: list[tuple[int, int]], pred: torch.Tensor) -> None:
        """Add the (m, B) predictions of `copies` to the counts."""
        index = torch.tensor(copies, device=pred.device)
        agree[index[:, 0], index[:, 1]] += (pred == base).sum(1)
        if y is not None:
            correct[index[:, 0], index[:, 1]] += (pred == y).sum(1)

    for x, batch_y in batches(model, inputs, batch_size):
        with layer_hooks(model, scope, hook) as run:
            base = _predictions(run(x))  # (B,)
            if plans is None:
                plans = build({name: clean[name].shape[unit_axis % clean[name].dim()] for name in scope})
                agree = torch.zeros(samplings, n_levels, dtype=torch.int64, device=base.device)
                correct = torch.zeros_like(agree)
                identical = torch.tensor([[all(plan.identity(s, i) for plan in plans.values())
                                           for i in range(n_levels)] for s in range(samplings)], device=base.device)
                copies = [(s, i) for s in range(samplings) for i in range(n_levels) if not identical[s, i]]
            if labels is not None:
                if n + len(x) > len(labels):
                    raise WidthlabError(f"labels has {len(labels)} entries but the inputs yield more examples")
                y = labels[n:n + len(x)].to(base.device)
            else:
                y = batch_y
                labelled = labelled and y is not None
            # Copies that perturb nothing predict exactly as the clean pass.
            agree += identical * len(x)
            if y is not None:
                correct += identical * (base == y).sum()
            if stages is None:
                for copy in copies:
                    current[:] = [copy]
                    try:
                        tally([copy], _predictions(run(x)).unsqueeze(0))
                    finally:
                        current.clear()
        if stages is not None:
            for start in range(0, len(copies), per_eval):
                chunk = copies[start:start + per_eval]
                tally(chunk, _suffix_predictions(clean[first], stages, plans, chunk, unit_axis))
        n += len(x)
    if n == 0:
        raise WidthlabError("inputs yielded no examples")
    if labels is not None and n != len(labels):
        raise WidthlabError(f"labels has {len(labels)} entries but the inputs yielded {n} examples")
    has_labels = labels is not None or labelled
    return agree.cpu().numpy(), correct.cpu().numpy() if has_labels else None, n


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
