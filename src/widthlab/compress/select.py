"""Which units to remove and how to fold them away: importance, column-subset selection, the merge regression.

- **Importance** ranks units for pruning and breaks near-ties for merging: ``ablation`` (what zeroing the unit
  alone costs: the drop in accuracy, or in agreement with the unperturbed predictions without labels, then the
  mean squared change of the scores to order the many units whose removal flips no prediction), ``magnitude``
  (L1 norm of the unit's incoming weights, the common baseline) or ``random`` (seeded).
- **Selection for merging** keeps the units the others explain least: a greedy pivoted Cholesky of the centred
  activity covariance (column-subset selection; the same pivots as a pivoted QR of the centred activations)
  picks, step after step, the unit with the largest variance left unexplained by those already kept. Of two exact
  twins the second then has nothing left to explain and goes last, so one always stays; among near-ties the more
  important unit is kept.
- **Merge**: a removed unit's activity regressed (least squares, float64) on the kept units' plus a constant; its
  outgoing weights times the coefficients join the kept units' outgoing weights and the constant times them the
  consumer's bias (`fold_into_consumer`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from widthlab.errors import WidthlabError
from widthlab.measure.inputs import Batch, select_scores

IMPORTANCES = ("ablation", "magnitude", "random")
ABLATION_ROWS = 8192  # examples per batched forward pass of single-unit ablation copies


class Moments:
    """Streamed float64 sums of a (rows, units) activity: mean and covariance without keeping the rows."""

    def __init__(self, units: int):
        self.n = 0
        self.sum = np.zeros(units)
        self.gram = np.zeros((units, units))

    def add(self, rows: torch.Tensor) -> None:
        x = rows.detach().to(torch.float64).cpu().numpy()
        self.n += len(x)
        self.sum += x.sum(0)
        self.gram += x.T @ x

    @property
    def mean(self) -> np.ndarray:
        return self.sum / max(self.n, 1)

    @property
    def cov(self) -> np.ndarray:
        mean = self.mean
        return self.gram / max(self.n, 1) - np.outer(mean, mean)


def consumer_rows(x: torch.Tensor, units: int) -> torch.Tensor:
    """A consumer's input as (rows, units): channel-first (N, C, …) → (N·positions, C); a flattened (N, C·q) →
    (N·q, C) (channel-major, as ``flatten`` lays it out); (N, C) as it is."""
    if x.dim() == 2 and x.shape[1] != units:
        return x.reshape(x.shape[0], units, -1).transpose(1, 2).reshape(-1, units)
    return x.movedim(1, -1).reshape(-1, units)


def _repeat(batch: Batch, k: int) -> Batch:
    def rep(v: torch.Tensor) -> torch.Tensor:
        return v.repeat(k, *[1] * (v.dim() - 1))
    return Batch(tuple(rep(a) for a in batch.args), {n: rep(v) for n, v in batch.kwargs.items()})


@torch.no_grad()
def ablation_effects(model: nn.Module, layer: str, module: nn.Module, units: int, calibration: list[Batch],
                     targets: list[torch.Tensor], output=None) -> tuple[np.ndarray, np.ndarray]:
    """``(drop, change)`` per unit of `module`'s output (units on axis 1) when that unit alone is zeroed.

    ``drop``: the share of calibration examples whose prediction stops matching its target (labels, or the
    unperturbed predictions) minus those that start to; ``change``: the mean squared change of the scores. The
    copies of one batch with different units zeroed run as one stacked forward pass (the model must treat
    examples independently, as any model in eval mode does).
    """
    drop, change, count = np.zeros(units), np.zeros(units), 0
    state: dict = {}

    def hook(mod, args, out):
        if state.pop("keep", False):
            state["kept"] = out.detach()
        if "mask" not in state:
            return None
        mask = state["mask"]
        k = mask.shape[0]
        shaped = out.reshape(k, -1, *out.shape[1:])
        if shaped.shape[2] != units:
            raise WidthlabError(f"ablation: the layer's output has {shaped.shape[2]} units on axis 1, not {units}")
        return (shaped * mask.view(k, 1, units, *[1] * (out.dim() - 2)).to(out.dtype)).reshape(out.shape)

    # A layer that is a declared cut of the model (`CutSequential`): the copies run only the network after it.
    cut = layer in getattr(model, "cut_layers", ()) and callable(getattr(model, "forward_from", None))
    handle = module.register_forward_hook(hook)
    try:
        for batch, target in zip(calibration, targets):
            b = len(batch)
            target = target.to(batch.args[0].device if batch.args else next(iter(batch.kwargs.values())).device)
            state.pop("mask", None)
            if cut:
                state["keep"] = True
                clean = select_scores(batch.run(model), output).reshape(b, -1)
                h = state.pop("kept")
            else:
                clean = select_scores(batch.run(model), output).reshape(b, -1)
            base = (clean.argmax(-1) == target).sum().item()
            step = max(1, min(units, ABLATION_ROWS // max(b, 1)))
            for lo in range(0, units, step):
                idx = torch.arange(lo, min(units, lo + step))
                mask = torch.ones(len(idx), units, device=clean.device)
                mask[torch.arange(len(idx)), idx] = 0
                if cut:
                    stacked = h.unsqueeze(0) * mask.view(len(idx), 1, units, *[1] * (h.dim() - 2)).to(h.dtype)
                    out = model.forward_from(layer, stacked.reshape(-1, *h.shape[1:]))
                else:
                    state["mask"] = mask
                    out = _repeat(batch, len(idx)).run(model)
                    state.pop("mask")
                scores = select_scores(out, output).reshape(len(idx), b, -1)
                correct = (scores.argmax(-1) == target).sum(1).double().cpu().numpy()
                drop[idx.numpy()] += base - correct
                change[idx.numpy()] += ((scores - clean).double() ** 2).sum((1, 2)).cpu().numpy()
            count += b
    finally:
        handle.remove()
    return drop / max(count, 1), change / max(count, 1)


def magnitude(producer: nn.Module) -> np.ndarray:
    """L1 norm of each unit's incoming weights (the producer's output row or filter)."""
    w = producer.weight.detach()
    return w.reshape(w.shape[0], -1).abs().sum(1).double().cpu().numpy()


def importance_rank(primary: np.ndarray, secondary: np.ndarray | None = None) -> np.ndarray:
    """Rank of each unit by importance (0 = least important): by `primary`, ties by `secondary`, then by index
    (lower index more important), so the ranking is deterministic."""
    units = len(primary)
    keys = [-np.arange(units)] + ([secondary] if secondary is not None else []) + [primary]
    order = np.lexsort(keys)  # least important first
    rank = np.empty(units, dtype=np.int64)
    rank[order] = np.arange(units)
    return rank


def prune_order(rank: np.ndarray) -> np.ndarray:
    """Units from most to least important: pruning keeps a prefix."""
    return np.argsort(-rank, kind="stable")


def merge_order(cov: np.ndarray, rank: np.ndarray, *, tie: float = 1e-6, zero: float = 1e-9) -> np.ndarray:
    """Units in the order a greedy column-subset selection keeps them: merging keeps a prefix.

    Each step picks the unit whose variance left unexplained by the units already picked (the diagonal of the
    Schur complement: a pivoted Cholesky of `cov`) is largest; units within ``tie`` (relative) of the largest, or
    with nothing left to explain (below ``zero`` × the mean variance), are near-ties decided by `rank` (the more
    important first).
    """
    cov = np.array(cov, dtype=np.float64)
    units = len(cov)
    scale = max(np.trace(cov) / max(units, 1), 1e-300)
    left = np.ones(units, dtype=bool)
    order = []
    for _ in range(units):
        d = np.where(left, np.clip(np.diag(cov), 0, None), -np.inf)
        best = d.max()
        floor = best - max(tie * best, zero * scale)
        candidates = np.flatnonzero(left & (d >= floor))
        pick = int(candidates[np.argmax(rank[candidates])])
        order.append(pick)
        left[pick] = False
        if d[pick] > zero * scale:
            v = cov[:, pick] / np.sqrt(d[pick])
            cov -= np.outer(v, v)
    return np.array(order, dtype=np.int64)


def regression(moments: Moments, kept: np.ndarray, removed: np.ndarray, *, constant: bool = True):
    """``(coef (kept, removed), const (removed,))``: least squares of the removed units' activity on the kept
    units' activity (plus a constant), in float64 from the streamed moments; minimum-norm where kept units are
    collinear. Without `constant` the regression goes through the origin (a consumer that cannot take a bias)."""
    if constant:
        cov, mean = moments.cov, moments.mean
    else:
        cov, mean = moments.gram / max(moments.n, 1), np.zeros(len(moments.sum))
    a = cov[np.ix_(kept, kept)]
    b = cov[np.ix_(kept, removed)]
    scale = max(np.abs(np.diag(a)).max(initial=0.0), 1e-300)
    coef = np.linalg.lstsq(a, b, rcond=1e-12 if scale > 0 else None)[0]
    const = mean[removed] - mean[kept] @ coef
    return coef, const


@torch.no_grad()
def fold_into_consumer(consumer: nn.Module, units: int, kept: np.ndarray, removed: np.ndarray, coef: np.ndarray,
                       const: np.ndarray) -> None:
    """Add the removed units' outgoing weights × `coef` to the kept units' outgoing weights of `consumer` (a
    Linear reading the units, possibly flattened channels, or a Conv reading them as channels), and
    ``const`` × those weights (summed over positions) to its bias (created when it has none), in float64."""
    from widthlab.compress.structure import consumer_view

    w = consumer_view(consumer, units, consumer.weight.detach().to(torch.float64))  # (out, units, positions…)
    coef_t, const_t = torch.from_numpy(coef).to(w.device), torch.from_numpy(const).to(w.device)
    kept_t, removed_t = torch.from_numpy(kept).to(w.device), torch.from_numpy(removed).to(w.device)
    w_removed = w[:, removed_t]
    w = w.clone()
    w[:, kept_t] += torch.einsum("kr,or...->ok...", coef_t, w_removed)
    shift = torch.einsum("r,or...->o", const_t, w_removed)
    consumer.weight.copy_(w.reshape(consumer.weight.shape).to(consumer.weight.dtype))
    if consumer.bias is None:
        if not bool(shift.abs().max() > 0):
            return
        consumer.bias = nn.Parameter(torch.zeros(consumer.weight.shape[0], dtype=consumer.weight.dtype,
                                                 device=consumer.weight.device))
    consumer.bias.add_(shift.to(consumer.bias.dtype))
