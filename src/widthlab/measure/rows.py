"""Row subsampling: which rows of a layer's (rows, units) matrix a statistic keeps, drawn once and picked from
streamed chunks, so the full activation matrix is never held.

Redundancy's `max_rows` draws (`analyze`) and the similarity null's rows (`widthlab.measure.calibration`) both
go through `draw_rows` and `RowSampler`; each names its own random stream, and those names pin the numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from widthlab.measure.inputs import Batch, total_rows
from widthlab.seeding import numpy_generator

Stream = Callable[[str, int], tuple]  # (layer, draw) -> (seed, *labels) of `numpy_generator`


def draw_rows(total: int, max_rows: int, seed: int, *stream: object) -> np.ndarray:
    """Sorted indices of min(max_rows, total) of `total` rows, drawn uniformly without replacement from the
    stream ``numpy_generator(seed, *stream)``.

    Sorted so a sample keeps the rows' order (and can be picked chunk by chunk).

    Example: the rows of sampling 0 of layer relu1, 100 of 1,000:
        >>> rows = draw_rows(1000, 100, 0, "relu1", 0, "rows")
        >>> len(rows), rows[:5].tolist(), bool((np.diff(rows) > 0).all())
        (100, [17, 25, 35, 52, 53], True)
    """
    rng = numpy_generator(seed, *stream)
    return np.sort(rng.choice(total, size=min(max_rows, total), replace=False))


class RowSampler:
    """Picks `draws` samples of at most `max_rows` rows per layer from streamed ``{layer: (rows, units) chunk}``
    batches.

    Each layer's draws are made at its first chunk, where its total row count is known (`counts` are the inputs'
    ``(examples, tokens)``, `widthlab.measure.inputs.count_examples`); draw d of layer L comes from the stream
    ``stream(L, d)``. When `max_rows` covers every row nothing is drawn: every draw keeps every row, in order.

    Example: three draws of 50 of the 200 rows of ``relu1``, picked chunk by chunk:
        >>> from widthlab.measure.capture import stream_activations
        >>> from widthlab.measure.inputs import count_examples
        >>> sampler = RowSampler(["relu1"], 50, count_examples(x, None), lambda name, d: (0, name, d, "rows"), draws=3)
        >>> kept = [[], [], []]
        >>> for chunks, batch in stream_activations(model, x, ["relu1"], batch_size=64):
        ...     for d, part in enumerate(sampler.pick("relu1", chunks["relu1"], batch)):
        ...         kept[d].append(part)
        >>> [len(torch.cat(parts)) for parts in kept], sampler.complete()
        ([50, 50, 50], True)
    """

    def __init__(self, layers: Sequence[str], max_rows: int, counts: tuple[int, int | None], stream: Stream,
                 draws: int = 1):
        self.max_rows, self.counts, self.stream, self.draws = max_rows, counts, stream, draws
        # sorted row indices per draw, made at a layer's first chunk; None when every draw keeps every row
        self.picks: dict[str, list[np.ndarray] | None] = {}
        self.seen = dict.fromkeys(layers, 0)  # rows streamed so far per layer
        self.totals: dict[str, int] = {}

    def first(self, name: str, rows: int, batch: Batch) -> bool:
        """Make the draws of `name` if `rows` (its chunk of `batch`) is its first; True when it was."""
        if name in self.picks:
            return False
        self.totals[name] = total = total_rows(rows, batch, *self.counts)
        self.picks[name] = None if self.max_rows >= total else [
            draw_rows(total, self.max_rows, *self.stream(name, d)) for d in range(self.draws)]
        return True

    def pick(self, name: str, rows: torch.Tensor, batch: Batch) -> list[torch.Tensor] | None:
        """The rows of each draw in this chunk of `name` (some may be empty), or None when every draw keeps all."""
        self.first(name, len(rows), batch)
        start = self.seen[name]
        self.seen[name] = stop = start + len(rows)
        if self.picks[name] is None:
            return None
        parts = []
        for idx in self.picks[name]:
            lo, hi = np.searchsorted(idx, [start, stop])
            parts.append(rows[torch.as_tensor(idx[lo:hi] - start, device=rows.device)])
        return parts

    def complete(self) -> bool:
        """Whether every layer yielded exactly the rows its first chunk promised."""
        return all(self.seen[name] == total for name, total in self.totals.items())
