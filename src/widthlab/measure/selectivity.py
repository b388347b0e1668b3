"""Class selectivity (Morcos et al. 2018; the reference code's `selectivity`): how much a unit prefers one class.

Per unit, μ_k is its mean over the rows of class k (rows as in docs/metrics.md: a convolution's rows inherit their
example's label, a token row with (N, T) labels takes its token's, with a mask only real tokens count), over the
classes that have rows. k* = argmax_k μ_k on the **training split**; selectivity = (μ_k* − μ_¬k*)/(μ_k* + μ_¬k*)
with μ_¬k* the mean of the other classes' μ_k; on the test split (the measured inputs) it uses the training k*, so
it can be negative, and its generalisation gap is sel_gen = (sel_train − sel_test)². Without a training split k*
comes from the measured inputs. Flat or silent units (the census of the measured inputs), fewer than two classes,
a k* without rows, or a zero denominator give 0, never NaN.

The per-class row sums and counts stream batch by batch (`ClassSums.add`, float64 on the layer's device), so they
ride on a pass that already runs: `unit_table`'s statistics pass, `analyze`'s clean pass.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from widthlab.errors import WidthlabError
from widthlab.measure.capture import evaluating
from widthlab.measure.engine import check_labels
from widthlab.measure.graph import probe
from widthlab.measure.inputs import Batch

# A unit whose (test-split) selectivity is below this counts in `unselective_fraction`.
UNSELECTIVE = 0.05
# Values per block that `ClassSums.add` converts to float64 at once (8 MiB of float64).
CLASS_SUM_ELEMENTS = 1 << 20


def token_layers(model: torch.nn.Module, batch: Batch, layers: list[str]) -> dict[str, bool]:
    """``{layer: its output has an axis beyond (examples, units)}`` from one forward pass on `batch` (eval mode):
    with a mask, the rows of such a layer are the real tokens (as `unit_rows` takes them)."""
    with evaluating(model), torch.no_grad():
        outputs = probe(model, batch, layers).outputs
    return {name: isinstance(outputs[name], torch.Tensor) and outputs[name].dim() > 2 for name in layers}


def row_labels(y: torch.Tensor, batch: Batch, rows: int, token_rows: bool, layer: str) -> torch.Tensor:
    """(rows,) the label of each row of the batch's chunk: its example's, or its token's for (B, T) labels."""
    if y.dim() == 2:
        if token_rows and tuple(y.shape) == tuple(batch.mask.shape):
            labels = y[batch.mask]
        elif not token_rows and rows == y.numel():
            labels = y.reshape(-1)
        else:
            raise WidthlabError(f"token labels of shape {tuple(y.shape)} do not align with the {rows} rows of layer "
                                f"{layer!r}; give one label per example for selectivity")
    else:
        per = batch.mask.sum(1) if token_rows else torch.full((len(batch),), rows // len(batch), device=y.device)
        labels = y.repeat_interleave(per)
    if bool((labels < 0).any()):
        raise WidthlabError("labels must be classes >= 0, got negative entries")
    return labels


class ClassSums:
    """Per-class row sums (K, C) in float64 and row counts (K,) of layers, streamed batch by batch.

    Labels are `labels` (one per example, or (N, T) tokens, sliced by example offset) or each batch's own. The
    sums exist only when every batch has labels; with `required`, a batch without any is an error at once.

    Example: the per-class sums of ``relu1``'s 128 units over 200 labelled examples:
        >>> from widthlab.measure.capture import stream_activations
        >>> acc = ClassSums({"relu1": False}, y)
        >>> for chunks, batch in stream_activations(model, x, ["relu1"], batch_size=64):
        ...     acc.add(chunks, batch)
        >>> sums, counts = acc["relu1"]
        >>> sums.shape, counts.tolist() == torch.bincount(y).tolist()
        ((2, 128), True)
    """

    def __init__(self, token: Mapping[str, bool], labels=None, *, what: str = "labels", required: bool = False):
        self.token, self.labels, self.what, self.required = dict(token), check_labels(labels), what, required
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}
        self.n, self.labelled = 0, True

    def add(self, chunks: Mapping[str, torch.Tensor], batch: Batch) -> None:
        """Add one batch: ``{layer: (rows, units) chunk}`` of the examples of `batch` (other layers are ignored)."""
        y = batch.labels if self.labels is None else self.labels[self.n:self.n + len(batch)]
        self.n += len(batch)
        if y is None:
            if self.required:
                raise WidthlabError(f"{self.what} are missing: the inputs yield a batch without labels; pass "
                                    f"{self.what}= or inputs that carry them ((x, y) or a 'labels' entry)")
            self.labelled = False
        elif len(y) != len(batch):
            raise WidthlabError(f"{self.what} has {len(self.labels)} entries but the inputs yield more examples")
        if not self.labelled:
            return
        for name, rows in chunks.items():
            if name not in self.token:
                continue
            row_y = row_labels(y.to(rows.device), batch, len(rows), self.token[name] and batch.mask is not None,
                               name)
            k = int(row_y.max()) + 1 if len(row_y) else 0
            sums, counts = self.sums.get(name), self.counts.get(name)
            if sums is None or k > len(sums):  # classes are only known as they appear
                grown = torch.zeros(k, rows.shape[1], dtype=torch.float64, device=rows.device)
                grown_counts = torch.zeros(k, dtype=torch.int64, device=rows.device)
                if sums is not None:
                    grown[:len(sums)], grown_counts[:len(sums)] = sums, counts
                sums, counts = self.sums[name], self.counts[name] = grown, grown_counts
            # float64 block by block: a float64 copy of a whole chunk (3.3 GB for ResNet18 4x's stem) would double
            # the chunk's memory; per class the same additions happen in the same order, so the sums are the same.
            step = max(1, CLASS_SUM_ELEMENTS // max(rows.shape[1], 1))
            for lo in range(0, len(rows), step):
                sums.index_add_(0, row_y[lo:lo + step], rows[lo:lo + step].double())
            counts.index_add_(0, row_y, torch.ones_like(row_y))

    def __getitem__(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(sums (K, C), counts (K,)) of a layer, or None when a batch had no labels."""
        if not self.labelled:
            return None
        if self.labels is not None and self.n != len(self.labels):
            raise WidthlabError(f"{self.what} has {len(self.labels)} entries but the inputs yielded {self.n} examples")
        if name not in self.sums:
            raise WidthlabError(f"layer {name!r} yielded no rows")
        return self.sums[name].cpu().numpy(), self.counts[name].cpu().numpy()


def _class_means(sums: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(classes with rows (K',), their means μ (K', C))."""
    present = np.flatnonzero(counts > 0)
    return present, sums[present] / counts[present, None]


def _contrast(classes: np.ndarray, mu: np.ndarray, best: np.ndarray) -> np.ndarray:
    """(C,) (μ_best − μ_rest)/(μ_best + μ_rest) per unit, `best` (C,) a class index per unit; 0 with fewer than two
    classes, where `best` has no rows, or where the denominator is 0."""
    units = mu.shape[1]
    sel = np.zeros(units)
    if len(classes) < 2:
        return sel
    where = np.searchsorted(classes, best)  # (C,) row of `best` in mu, valid where it is present
    hit = (where < len(classes)) & (classes[np.minimum(where, len(classes) - 1)] == best)
    where = np.where(hit, where, 0)
    top = mu[where, np.arange(units)]
    # Zeroing k* and summing the others (rather than total − top) keeps exact answers exact.
    rest = np.where(np.arange(len(mu))[:, None] == where, 0.0, mu).sum(0) / (len(mu) - 1)
    np.divide(top - rest, top + rest, out=sel, where=hit & ((top + rest) != 0))
    return sel


def unit_selectivity(test: tuple[np.ndarray, np.ndarray], quiet: np.ndarray,
                     train: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Per-unit selectivity of one layer from its per-class row (sums, counts) of the measured inputs (`test`) and,
    optionally, of the training split.

    Returns ``{"selectivity": (C,)}`` (the measured inputs' value, with k* from `train` when given, else from
    `test`) and, with `train`, ``"selectivity_train"`` and ``"selectivity_gen"`` = (train − test)²; every entry
    is 0 where `quiet` (flat or silent units).
    """
    classes, mu = _class_means(*test)
    if train is None:
        best = classes[mu.argmax(0)] if len(classes) else np.zeros(mu.shape[1], dtype=np.int64)
        out = {"selectivity": _contrast(classes, mu, best)}
    else:
        train_classes, train_mu = _class_means(*train)
        if train_mu.shape[1] != mu.shape[1]:
            raise WidthlabError(f"the training split gives {train_mu.shape[1]} units, the measured inputs "
                                f"{mu.shape[1]}")
        best = train_classes[train_mu.argmax(0)] if len(train_classes) else np.zeros(mu.shape[1], dtype=np.int64)
        sel_train, sel_test = _contrast(train_classes, train_mu, best), _contrast(classes, mu, best)
        out = {"selectivity": sel_test, "selectivity_train": sel_train, "selectivity_gen": (sel_train - sel_test) ** 2}
    for values in out.values():
        values[quiet] = 0.0
    return out


def layer_selectivity(per_unit: Mapping[str, np.ndarray]) -> dict[str, float]:
    """A layer's selectivity numbers from `unit_selectivity`: ``selectivity`` (mean over its C units),
    ``selectivity_std`` (ddof 0), ``unselective_fraction`` (share below 0.05) and, with a training split,
    ``selectivity_train`` and ``selectivity_gen`` (means)."""
    sel = per_unit["selectivity"]
    numbers = {"selectivity": float(sel.mean()), "selectivity_std": float(sel.std()),
               "unselective_fraction": float((sel < UNSELECTIVE).mean())}
    numbers.update({name: float(per_unit[name].mean()) for name in ("selectivity_train", "selectivity_gen")
                    if name in per_unit})
    return numbers
