"""`analyze`: every redundancy and robustness number of a model's layers as one long-format DataFrame."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from widthlab.errors import WidthlabError
from widthlab.measure.capture import Inputs, count_examples, default_layers, resolve_modules, stream_activations
from widthlab.measure.redundancy import Moments, redundancy_from_moments
from widthlab.measure.robustness import ALL, check_levels, check_positive, get_perturbation, perturbation_curve
from widthlab.seeding import numpy_generator

COLUMNS = ["layer", "metric", "perturbation", "level", "sampling", "value"]
REDUNDANCY_METRICS = ("n_units", "pcs_needed", "compressibility", "similarity", "similarity_live",
                      "similar_fraction", "silent_fraction", "constant_fraction")
HISTOGRAM_METRIC = "abs_r_count"


def _draw_rows(seed: int, layer: str, sampling: int, total: int, max_rows: int) -> np.ndarray:
    """Sorted indices of min(max_rows, total) rows drawn uniformly without replacement from (seed, layer, s)."""
    rng = numpy_generator(seed, layer, sampling, "rows")
    return np.sort(rng.choice(total, size=min(max_rows, total), replace=False))


def _layer_moments(model: nn.Module, inputs: Inputs, names: list[str], samplings: int, seed: int,
                   max_rows: int | None, unit_axis: int, batch_size: int) -> dict[str, list[Moments]]:
    """Stream every layer's activations once into float64 moments: one set of all rows, or one per sampling."""
    draws = 1 if max_rows is None else samplings
    moments = {name: [Moments() for _ in range(draws)] for name in names}
    examples = None if max_rows is None else count_examples(inputs)
    picks: dict[str, list[np.ndarray]] = {}  # sorted row indices per sampling, drawn at a layer's first chunk
    seen = dict.fromkeys(names, 0)  # rows streamed so far per layer
    totals: dict[str, int] = {}
    for chunks, batch in stream_activations(model, inputs, names, unit_axis=unit_axis, batch_size=batch_size):
        for name, rows in chunks.items():
            if max_rows is None:
                moments[name][0].update(rows)
                continue
            if name not in picks:
                totals[name] = examples * (len(rows) // batch)
                picks[name] = [_draw_rows(seed, name, s, totals[name], max_rows) for s in range(samplings)]
            start, stop = seen[name], seen[name] + len(rows)
            for s, idx in enumerate(picks[name]):
                lo, hi = np.searchsorted(idx, [start, stop])
                if hi > lo:
                    moments[name][s].update(rows[torch.as_tensor(idx[lo:hi] - start, device=rows.device)])
            seen[name] = stop
    if any(seen[name] != total for name, total in totals.items()):
        raise WidthlabError("max_rows needs the same number of rows per example in every batch and inputs whose "
                            "length matches what they yield")
    return moments


def analyze(model: nn.Module, inputs: Inputs, layers: Sequence[str] | None = None, *, labels=None,
            perturbations: Sequence[str] = ("zero",), levels: Sequence[float] | None = None, samplings: int = 3,
            seed: int = 0, max_rows: int | None = None, energy: float = 0.95, threshold: float = 0.5,
            unit_axis: int = 1, batch_size: int = 256, ablations_per_eval: int = 1) -> pd.DataFrame:
    """Measure redundancy and robustness of each layer; one row per number.

    Rows (columns ``layer, metric, perturbation, level, sampling, value``):

    - redundancy, per layer, perturbation ``""``: metrics ``n_units``, ``pcs_needed``, ``compressibility``,
      ``similarity``, ``similarity_live``, ``similar_fraction``, ``silent_fraction``, ``constant_fraction``
      (level NaN) and 50 ``abs_r_count`` rows (level = the |r| bin centre). Without `max_rows` they are computed
      once from all rows and reported as sampling 0 only (there is no sampling variation to summarise); with
      `max_rows` each sampling s draws its own rows, so mean/std over samplings show the subsampling spread.
    - robustness, per perturbation and per layer, plus layer ``"all"`` (every layer at once) when more than one
      layer is analysed (with one layer it would repeat that layer): ``auc`` (level NaN) and the curve points
      ``unchanged`` and, with labels, ``accuracy`` at each level, for every sampling.

    Args:
        model: returns (N, classes) scores; runs on its device in eval mode (training flags restored).
        inputs: a tensor (N, ...), or a Dataset / DataLoader yielding ``(x, y)`` or ``x``.
        layers: module names (default: ``model.unit_layers``, else every ReLU-like module that runs once per
            forward pass; see `default_layers`).
        labels: (N,) class labels (default: the inputs' own labels, if they yield any).
        perturbations: names from ``PERTURBATIONS`` (default ``("zero",)``).
        levels: shares of units in [0, 1] (default 0, 0.1, ..., 1.0).
        samplings: S random unit orders / row draws (default 3); seed: their seed (default 0).
        max_rows: rows drawn per layer and sampling for redundancy (default None: all rows, streamed).
        energy: variance share for ``pcs_needed`` (default 0.95); threshold: |r| for similarity (default 0.5).
        unit_axis: channel axis of the layer outputs (default 1); batch_size: examples per batch (default 256).
        ablations_per_eval: perturbed copies per suffix evaluation at a cut (default 1; see `perturbation_curve`).

    Example: ``analyze(create_model("mlp", 1.0, input_dim=10), torch.randn(500, 10), samplings=2)``
    """
    perturbations = [perturbations] if isinstance(perturbations, str) else list(perturbations)
    for perturbation in perturbations:
        get_perturbation(perturbation)
    levels = check_levels(levels)
    samplings = check_positive("samplings", samplings)
    if max_rows is not None:
        check_positive("max_rows", max_rows)
    names = default_layers(model, inputs, batch_size=batch_size) if layers is None else list(layers)
    resolve_modules(model, names)

    records = []
    moments = _layer_moments(model, inputs, names, samplings, seed, max_rows, unit_axis, batch_size)
    for name in names:
        for s, m in enumerate(moments[name]):
            numbers = redundancy_from_moments(m, energy=energy, threshold=threshold)
            records += [(name, metric, "", np.nan, s, float(numbers[metric])) for metric in REDUNDANCY_METRICS]
            edges = numbers["abs_r_edges"]
            centres = (edges[:-1] + edges[1:]) / 2
            records += [(name, HISTOGRAM_METRIC, "", float(c), s, float(count))
                        for c, count in zip(centres, numbers["abs_r_counts"])]

    scopes = [*names, ALL] if len(names) > 1 else names
    for perturbation in perturbations:
        for scope in scopes:
            curve = perturbation_curve(model, inputs, scope, perturbation=perturbation, levels=levels,
                                       samplings=samplings, seed=seed, labels=labels,
                                       layers=names if scope == ALL else None, unit_axis=unit_axis,
                                       batch_size=batch_size, ablations_per_eval=ablations_per_eval)
            for s in range(samplings):
                records.append((scope, "auc", perturbation, np.nan, s, float(curve.auc[s])))
                series = [("unchanged", curve.unchanged)]
                if curve.accuracy is not None:
                    series.append(("accuracy", curve.accuracy))
                for metric, values in series:
                    records += [(scope, metric, perturbation, float(level), s, float(v))
                                for level, v in zip(curve.levels, values[s])]
    frame = pd.DataFrame.from_records(records, columns=COLUMNS)
    return frame.astype({"layer": str, "metric": str, "perturbation": str, "level": float, "sampling": int,
                         "value": float})
