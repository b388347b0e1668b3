"""Per-unit importance: one row per unit of a layer, the question attribution users ask ("which units matter?").

For each unit u of a layer (docs/metrics.md's units and rows), `unit_table` reports its activation statistics and
census flags, what ablating u alone does to the predictions (u set to 0, or to its mean over the rows), the unit
it is most correlated with and, with labels, its class selectivity (Morcos et al. 2018). Statistics come from one
streamed pass (float64 `Moments`, per-class row sums); the C single-unit ablations are the C copies of one engine
curve per fill (`widthlab.measure.engine.sweep`): copy (0, u) ablates unit u, so on a proven cut they run
`ablations_per_eval` at a time, stacked along the batch, and as full forward passes otherwise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from widthlab.errors import WidthlabError
from widthlab.measure.capture import stream_activations
from widthlab.measure.engine import Evaluation, sweep
from widthlab.measure.hooks import resolve_modules
from widthlab.measure.inputs import DEFAULT_MASK, Inputs, Output, first_batch, model_device
from widthlab.measure.perturbations import LayerSpec, MaskPlan, Perturbation
from widthlab.measure.redundancy import Moments, abs_r_matrix, census, check_fraction, similar_counts
from widthlab.measure.selectivity import ClassSums, token_layers, unit_selectivity
from widthlab.threads import torch_blas_threads


def _single_unit(name: str, fill_mean: bool) -> Perturbation:
    """A perturbation whose copy (0, u) of levels 0 … C−1 ablates unit u alone (to 0, or to its mean)."""
    def build(layer: LayerSpec) -> MaskPlan:
        ablated = torch.eye(layer.units, dtype=torch.bool)[None]  # (S=1, L=C, C) one-hot
        return MaskPlan(ablated, layer.moments.mean if fill_mean else None, layer.unit_axis)
    return Perturbation(name, noise=False, weights=False, needs_moments=fill_mean, build=build)


SINGLE_UNIT = {"zero": _single_unit("unit_zero", False), "mean": _single_unit("unit_mean", True)}


def _picked(scores: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(s_y, cross-entropy logsumexp(s) − s_y) in float64 for scores (..., K) and y broadcast over their leading
    axes, both shaped like scores[..., 0]; the (..., K) scores are never copied to float64 (a language model's
    stacked copies are large)."""
    s_y = scores.gather(-1, y.expand(scores.shape[:-1])[..., None])[..., 0].double()
    return s_y, scores.logsumexp(-1).double() - s_y


