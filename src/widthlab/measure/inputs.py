"""What a model is fed and what it returns: batches of positional or keyword inputs, masks, labels and scores.

**Inputs** (one rule, everywhere in `widthlab.measure`). `inputs` is a tensor, a tuple/list of tensors, a
mapping of tensors (e.g. a HF ``BatchEncoding``), or a Dataset / DataLoader yielding any of these:

- a tensor ``x``: the model is called as ``model(x)``; no labels;
- a tuple/list ``(a, b, ..., y)``: positional inputs ``model(a, b, ...)``; the last element is the labels when
  the tuple has two or more elements and that element is a 1-D integer tensor with one entry per example
  (so ``(x, y)`` of a classification data set keeps working), otherwise every element is an input;
- a mapping: keyword inputs ``model(**mapping)``; its ``"labels"`` (or ``"label"``) entry, if any, is the labels
  and is not passed to the model.

A tensor, tuple or mapping given directly is split into batches of `batch_size` along axis 0 (every tensor must
have the same first dimension, the number of examples); a Dataset is read in order `batch_size` at a time; a
DataLoader keeps its own batches.

**Attention mask.** `mask` names the tensor that says which token positions are real: a keyword (default
``"attention_mask"``) or the position of a positional input; ``None`` ignores masks. A found mask (B, T) selects
the rows that enter every statistic (`unit_rows`) and the token positions whose predictions are compared.

**Scores.** `output` picks the class scores from what the model returns: None (default) takes a tensor as it is,
else the ``"logits"`` entry of a mapping (HF ``ModelOutput``), else a ``.logits`` attribute, else the first tensor
of a tuple/list; a string takes that key or attribute; a callable is applied to the output. Scores (N, classes)
compare one prediction per example; scores (N, T, V) (a language model's) one prediction per real token.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from widthlab import memory
from widthlab.data.base import ArrayDataset
from widthlab.errors import WidthlabError, check_positive_int

Inputs = torch.Tensor | tuple | list | Mapping | Dataset | DataLoader
# DataLoader workers decoding a Dataset's items (`loader_workers`): this variable overrides the default.
WORKERS_ENV = "WIDTHLAB_MEASURE_WORKERS"
MAX_DEFAULT_WORKERS = 8
# A Dataset's decoded batches are kept for a measurement (`Kept`) when they take at most this share of free RAM.
KEEP_SHARE = 0.5
LABEL_KEYS = ("labels", "label")
DEFAULT_MASK = "attention_mask"
Output = str | Callable[[object], torch.Tensor] | None


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without either)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _float_dtype(model: nn.Module) -> torch.dtype | None:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


@dataclass
class Batch:
    """One batch of B examples: the model's positional and keyword inputs, its labels and its token mask.

    Attributes:
        args: positional inputs, each (B, ...).
        kwargs: keyword inputs, each (B, ...).
        labels: (B,) class labels, or None.
        mask: (B, T) bool, True at real token positions, or None (every row is real).
    """

    args: tuple[torch.Tensor, ...]
    kwargs: dict[str, torch.Tensor]
    labels: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def __len__(self) -> int:
        first = self.args[0] if self.args else next(iter(self.kwargs.values()))
        return len(first)

    @property
    def shapes(self) -> str:
        """The input shapes, for error messages: ``(4, 3, 32, 32)`` or ``input_ids (4, 12), attention_mask (4, 12)``."""
        parts = [str(tuple(a.shape)) for a in self.args] + [f"{k} {tuple(v.shape)}" for k, v in self.kwargs.items()]
        return ", ".join(parts)

    def run(self, model: nn.Module) -> object:
        """``model(*args, **kwargs)``."""
        return model(*self.args, **self.kwargs)

    def head(self, k: int) -> Batch:
        """The first `k` examples."""
        return Batch(tuple(a[:k] for a in self.args), {n: v[:k] for n, v in self.kwargs.items()},
                     None if self.labels is None else self.labels[:k], None if self.mask is None else self.mask[:k])

    def rows(self) -> int:
        """Real rows of a token layer: the real tokens, or B without a mask."""
        return len(self) if self.mask is None else int(self.mask.sum())


def _is_label(value: object, n: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() == 1 and not value.is_floating_point() and \
        value.dtype != torch.bool and len(value) == n


def _first_dim(values: list[torch.Tensor], what: str) -> int:
    sizes = {v.shape[0] if v.dim() else None for v in values}
    if None in sizes or len(sizes) != 1:
        raise WidthlabError(f"{what} must be tensors with the same first dimension (the examples), got shapes "
                            f"{[tuple(v.shape) for v in values]}")
    return sizes.pop()


def to_batch(item: object, mask: str | int | None = DEFAULT_MASK) -> Batch:
    """A `Batch` from one batch as a Dataset/DataLoader yields it (module doc's rule)."""
    if isinstance(item, torch.Tensor):
        if item.dim() == 0:
            raise WidthlabError("inputs must have a batch axis; got a scalar tensor")
        batch = Batch((item,), {})
    elif isinstance(item, Mapping):
        bad = [k for k, v in item.items() if not isinstance(v, torch.Tensor)]
        if bad or not item:
            raise WidthlabError(f"mapping inputs must map names to tensors; {', '.join(map(repr, bad)) or 'none'} "
                                "are not (tokenize with return_tensors='pt')")
        kwargs = {str(k): v for k, v in item.items()}
        labels = next((kwargs.pop(k) for k in LABEL_KEYS if k in kwargs), None)
        if not kwargs:
            raise WidthlabError(f"mapping inputs hold only labels ({', '.join(item)}); nothing to feed the model")
        n = _first_dim(list(kwargs.values()), "mapping inputs")
        if labels is not None and not _is_label(labels, n):
            labels = None  # e.g. a causal LM's token labels: the model shifts them, widthlab does not compare them
        batch = Batch((), kwargs, labels)
    elif isinstance(item, (tuple, list)) and item and all(isinstance(v, torch.Tensor) for v in item):
        parts = list(item)
        n = _first_dim(parts, "tuple inputs")
        labels = parts.pop() if len(parts) >= 2 and _is_label(parts[-1], n) else None
        batch = Batch(tuple(parts), {}, labels)
    else:
        raise WidthlabError(f"a batch must be a tensor, a tuple of tensors or a mapping of tensors, "
                            f"got {type(item).__name__}")
    if mask is not None and mask is not False:
        batch.mask = _find_mask(batch, mask)
    return batch


def _find_mask(batch: Batch, mask: str | int) -> torch.Tensor | None:
    if isinstance(mask, bool) or not isinstance(mask, (str, int)):
        raise WidthlabError(f"mask must be a keyword name, the position of a positional input, or None; got {mask!r}")
    if isinstance(mask, int):
        if not -len(batch.args) <= mask < len(batch.args):
            raise WidthlabError(f"mask={mask} names positional input {mask}, but the batch has {len(batch.args)}")
        value = batch.args[mask]
    elif mask in batch.kwargs:
        value = batch.kwargs[mask]
    elif mask != DEFAULT_MASK:
        raise WidthlabError(f"mask={mask!r} is not among the keyword inputs ({', '.join(batch.kwargs) or 'none'})")
    else:
        return None
    if value.dim() != 2 or value.is_floating_point() and not torch.all((value == 0) | (value == 1)):
        raise WidthlabError(f"the attention mask must be (batch, tokens) of 0/1, got shape {tuple(value.shape)} "
                            f"of {value.dtype}")
    return value != 0


def _split(inputs, batch_size: int) -> Iterator[object]:
    """Batches of a tensor, tuple or mapping given directly, along axis 0."""
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() == 0:
            raise WidthlabError("inputs must have a batch axis; got a scalar tensor")
        yield from inputs.split(batch_size)
    elif isinstance(inputs, Mapping):
        tensors = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        n = _first_dim(list(tensors.values()), "mapping inputs") if tensors else 0
        for lo in range(0, n, batch_size):
            yield {k: v[lo:lo + batch_size] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    else:
        n = _first_dim(list(inputs), "tuple inputs")
        for lo in range(0, n, batch_size):
            yield tuple(v[lo:lo + batch_size] for v in inputs)


def loader_workers(device: torch.device) -> int:
    """DataLoader workers that decode a Dataset's items for a model on `device`: ``$WIDTHLAB_MEASURE_WORKERS`` when
    set, else up to 8 (the CPUs this process may use) on CUDA, where single-threaded decoding (ImageNet's JPEGs)
    would leave the GPU waiting, and 0 on the CPU, where workers would take the cores the model runs on."""
    value = os.environ.get(WORKERS_ENV)
    if value is not None:
        if not value.strip().isdigit():
            raise WidthlabError(f"{WORKERS_ENV} must be a count of DataLoader workers (0 or more), got {value!r}")
        return int(value)
    if device.type != "cuda":
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_WORKERS, cpus))


