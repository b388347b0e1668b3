"""Robustness (docs/metrics.md): how the network's predictions survive perturbing a layer's units — the public curve API.

The perturbations are defined in `widthlab.measure.perturbations`; the engine that measures their curves in one
sweep over the data is `widthlab.measure.engine`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from torch import nn

from widthlab.errors import WidthlabError, check_positive_int
from widthlab.measure.capture import Inputs, default_layers
from widthlab.measure.hooks import resolve_modules
from widthlab.measure.curve import Curve, robustness_auc
from widthlab.measure.engine import sweep
from widthlab.measure.inputs import DEFAULT_MASK, Output
from widthlab.measure.perturbations import MAX_SAMPLINGS, check_levels
from widthlab.vocab import JOINT_SCOPE
from widthlab.measure.redundancy import Moments

__all__ = ["Curve", "robustness_auc", "perturbation_curve", "ablation_curve", "resolve_scope"]


def resolve_scope(model: nn.Module, inputs: Inputs, layer: str, layers: Sequence[str] | None,
                  batch_size: int) -> list[str]:
    """The layers perturbed together: ``[layer]``, or the analysed set for ``layer="all"``."""
    if not isinstance(layer, str):
        raise WidthlabError(f"layer must be a module name or {JOINT_SCOPE!r}, got {layer!r}")
    if layer == JOINT_SCOPE:
        names = default_layers(model, inputs, batch_size=batch_size, mask=None) if layers is None else list(layers)
    elif layers is not None:
        raise WidthlabError(f"layers= names the set of the {JOINT_SCOPE!r} scope; got layer={layer!r} with layers={layers!r}")
    else:
        names = [layer]
    resolve_modules(model, names)
    return names


def perturbation_curve(model: nn.Module, inputs: Inputs, layer: str, *, perturbation: str = "zero",
                       levels: Sequence[float] | None = None, samplings: int = 3, seed: int = 0, labels=None,
                       layers: Sequence[str] | None = None, unit_axis: int | None = None, batch_size: int = 256,
                       path: str = "auto", ablations_per_eval: int = 1, moments: Mapping[str, Moments] | None = None,
                       skip_zero_inputs: bool = False, output: Output = None,
                       mask: str | int | None = DEFAULT_MASK) -> Curve:
    """Perturb a layer's units at increasing levels and record how often the prediction stays the same.

    Args:
        model: returns (N, classes) scores; runs on its device in eval mode (training flags restored).
        inputs: a tensor, a tuple or mapping of tensors, or a Dataset / DataLoader of these (`widthlab.measure.inputs`).
        layer: a module name, or ``"all"`` to perturb every layer of `layers` at once, each with its own streams.
        perturbation: a name of `PERTURBATIONS` (module doc): ``zero``, ``mean``, ``targeted``, ``act_noise``,
            ``weight_noise`` or ``weight_knockout`` (default ``"zero"``).
        levels: increasing levels: shares in [0, 1] (default 0, 0.1, ..., 1.0), or σ multiples for ``act_noise``
            and ``weight_noise`` (default 0, 0.2, ..., 2.0).
        samplings: S random draws (default 3), sampling s from the streams (seed, layer, s, ...).
        seed: the seed of those streams (default 0).
        labels: (N,) class labels in the order of `inputs`; default: the inputs' own 1-D integer labels, if any.
        layers: the analysed set for ``layer="all"`` (default: `default_layers`).
        unit_axis: the unit axis of the layer outputs (default None: by the producing module,
            `widthlab.measure.layout`).
        output, mask: pick the scores from the model's output and name the attention mask (see `analyze`).
        batch_size: examples per batch for tensor/Dataset inputs (default 256).
        path: ``"auto"`` (batched where the scope starts at a proven cut, else full), ``"full"`` or ``"batched"``.
        ablations_per_eval: perturbed copies stacked along the batch per evaluation on the batched path (default 1:
            the memory of one batch, still saving the network before the cut); raise it to fill a GPU.
        moments: clean streamed `Moments` per layer over the same inputs, reused by ``mean``, ``targeted`` and
            ``act_noise`` (default: streamed here when needed).
        skip_zero_inputs: Conv/Linear modules skip exactly-zero input channels in perturbed evaluations (default
            False; faster when units are ablated, equal only to round-off; see the module doc).

    Example: nothing is ablated at level 0, so every prediction stays:
        >>> curve = perturbation_curve(model, x, "relu1")
        >>> curve.levels.tolist()
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
        >>> curve.unchanged[:, 0].tolist(), curve.path
        ([1.0, 1.0, 1.0], 'batched')
    """
    levels = check_levels(levels, perturbation)
    samplings = check_positive_int("samplings", samplings, maximum=MAX_SAMPLINGS)
    scope = resolve_scope(model, inputs, layer, layers, batch_size)
    return sweep(model, inputs, [(perturbation, scope, levels)], samplings=samplings, seed=seed, labels=labels,
                 unit_axis=unit_axis, batch_size=batch_size, path=path, ablations_per_eval=ablations_per_eval,
                 moments=moments, skip_zero_inputs=skip_zero_inputs, output=output, mask=mask)[0]


def ablation_curve(model: nn.Module, inputs: Inputs, layer: str, *, levels: Sequence[float] | None = None,
                   samplings: int = 3, seed: int = 0, mode: str = "zero", **options) -> np.ndarray:
    """(S, L) share of unchanged predictions when a growing share of `layer`'s units is ablated.

    Args:
        layer: a module name, or ``"all"``.
        levels: shares of units in [0, 1] (default 0, 0.1, ..., 1.0).
        samplings: random unit orders (default 3); seed: their seed (default 0).
        mode: ``"zero"`` or ``"mean"`` (default ``"zero"``).
        **options: further keywords of `perturbation_curve` (layers, unit_axis, batch_size, path, ...).

    Example: with every unit ablated, 31% of the predictions stay the same:
        >>> ablation_curve(model, x, "relu1", levels=[0, 1], samplings=1).tolist()
        [[1.0, 0.31]]
    """
    if mode not in ("zero", "mean"):
        raise WidthlabError(f"unknown ablation mode {mode!r}; valid: zero, mean")
    return perturbation_curve(model, inputs, layer, perturbation=mode, levels=levels, samplings=samplings,
                              seed=seed, **options).unchanged