class _Effects:
    """Per-unit sums, over compared predictions, of what ablating the unit alone changes."""

    def __init__(self, units: int, device: torch.device):
        zeros = torch.zeros(units, dtype=torch.float64, device=device)
        self.changed, self.drop, self.loss = zeros, zeros.clone(), zeros.clone()
        self.seen = torch.zeros(units, dtype=torch.int64, device=device)
        self.counts: dict[int, int] = {}  # batch start -> its compared predictions
        self.labelled = True

    def add(self, copies: list[tuple[int, int]], scores: torch.Tensor, ev: Evaluation) -> None:
        """Add m evaluated copies, scores (m·B, ...), of the batch whose clean pass is `ev`."""
        m = len(copies)
        units = torch.tensor([i for _, i in copies], device=scores.device)
        perturbed = scores.reshape(m, *ev.scores.shape)  # (m, B, K) or (m, B, T, V)
        valid = torch.ones_like(ev.base, dtype=torch.bool) if ev.valid is None else ev.valid  # (B[, T])
        self.changed.index_add_(0, units, ((perturbed.argmax(-1) != ev.base) & valid).flatten(1).sum(1).double())
        self.seen.index_add_(0, units, torch.full((m,), ev.count, device=scores.device))
        self.counts[ev.start] = ev.count
        if ev.y is None:
            self.labelled = False
            return
        (clean_y, clean_loss), (ablated_y, ablated_loss) = _picked(ev.scores, ev.y), _picked(perturbed, ev.y)
        drop, loss = clean_y - ablated_y, ablated_loss - clean_loss  # (m, B[, T])
        self.drop.index_add_(0, units, torch.where(valid, drop, 0.0).flatten(1).sum(1))
        self.loss.index_add_(0, units, torch.where(valid, loss, 0.0).flatten(1).sum(1))

    def shares(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(C,) changed share, mean score drop and mean loss change over every compared prediction."""
        total = sum(self.counts.values())
        # A single-unit ablation always perturbs, so the engine must have evaluated every unit on every batch.
        if not bool((self.seen == total).all()):
            raise RuntimeError("the engine skipped single-unit ablations; per-unit effects would be incomplete")
        return tuple((v / total).cpu().numpy() for v in (self.changed, self.drop, self.loss))


def _stream(model, inputs: Inputs, layer: str, classes: ClassSums, unit_axis: int | None, batch_size: int,
            mask) -> Moments:
    """The layer's `Moments`; each batch's rows also go to `classes` (per-class row sums and counts)."""
    moments = Moments()
    for chunks, batch in stream_activations(model, inputs, [layer], unit_axis=unit_axis, batch_size=batch_size,
                                            mask=mask):
        moments.update(chunks[layer])
        classes.add(chunks, batch)
    if moments.n == 0:
        raise WidthlabError(f"layer {layer!r} yielded no rows")
    return moments


@torch_blas_threads
def unit_table(model: torch.nn.Module, inputs: Inputs, layer: str, *, labels=None, unit_axis: int | None = None,
               output: Output = None, mask: str | int | None = DEFAULT_MASK, batch_size: int = 256, seed: int = 0,
               threshold: float = 0.5, ablations_per_eval: int = 16, path: str = "auto", progress=None,
               train_inputs: Inputs | None = None, train_labels=None) -> pd.DataFrame:
    """One row per unit of `layer`: statistics, census flags, single-unit ablation effects, partner, selectivity.

    Columns (definitions in docs/metrics.md, "Per-unit importance"): ``unit``, ``mean``, ``std`` (ddof 0),
    ``silent``, ``constant``, ``flat``, ``changed_zero``, ``changed_mean`` and, when the engine compares labels,
    ``score_drop_zero``, ``score_drop_mean``, ``loss_change_zero``, ``loss_change_mean``; then ``partner`` (-1 if
    none), ``partner_abs_r``, ``similar`` (other units with |r| >= `threshold`) and, when every example has a label,
    ``selectivity`` (with `train_inputs`: its value on `inputs` for the training split's k*, plus
    ``selectivity_train`` and ``selectivity_gen``). Rows are examples × positions (real tokens only with a mask), as
    for every §1 metric.

    Args:
        model: returns (N, classes) or (N, T, V) scores (see `output`); runs in eval mode (training flags restored).
        inputs: a tensor, a tuple or mapping of tensors, or a Dataset / DataLoader of these (`widthlab.measure.inputs`).
        layer: a module name from ``model.named_modules()``.
        labels: (N,) classes, or (N, T) tokens aligned with token scores (default None: the inputs' own labels).
        unit_axis: the unit axis of the layer output (default None: by the producing module).
        output, mask: pick the scores and name the attention mask (defaults: the output's logits,
            ``"attention_mask"``), as in `analyze`.
        batch_size: examples per batch (default 256); seed: the engine's seed (default 0; nothing here is random).
        threshold: |r| at or above which another unit counts in ``similar`` (default 0.5).
        ablations_per_eval: single-unit copies stacked per evaluation on the batched path (default 16).
        path: the engine's path, ``"auto"``, ``"full"`` or ``"batched"`` (default ``"auto"``).
        progress: a tqdm-like bar advanced once per evaluation of the ablation sweep, or None.
        train_inputs: the training split, in any input form (default None: k* of ``selectivity`` is taken on
            `inputs` themselves); one more streaming pass. Only used when `inputs` have labels.
        train_labels: labels of `train_inputs` (default None: their own); missing labels are an error.

    Example: the units of ``relu1`` whose ablation lowers the true class's score most:
        >>> table = unit_table(model, x, "relu1", labels=y)
        >>> table.shape, table.sort_values("score_drop_zero", ascending=False)["unit"].head(3).tolist()
        ((128, 16), [65, 108, 26])
    """
    if not isinstance(layer, str):
        raise WidthlabError(f"layer must be one module name, got {layer!r}")
    threshold = check_fraction("threshold", threshold, low_open=False)
    resolve_modules(model, [layer])
    token = token_layers(model, first_batch(model, inputs, 2, mask), [layer])
    classes = ClassSums(token, labels)
    moments = _stream(model, inputs, layer, classes, unit_axis, batch_size, mask)
    test = classes[layer]
    train = None
    if test is not None and train_inputs is not None:
        train = ClassSums(token, train_labels, what="train_labels", required=True)
        for chunks, batch in stream_activations(model, train_inputs, [layer], unit_axis=unit_axis,
                                                batch_size=batch_size, mask=mask):
            train.add(chunks, batch)
    effects = _single_unit_effects(model, inputs, layer, moments, labels=labels, unit_axis=unit_axis, seed=seed,
                                   batch_size=batch_size, path=path, ablations_per_eval=ablations_per_eval,
                                   output=output, mask=mask, progress=progress)
    facts = census(moments)  # the flags exactly as `redundancy_from_moments` counts them
    var = facts.std ** 2  # ddof 1
    table = {"unit": np.arange(moments.n_units), "mean": moments.mean.cpu().numpy(),
             "std": np.sqrt(var * max(moments.n - 1, 1) / moments.n), "silent": facts.silent,
             "constant": facts.constant, "flat": facts.flat}
    kinds = list(SINGLE_UNIT)
    shares = {kind: effects[kind].shares() for kind in kinds}
    table.update({f"changed_{kind}": shares[kind][0] for kind in kinds})
    if all(effects[kind].labelled for kind in kinds):
        table.update({f"score_drop_{kind}": shares[kind][1] for kind in kinds})
        table.update({f"loss_change_{kind}": shares[kind][2] for kind in kinds})
    table.update(_partners(facts, moments.n_units, threshold))
    if test is not None:
        table.update(unit_selectivity(test, facts.flat | facts.silent, None if train is None else train[layer]))
    return pd.DataFrame(table)


def _single_unit_effects(model: torch.nn.Module, inputs: Inputs, layer: str, moments: Moments, *, labels,
                         seed: int, **options) -> dict[str, _Effects]:
    """Each `SINGLE_UNIT` kind's effects of ablating every unit of `layer` alone, from one `sweep` (level u:
    unit u alone)."""
    effects = {kind: _Effects(moments.n_units, model_device(model)) for kind in SINGLE_UNIT}
    kinds = list(SINGLE_UNIT)
    levels = np.arange(moments.n_units, dtype=float)  # level u: unit u alone
    sweep(model, inputs, [(SINGLE_UNIT[kind], [layer], levels) for kind in kinds], samplings=1, seed=seed,
          labels=labels, moments={layer: moments},
          on_scores=lambda job, copies, scores, ev: effects[kinds[job]].add(copies, scores, ev), **options)
    return effects


def _partners(facts, units: int, threshold: float) -> dict[str, np.ndarray]:
    """``partner`` (the live unit of largest |r|, -1 if none), ``partner_abs_r`` and ``similar`` of each unit."""
    live = facts.live
    abs_r = abs_r_matrix(facts.cov, live)  # (live, live)
    similar = np.zeros(units, dtype=np.int64)
    similar[live] = similar_counts(abs_r, threshold)
    partner, partner_r = np.full(units, -1, dtype=np.int64), np.zeros(units)
    if len(live) >= 2:
        others = abs_r.copy()
        np.fill_diagonal(others, -1.0)
        best = others.argmax(1)
        partner[live], partner_r[live] = live[best], others[np.arange(len(live)), best]
    return {"partner": partner, "partner_abs_r": partner_r, "similar": similar}