def _loader(dataset: Dataset, batch_size: int, device: torch.device, workers: int | None,
            pin: bool = True) -> DataLoader:
    """The DataLoader that reads `dataset` in order, `batch_size` items at a time; pinned batches for CUDA when
    `pin` (batches kept for a whole measurement are not: torch caches pinned host memory after it is freed)."""
    workers = loader_workers(device) if workers is None else workers
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=pin and device.type == "cuda")


@dataclass
class Kept:
    """A Dataset's batches, decoded once and kept on the CPU for every pass of one measurement (`keep_decoded`).

    `batches` yields `parts` as they are, whatever its batch_size (as it does a DataLoader's own batches).

    Attributes:
        parts: the batches, as ``DataLoader(dataset, batch_size)`` yielded them; counts: ``(examples, real tokens
        or None without a mask)``, as `count_examples` tells them.
    """

    parts: list[Batch]
    counts: tuple[int, int | None]

    def __len__(self) -> int:
        return self.counts[0]


def in_memory(inputs: Inputs) -> Inputs | None:
    """The tensors of a Dataset that only indexes them (a TensorDataset, widthlab's ArrayDataset) as a tuple, which
    `batches` slices into the same batches a DataLoader would stack item by item; None for any other input."""
    if _plain(inputs, TensorDataset):
        return tuple(inputs.tensors)
    if _plain(inputs, ArrayDataset):
        return inputs.x, inputs.y
    return None


