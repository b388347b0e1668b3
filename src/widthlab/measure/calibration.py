"""A permutation null for similarity: how many similar units chance correlations alone would give.

The paper's similarity counts similar units per unit, so with few rows (or many units) chance |r| ≥ 0.5 inflates
it. Shuffling each unit's rows independently keeps every unit's distribution but destroys every pairwise
relation; the similarity of that shuffled matrix is the chance level, and observed − null is the excess that
real co-activation explains. Observed and null are computed on the same sampled rows, so the excess compares
like with like.
"""

from __future__ import annotations

import numpy as np
import torch

from widthlab.errors import WidthlabError
from widthlab.measure.inputs import DEFAULT_MASK, count_examples
from widthlab.measure.redundancy import Moments, as_matrix, census, check_fraction, similarity_from_census
from widthlab.measure.rows import RowSampler, draw_rows
from widthlab.seeding import derive_seed, numpy_generator

NULL_ROWS = "null-rows"  # the stream of the null's row draws: its name pins the numbers


def similarity_null(acts: torch.Tensor | np.ndarray, *, threshold: float = 0.5, max_rows: int = 20000,
                    seed: int = 0) -> dict:
    """Observed similarity and its permutation null (each unit's rows shuffled independently) on the same rows.

    At most `max_rows` rows are drawn without replacement (stream ``numpy_generator(seed, "null-rows")``; all
    rows, in order, when there are no more than that); each unit's column of those rows is then permuted
    independently (stream ``numpy_generator(seed, "null-perm")``). Both matrices go through the one §1
    definition (`similarity_from_census`: flat units count 0, similar_fraction = similarity / (C − 1)). A flat
    unit stays flat under permutation, so it never adds to the null. Only the sampled rows are converted and
    checked for NaN/inf, so a huge activation matrix is never copied whole.

    Args:
        acts: (rows, units) activations, tensor or ndarray.
        threshold: |r| in [0, 1] at or above which two units are similar (default 0.5).
        max_rows: rows sampled for both numbers (default 20,000), a positive integer.
        seed: seed of the row draw and the permutations (default 0); pass a seed derived from the layer and
            sampling (`widthlab.seeding.derive_seed`) to keep layers independent.

    Returns a dict: ``rows`` (rows used), ``similarity``, ``similar_fraction`` (observed on those rows),
    ``similarity_null``, ``similar_fraction_null`` and ``similarity_excess`` (= similarity − similarity_null).

    Example: on five rows of 50 independent units, chance correlations make the null nearly as high as the
    observed similarity; on 5,000 rows both vanish:
        >>> null = similarity_null(np.random.default_rng(0).standard_normal((5, 50)))
        >>> round(null["similarity"], 2), round(null["similarity_null"], 2)
        (20.2, 19.6)
        >>> similarity_null(np.random.default_rng(0).standard_normal((5000, 50)))["similarity_null"]
        0.0
    """
    if isinstance(max_rows, bool) or not isinstance(max_rows, (int, np.integer)) or max_rows < 1:
        raise WidthlabError(f"max_rows must be a positive integer, got {max_rows!r}")
    x = torch.as_tensor(acts).detach()
    if x.dim() != 2:
        raise WidthlabError(f"activations must be a 2-D (rows, units) matrix, got shape {tuple(x.shape)}")
    total = x.shape[0]
    if total > max_rows:
        picked = draw_rows(total, int(max_rows), seed, NULL_ROWS)
        x = x[torch.as_tensor(picked, device=x.device)]
    observed = as_matrix(x).cpu().numpy()  # (rows, C) float64
    shuffled = numpy_generator(seed, "null-perm").permuted(observed, axis=0)  # each column permuted on its own
    # Similarity alone: the principal components of these matrices are never reported, so no eigen-decomposition.
    threshold = check_fraction("threshold", threshold, low_open=False)
    real = similarity_from_census(census(Moments.of(observed)), threshold=threshold)
    null = similarity_from_census(census(Moments.of(shuffled)), threshold=threshold)
    return {
        "rows": len(observed),
        "similarity": real["similarity"],
        "similar_fraction": real["similar_fraction"],
        "similarity_null": null["similarity"],
        "similar_fraction_null": null["similar_fraction"],
        "similarity_excess": real["similarity"] - null["similarity"],
    }