def _plain(inputs: object, kind: type) -> bool:
    """An instance of `kind` whose items are `kind`'s own (a subclass may transform them)."""
    return isinstance(inputs, kind) and type(inputs).__getitem__ is kind.__getitem__


def keep_decoded(model: nn.Module, inputs: Inputs, batch_size: int,
                 mask: str | int | None = DEFAULT_MASK) -> tuple[Inputs, tuple[int, int | None] | None]:
    """``(inputs to measure, their counts or None when unknown)``: a Dataset read once, for all of a measurement's
    passes.

    A Dataset decodes its items on access (ImageNet's JPEGs), so each pass over it (counting, the statistics pass,
    the sweep) would decode every example again. Its batches are decoded once, by `loader_workers` DataLoader
    workers, into a `Kept` (same values, so the same numbers) when they fit in `KEEP_SHARE` of the free RAM
    (told from the first batch); otherwise the Dataset itself is returned, to be streamed pass by pass, with
    its counts when its length tells them (no token mask). A Dataset of tensors is its tensors (`in_memory`),
    sliced, not copied. Any other input is returned as it is, uncounted.
    """
    arrays = in_memory(inputs)
    if arrays is not None:
        return arrays, None
    if not isinstance(inputs, Dataset) or isinstance(inputs, IterableDataset):
        return inputs, None
    check_positive_int("batch_size", batch_size)
    try:
        examples = len(inputs)
    except TypeError:
        return inputs, None
    parts: list[Batch] = []
    tokens: int | None = None
    free = memory.available_memory("cpu")
    for item in _loader(inputs, batch_size, model_device(model), None, pin=False):
        batch = to_batch(item, mask)
        if not parts:
            size = sum(t.numel() * t.element_size() for t in (*batch.args, *batch.kwargs.values(), batch.labels,
                                                               batch.mask) if t is not None)
            if free is not None and size * -(-examples // max(len(batch), 1)) > KEEP_SHARE * free:
                return inputs, (examples, None) if batch.mask is None else None
        parts.append(batch)
        if batch.mask is not None:
            tokens = (tokens or 0) + int(batch.mask.sum())
    kept = Kept(parts, (sum(len(batch) for batch in parts), tokens))
    return kept, kept.counts


def batches(model: nn.Module, inputs: Inputs, batch_size: int, *,
            mask: str | int | None = DEFAULT_MASK, workers: int | None = None) -> Iterator[Batch]:
    """Yield `Batch`es on the model's device (module doc's rule); floating inputs are cast to the model's dtype.

    Args:
        inputs: see the module doc, or a `Kept`; batch_size: examples per batch for tensors, tuples, mappings and
            Datasets.
        mask: the attention mask's keyword or position (default ``"attention_mask"``); None ignores masks.
        workers: DataLoader workers decoding a Dataset (default None: `loader_workers`).
    """
    check_positive_int("batch_size", batch_size)
    device, dtype = model_device(model), _float_dtype(model)
    if isinstance(inputs, Batch):  # already one batch (e.g. a probe's few examples)
        source = iter([inputs])
    elif isinstance(inputs, Kept):
        source = iter(inputs.parts)
    elif isinstance(inputs, torch.Tensor) or (isinstance(inputs, (tuple, list, Mapping)) and inputs
                                            and not isinstance(inputs, Dataset)):
        if isinstance(inputs, (tuple, list)) and not all(isinstance(v, torch.Tensor) for v in inputs):
            raise WidthlabError("tuple inputs must hold tensors only, got "
                                f"{', '.join(type(v).__name__ for v in inputs)}")
        source = _split(inputs, batch_size)
    elif isinstance(inputs, (Dataset, DataLoader)):
        source = inputs if isinstance(inputs, DataLoader) else _loader(inputs, batch_size, device, workers)
    else:
        raise WidthlabError(f"inputs must be a tensor, a tuple or mapping of tensors, a Dataset or a DataLoader, "
                            f"got {type(inputs).__name__}")

    # Pinned batches (a streamed CUDA DataLoader's) are copied while the GPU computes.
    copy = device.type == "cuda"

    def move(v: torch.Tensor) -> torch.Tensor:
        if dtype is not None and v.is_floating_point():
            return v.to(device, dtype, non_blocking=copy)
        return v.to(device, non_blocking=copy)

    for item in source:
        batch = item if isinstance(item, Batch) else to_batch(item, mask)
        yield Batch(tuple(move(a) for a in batch.args), {k: move(v) for k, v in batch.kwargs.items()},
                    None if batch.labels is None else batch.labels.to(device),
                    None if batch.mask is None else batch.mask.to(device))


def known_examples(inputs: Inputs) -> int | None:
    """The number of examples of `inputs` when it can be told without reading them (None otherwise)."""
    try:
        if isinstance(inputs, Mapping):
            return len(next(v for v in inputs.values() if isinstance(v, torch.Tensor)))
        if isinstance(inputs, (tuple, list)):
            return len(inputs[0])
        if isinstance(inputs, DataLoader):
            return len(inputs.dataset)
        return len(inputs)
    except (TypeError, StopIteration):
        return None


def count_examples(inputs: Inputs, mask: str | int | None = DEFAULT_MASK) -> tuple[int, int | None]:
    """``(examples, real tokens or None without a mask)`` of `inputs`, read without the model."""
    if isinstance(inputs, Kept):
        return inputs.counts
    examples, tokens = 0, None
    for batch in batches(nn.Module(), inputs, 1024, mask=mask):
        examples += len(batch)
        if batch.mask is not None:
            tokens = (tokens or 0) + int(batch.mask.sum())
    return examples, tokens


def total_rows(rows: int, batch: Batch, examples: int, tokens: int | None) -> int:
    """All rows a layer will yield, from its `rows` in the first `batch`: the real tokens of every input when its
    rows are the batch's real tokens, else `examples` × its rows per example."""
    if batch.mask is not None and tokens is not None and rows == batch.rows() and rows != len(batch):
        return tokens
    return examples * (rows // len(batch))


def first_batch(model: nn.Module, inputs: Inputs, k: int, mask: str | int | None = DEFAULT_MASK) -> Batch:
    """The first `k` examples of `inputs` as a `Batch` on the model's device, or a WidthlabError if there are none."""
    batch = next(batches(model, inputs, k, mask=mask, workers=0), None)  # no workers started for k examples
    if batch is None or len(batch) == 0:
        raise WidthlabError("inputs yielded no examples")
    return batch.head(k)


# Scores ---------------------------------------------------------------------------------------------------------------

def select_scores(out: object, output: Output = None) -> torch.Tensor:
    """The class scores in a model's output (module doc), checked to be (N, classes) or (N, T, V)."""
    if callable(output):
        scores = output(out)
    elif isinstance(output, str):
        if isinstance(out, Mapping) and output in out:
            scores = out[output]
        elif hasattr(out, output):
            scores = getattr(out, output)
        else:
            keys = list(out) if isinstance(out, Mapping) else [k for k in vars(out)] if hasattr(out, "__dict__") \
                else []
            raise WidthlabError(f"output={output!r}: the model returned {type(out).__name__} without it"
                                + (f" (it has {', '.join(map(str, keys))})" if keys else ""))
    elif output is not None:
        raise WidthlabError(f"output must be a key, an attribute name or a callable, got {output!r}")
    elif isinstance(out, torch.Tensor):
        scores = out
    elif isinstance(out, Mapping) and "logits" in out:
        scores = out["logits"]
    elif isinstance(getattr(out, "logits", None), torch.Tensor):
        scores = out.logits
    elif isinstance(out, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in out):
        scores = next(v for v in out if isinstance(v, torch.Tensor))
    else:
        keys = f" with keys {', '.join(map(str, out))}" if isinstance(out, Mapping) else ""
        raise WidthlabError(f"the model returned {type(out).__name__}{keys}; name its scores with output= "
                            "(a key, an attribute or a callable; --output KEY in widthlab analyze)")
    if not isinstance(scores, torch.Tensor) or scores.dim() not in (2, 3):
        got = f"shape {tuple(scores.shape)}" if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise WidthlabError(f"the model's scores must be (N, classes) or (N, tokens, vocabulary) to measure "
                            f"robustness, got {got}; pick them with output= (--output KEY in widthlab analyze)")
    return scores


def predictions(scores: torch.Tensor) -> torch.Tensor:
    """(N,) or (N, T) argmax over the last axis of (N, classes) or (N, T, V) scores."""
    return scores.argmax(-1)


def valid_positions(scores: torch.Tensor, batch: Batch) -> torch.Tensor | None:
    """(B, T) bool of the token positions whose predictions count, for (B, T, V) scores; None for (B, classes)."""
    if scores.dim() == 2:
        return None
    if batch.mask is None:
        return torch.ones(scores.shape[:2], dtype=torch.bool, device=scores.device)
    if tuple(batch.mask.shape) != tuple(scores.shape[:2]):
        raise WidthlabError(f"token scores of shape {tuple(scores.shape)} do not match the attention mask of shape "
                            f"{tuple(batch.mask.shape)}")
    return batch.mask.to(scores.device)