class NullRows:
    """Keeps at most `max_rows` rows per layer, drawn uniformly without replacement over all rows, from streamed
    ``{layer: (rows, units) chunk}`` batches, so the full activation matrix is never held.

    Rows of layer L come from the stream (seed, L, "null-rows") through the one row sampler
    (`widthlab.measure.rows.RowSampler`); `counts` are the inputs' ``(examples, tokens)``
    (`widthlab.measure.inputs.count_examples`). Fed by `sample_rows`' own pass, or by any pass that streams the
    layers (`analyze`'s clean pass), with the same rows either way.

    Example: 100 of the 200 rows of ``relu1``:
        >>> from widthlab.measure.capture import stream_activations
        >>> sampler = NullRows(["relu1"], 100, 0, count_examples(x, None))
        >>> for chunks, batch in stream_activations(model, x, ["relu1"], batch_size=64):
        ...     sampler.add(chunks, batch)
        >>> sampler.rows()["relu1"].shape
        torch.Size([100, 128])
    """

    def __init__(self, layers, max_rows: int, seed: int, counts: tuple[int, int | None]):
        self.sampler = RowSampler(list(layers), max_rows, counts, lambda name, _: (derive_seed(seed, name), NULL_ROWS))
        self.kept: dict[str, list[torch.Tensor]] = {name: [] for name in layers}

    def add(self, chunks, batch) -> None:
        """Keep the drawn rows of one batch's chunks."""
        for name, rows in chunks.items():
            if name not in self.kept:
                continue
            parts = self.sampler.pick(name, rows, batch)
            # every row kept: a copy, so a later change to the streamed chunk cannot reach the kept rows; kept in
            # the chunk's own dtype (half the memory of float64 for float32 layers) and converted, exactly, in `rows`
            kept = rows if parts is None else parts[0]
            self.kept[name].append(kept.detach().to("cpu", copy=parts is None))

    def rows(self) -> dict[str, torch.Tensor]:
        """``{layer: (rows, units) float64 CPU tensor}`` of the kept rows."""
        return {name: torch.cat(parts).to(torch.float64) for name, parts in self.kept.items()}


def sample_rows(model, inputs, layers, *, max_rows: int = 20000, seed: int = 0, unit_axis: int | None = None,
                batch_size: int = 256, mask: str | int | None = DEFAULT_MASK) -> dict[str, torch.Tensor]:
    """At most `max_rows` activation rows per layer, drawn uniformly without replacement over all rows
    (examples × positions, or real tokens), streamed so the full activation matrix is never held.

    Rows of layer L come from the stream (seed, L, "null-rows"); the result is (rows, units) float64 on the CPU.

    Example:
        >>> sample_rows(model, x, ["relu1"], max_rows=100)["relu1"].shape
        torch.Size([100, 128])
    """
    from widthlab.measure.capture import stream_activations

    sampler = NullRows(list(layers), max_rows, seed, count_examples(inputs, mask))
    for chunks, batch in stream_activations(model, inputs, list(layers), unit_axis=unit_axis, batch_size=batch_size,
                                            mask=mask):
        sampler.add(chunks, batch)
    return sampler.rows()


def similarity_nulls(samples: dict[str, torch.Tensor], *, threshold: float = 0.5, max_rows: int = 20000,
                     seed: int = 0) -> dict[str, dict]:
    """`similarity_null` of each layer's sampled rows (`sample_rows`, `NullRows`), seeded per layer."""
    return {name: similarity_null(rows, threshold=threshold, max_rows=max_rows, seed=derive_seed(seed, name))
            for name, rows in samples.items()}


def layer_similarity_null(model, inputs, layers, *, threshold: float = 0.5, max_rows: int = 20000, seed: int = 0,
                          unit_axis: int | None = None, batch_size: int = 256,
                          mask: str | int | None = DEFAULT_MASK) -> dict[str, dict]:
    """`similarity_null` of each layer on at most `max_rows` sampled rows (see `sample_rows`).

    Example:
        >>> null = layer_similarity_null(model, x, ["relu1"])["relu1"]
        >>> null["rows"], null["similarity"] == null["similarity_null"] + null["similarity_excess"]
        (200, True)
    """
    samples = sample_rows(model, inputs, layers, max_rows=max_rows, seed=seed, unit_axis=unit_axis,
                          batch_size=batch_size, mask=mask)
    return similarity_nulls(samples, threshold=threshold, max_rows=max_rows, seed=seed)
