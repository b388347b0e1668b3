"""`compress`: a real smaller model from a wide one, by merging redundant units into the others or pruning them.

The paper's claim is that wide networks grow redundant units; if so, a wide network should shrink to a narrower
one with (almost) the same function, and the way it shrinks tells redundancy (units others explain: merging
keeps the function) from mere robustness (units whose loss barely matters: pruning keeps the accuracy). This
module does the shrinking and verifies it on data: `Compressed.table` says per layer how many units went, how
(``method_used``) and what the whole model's accuracy and agreement with the original's predictions are after it,
without fine-tuning.

Per layer, in forward order (a layer sees the model with the layers before it already compressed): the consumer's
input activity is streamed into float64 moments on the calibration inputs, units are ranked (`select`), the
removed ones are folded into the consumer (``merge``) or dropped (``prune``), and the producer, BatchNorms and
consumer are sliced (`structure.shrink_chain`). A layer whose channels are coupled through residual adds or
concatenations is pruned through Torch-Pruning's dependency graph (the optional extra ``widthlab[compress]``).
"""

from __future__ import annotations

import copy
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from widthlab import files
from widthlab.compress import select, structure
from widthlab.errors import WidthlabError, check_positive_int
from widthlab.measure.capture import default_layers
from widthlab.measure.hooks import named
from widthlab.measure.inputs import Batch, batches, select_scores

METHODS = ("merge", "prune")
FORMAT = "widthlab-compressed-1"
EXTRA = "pip install 'widthlab[compress]'"
COLUMNS = ["layer", "units_before", "units_after", "method_used", "importance", "params_before", "params_after",
           "flops_before", "flops_after", "accuracy_before", "accuracy_after", "agreement", "accuracy_finetuned",
           "agreement_finetuned"]


def is_hf(model: nn.Module) -> bool:
    """Whether `model` is a ``transformers.PreTrainedModel`` (without importing transformers when nothing did)."""
    if "transformers" not in sys.modules:
        return False
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


# Compressors of models torch.fx cannot trace, tried before tracing: (recognises(model), compress(model, ...)).
# `widthlab.compress.hf` adds HF transformers' when the package imports it, so this module never imports it (the
# two would import each other).
SPECIAL: list[tuple[Callable[[nn.Module], bool], Callable[..., Compressed]]] = []


@dataclass
class Compressed:
    """What `compress` returns.

    Attributes:
        model: the compressed model (a new module; the original is untouched), in eval mode.
        kept: layer → the indices (of the original units, ascending) that remain.
        table: one row per layer (`COLUMNS`): units before/after, ``method_used``, the importance kind, and the
            whole model's parameters and accuracy (NaN without labels) before/after and agreement with the
            original's predictions on the evaluation inputs.
        spec: how to rebuild the original model (``{"model": section, "width": w, "num_classes": n}``), or None
            for a model not from the zoo.
        units: layer → its unit count in the original model.
    """

    model: nn.Module
    kept: dict[str, torch.Tensor]
    table: pd.DataFrame
    spec: dict | None = None
    units: dict[str, int] = field(default_factory=dict)

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write `table` as CSV (atomically); returns the path."""
        path = Path(path)
        with files.atomic_path(path) as tmp:
            self.table.to_csv(tmp, index=False)
        return path

    def save(self, path: str | os.PathLike) -> Path:
        """Write a compressed checkpoint that `load_compressed` rebuilds and ``torch.load(weights_only=True)``
        reads: the original's spec, the kept indices per layer, the unit counts and the state dict (plain tensors,
        numbers and strings only: loading it runs no code). A HF transformers model is saved with
        `save_pretrained` instead."""
        from widthlab.train.checkpoint import package_versions

        if is_hf(self.model):
            raise WidthlabError("a compressed HF transformers model is saved with Compressed.save_pretrained(dir) "
                                "(its config holds the new intermediate size) and loaded with from_pretrained")

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"format": FORMAT, "spec": self.spec, "kept": {k: v.clone() for k, v in self.kept.items()},
                 "units": dict(self.units), "state": {k: v.detach().cpu().clone() for k, v in
                                                       self.model.state_dict().items()},
                 "versions": package_versions()}
        with files.atomic_path(path) as tmp:
            torch.save(state, tmp)
        return path

    def save_pretrained(self, directory: str | os.PathLike, **kwargs) -> Path:
        """A compressed HF transformers model as `model.save_pretrained(directory, **kwargs)` writes it: its config
        holds the kept intermediate size, so ``from_pretrained(directory)`` rebuilds it. Returns the folder."""
        if not is_hf(self.model):
            raise WidthlabError(f"save_pretrained is for HF transformers models; this is a "
                                f"{type(self.model).__name__}: use Compressed.save(path)")
        self.model.save_pretrained(directory, **kwargs)
        return Path(directory)


# Inputs ---------------------------------------------------------------------------------------------------------------

def _collect(model: nn.Module, inputs, max_examples: int | None, batch_size: int, mask=None) -> list[Batch]:
    """The first `max_examples` examples of `inputs` as batches (kept in memory: every layer reads them again);
    `mask`: the attention mask's keyword, for token models (default None: no mask is looked for)."""
    out, seen = [], 0
    for batch in batches(model, inputs, batch_size, mask=mask):
        if max_examples is not None and seen + len(batch) > max_examples:
            batch = batch.head(max_examples - seen)
        if len(batch):
            out.append(batch)
            seen += len(batch)
        if max_examples is not None and seen >= max_examples:
            break
    if not out:
        raise WidthlabError("compress: the inputs yielded no examples")
    return out


def _labels(batches_: list[Batch], labels) -> list[torch.Tensor | None]:
    """Per batch, the labels (`labels` if given, else those found in the inputs; None when there are none)."""
    if labels is None:
        found = [b.labels for b in batches_]
        return found if all(y is not None for y in found) else [None] * len(batches_)
    labels = torch.as_tensor(labels)
    total = sum(len(b) for b in batches_)
    if labels.dim() != 1 or len(labels) < total:
        raise WidthlabError(f"labels must be a 1-D tensor with one class per evaluated example ({total}), got shape "
                            f"{tuple(labels.shape)}")
    out, lo = [], 0
    for b in batches_:
        out.append(labels[lo:lo + len(b)].to(torch.long))
        lo += len(b)
    return out


@torch.no_grad()
def _predict(model: nn.Module, batches_: list[Batch], output) -> list[torch.Tensor]:
    return [select_scores(b.run(model), output).reshape(len(b), -1).argmax(-1).cpu() for b in batches_]


def _scores(preds: list[torch.Tensor], reference: list[torch.Tensor], labels: list) -> tuple[float, float]:
    """``(accuracy or NaN, agreement with reference)``."""
    p, r = torch.cat(preds), torch.cat(reference)
    agreement = float((p == r).double().mean())
    if labels[0] is None:
        return math.nan, agreement
    return float((p == torch.cat(labels).cpu()).double().mean()), agreement


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def flops_per_example(model: nn.Module, batch: Batch) -> float:
    """Floating-point operations of one forward pass per example, as torch's `FlopCounterMode` counts them
    (matrix products and convolutions, 2 per multiply-add), on the first example of `batch`: what removing units
    saves in compute, beside the parameters it saves in memory."""
    from torch.utils.flop_counter import FlopCounterMode

    one = batch.head(1)
    counter = FlopCounterMode(display=False)
    with counter:
        one.run(model)
    return float(counter.get_total_flops())


# Arguments ------------------------------------------------------------------------------------------------------------

def _count(layer: str, value: object, units: int) -> int:
    """Units to keep of `layer` from a count (1 … units) or a share in (0, 1] (rounded, at least 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise WidthlabError(f"keep for {layer!r} must be a count (1 … {units}) or a share in (0, 1], got {value!r}")
    if isinstance(value, float) and not value.is_integer() or isinstance(value, float) and value <= 1:
        if not 0 < value <= 1:
            raise WidthlabError(f"keep for {layer!r} must be a count (1 … {units}) or a share in (0, 1], got "
                                f"{value!r}")
        return max(1, int(math.floor(value * units + 0.5)))
    value = int(value)
    if not 1 <= value <= units:
        raise WidthlabError(f"keep for {layer!r} must be a count 1 … {units} (its units) or a share in (0, 1], "
                            f"got {value}")
    return value


def _counts(names: list[str], keep, units: dict[str, int]) -> dict[str, int]:
    if isinstance(keep, Mapping):
        unknown = [k for k in keep if k not in units]
        if unknown:
            raise WidthlabError(f"keep names layer(s) {', '.join(map(repr, unknown))} that are not compressed; "
                                f"compressed layers: {', '.join(names)}")
        return {name: _count(name, keep[name], units[name]) if name in keep else units[name] for name in names}
    return {name: _count(name, keep, units[name]) for name in names}


def _model_spec(model: nn.Module, spec: Mapping | None) -> dict | None:
    """The spec to rebuild the original: given, or recorded by `create_model` on the model (zoo models)."""
    spec = spec if spec is not None else getattr(model, "widthlab_spec", None)
    if spec is None:
        return None
    if not isinstance(spec, Mapping) or not isinstance(spec.get("model"), Mapping) or "width" not in spec:
        raise WidthlabError(f"spec must be {{'model': {{'name': ..., options}}, 'width': w, 'num_classes': n}}, "
                            f"got {spec!r}")
    saved = {"model": dict(spec["model"]), "width": float(spec["width"]), "num_classes": spec.get("num_classes")}
    # The file is loaded with weights_only=True: only plain values survive that, and a module:function model is
    # code the file must not name for import.
    if not _plain(saved) or ":" in str(saved["model"].get("name", "")):
        return None
    return saved


def _plain(value: object) -> bool:
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


# The engine -----------------------------------------------------------------------------------------------------------

def _moments(model: nn.Module, consumer: nn.Module, units: int, calibration: list[Batch]) -> select.Moments:
    moments = select.Moments(units)

    def pre(mod, args):
        moments.add(select.consumer_rows(args[0], units))

    handle = consumer.register_forward_pre_hook(pre)
    try:
        with torch.no_grad():
            for batch in calibration:
                batch.run(model)
    finally:
        handle.remove()
    return moments


def _rank(kind: str, model: nn.Module, layer: str, producer: nn.Module, units: int, calibration: list[Batch],
          targets: list[torch.Tensor], output, seed: int) -> np.ndarray:
    if kind == "ablation":
        (_, module), = named(model, [layer])
        drop, change = select.ablation_effects(model, layer, module, units, calibration, targets, output)
        return select.importance_rank(drop, change)
    if kind == "magnitude":
        return select.importance_rank(select.magnitude(producer))
    draws = torch.rand(units, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
    return select.importance_rank(draws.numpy())


def _order(method: str, path: structure.ChainPath, model: nn.Module, rank: np.ndarray,
           calibration: list[Batch]) -> tuple[np.ndarray, select.Moments | None, str]:
    """``(unit order, moments, method_used)``: merging keeps a prefix of the column-subset order, pruning of the
    importance order; a path where merging is not exact prunes and says why."""
    if method == "merge" and path.mixing is None:
        consumer = dict(model.named_modules())[path.consumer]
        moments = _moments(model, consumer, path.units, calibration)
        return select.merge_order(moments.cov, rank), moments, "merge"
    why = "" if method == "prune" else f" (merge not exact: {path.mixing} mixes units)"
    return select.prune_order(rank), None, f"prune{why}"


def _apply_chain(model: nn.Module, path: structure.ChainPath, order: np.ndarray, k: int,
                 moments: select.Moments | None) -> torch.Tensor:
    """Keep the first `k` of `order` on `path` of `model` (in place), folding the rest in when `moments` is given."""
    kept = np.sort(order[:k])
    removed = np.sort(order[k:])
    if moments is not None and len(removed):
        consumer = dict(model.named_modules())[path.consumer]
        coef, const = select.regression(moments, kept, removed)
        select.fold_into_consumer(consumer, path.units, kept, removed, coef, const)
    keep = torch.from_numpy(kept)
    structure.shrink_chain(model, path, keep)
    return keep


def _torch_pruning():
    try:
        import torch_pruning
    except ImportError:
        return None
    return torch_pruning


def _graph(model: nn.Module, example: Batch, tp):
    """Torch-Pruning's dependency graph of `model`, traced on `example`."""
    return tp.DependencyGraph().build_dependency(model, example_inputs=example.args if len(example.args) > 1 else
                                                 example.args[0])


def _coupled_group(model: nn.Module, path: structure.ChainPath, example: Batch, tp, removed=(0,), graph=None):
    """``(Torch-Pruning group, names of the modules whose output channels it removes)`` for removing `removed`
    units of `path` from `model` (`graph`: its dependency graph, when already built)."""
    modules = dict(model.named_modules())
    names = {id(module): name for name, module in modules.items()}
    producer = modules[path.producer]
    graph = graph if graph is not None else _graph(model, example, tp)
    handler = tp.prune_linear_out_channels if isinstance(producer, nn.Linear) else tp.prune_conv_out_channels
    group = graph.get_pruning_group(producer, handler, idxs=list(removed))
    if not graph.check_pruning_group(group):
        raise WidthlabError(f"cannot compress layer {path.layer!r}: Torch-Pruning refuses the group of layers coupled "
                            f"with {path.producer!r} (it would empty one of them)")
    members = {names[id(dep.target.module)] for dep, _ in group
               if getattr(dep.handler, "__name__", "") == "prune_out_channels" and id(dep.target.module) in names
               and isinstance(dep.target.module, structure.WEIGHTS)}
    return group, members


def _prune_coupled(model: nn.Module, path: structure.ChainPath, keep: torch.Tensor, example: Batch, tp) -> None:
    """Remove the units of `path` not in `keep` from `model` (in place) with Torch-Pruning's dependency graph,
    from every layer coupled with them."""
    removed = sorted(set(range(path.units)) - set(keep.tolist()))
    group, _ = _coupled_group(model, path, example, tp, removed)
    group.prune()
    path.units = len(keep)


@dataclass
class _Run:
    """What every layer's compression shares: the choices, the calibration data and its targets."""

    method: str
    importance: str
    calibration: list[Batch]
    targets: list[torch.Tensor]
    output: Any
    seed: int
    tp: Any
    owners: dict[str, str]  # coupled layer -> the first layer of its group (they share their channels)


def _coupled_owners(model: nn.Module, paths: list[structure.ChainPath], example: Batch, tp) -> dict[str, str]:
    """Coupled layer → the first layer (in forward order) whose Torch-Pruning group holds its producer: layers of
    one group (a ResNet's stem and stage 1, tied by identity shortcuts) are compressed once, together."""
    owners: dict[str, str] = {}
    groups: list[tuple[str, set[str]]] = []
    graph = _graph(model, example, tp)  # read only: no group is pruned here
    for path in paths:
        if not path.coupled:
            continue
        owner = next((layer for layer, members in groups if path.producer in members), None)
        if owner is not None:
            owners[path.layer] = owner
            continue
        owners[path.layer] = path.layer
        groups.append((path.layer, _coupled_group(model, path, example, tp, graph=graph)[1]))
    return owners


def _shrink(run: _Run, model: nn.Module, paths: list[structure.ChainPath], counts: dict[str, int]):
    """``(smaller copy of model, kept, method_used)``: each layer in forward order keeps ``counts[layer]`` units,
    chosen and folded on the model with the layers before it already compressed."""
    work, paths = copy.deepcopy(model), copy.deepcopy(paths)
    kept: dict[str, torch.Tensor] = {}
    used: dict[str, str] = {}
    for path in paths:
        k = counts[path.layer]
        owner = run.owners.get(path.layer, path.layer)
        if owner != path.layer:
            kept[path.layer] = kept[owner]
            used[path.layer] = f"as {owner!r} (the same channels, coupled through residual adds)"
            continue
        if k == path.units:
            kept[path.layer], used[path.layer] = torch.arange(path.units), "kept all"
            continue
        modules = dict(work.named_modules())
        rank = _rank(run.importance, work, path.layer, modules[path.producer], path.units, run.calibration,
                     run.targets, run.output, run.seed)
        if path.coupled:
            kept[path.layer] = torch.from_numpy(np.sort(select.prune_order(rank)[:k]))
            _prune_coupled(work, path, kept[path.layer], run.calibration[0], run.tp)
            used[path.layer] = "prune" if run.method == "prune" else \
                "prune (merge not supported: channels coupled through residual adds/concats)"
            continue
        order, moments, used[path.layer] = _order(run.method, path, work, rank, run.calibration)
        kept[path.layer] = _apply_chain(work, path, order, k, moments)
    return work.eval(), kept, used


def _metric(run: _Run, model: nn.Module, evaluation, reference, labels) -> float:
    accuracy, agreement = _scores(_predict(model, evaluation, run.output), reference, labels)
    return agreement if labels[0] is None else accuracy


def _search(run: _Run, model: nn.Module, path: structure.ChainPath, evaluation, reference, labels,
            max_drop: float, base: float) -> int:
    """Fewest units of `path`'s layer (compressed alone) whose metric stays within `max_drop` of `base`: a
    bisection on the kept count over one unit order (importance and selection measured once)."""
    if run.owners.get(path.layer, path.layer) != path.layer:
        return -1  # compressed with its group's first layer; filled in by the caller
    modules = dict(model.named_modules())
    rank = _rank(run.importance, model, path.layer, modules[path.producer], path.units, run.calibration,
                 run.targets, run.output, run.seed)
    order, moments, _ = _order(run.method if not path.coupled else "prune", path, model, rank, run.calibration)

    def ok(k: int) -> bool:
        trial = copy.deepcopy(model)
        if path.coupled:
            _prune_coupled(trial, copy.deepcopy(path), torch.from_numpy(np.sort(order[:k])), run.calibration[0],
                           run.tp)
        else:
            _apply_chain(trial, copy.deepcopy(path), order, k, moments)
        return base - _metric(run, trial.eval(), evaluation, reference, labels) <= max_drop + 1e-12

    lo, hi = 0, path.units  # ok(hi) holds (nothing removed); ok(lo) is taken to fail
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _joint(run: _Run, model: nn.Module, paths, counts: dict[str, int], evaluation, reference, labels,
           max_drop: float, base: float) -> dict[str, int]:
    """The per-layer counts raised together until the layers compressed jointly stay within `max_drop`: the
    smallest t ∈ [0, 1] (bisection, 6 steps) such that keeping k + ⌈t·(C − k)⌉ units per layer passes."""
    def at(t: float) -> dict[str, int]:
        return {p.layer: min(p.units, counts[p.layer] + math.ceil(t * (p.units - counts[p.layer]))) for p in paths}

    def ok(t: float) -> bool:
        return base - _metric(run, _shrink(run, model, paths, at(t))[0], evaluation, reference, labels) \
            <= max_drop + 1e-12

    if ok(0.0):
        return counts
    lo, hi = 0.0, 1.0
    for _ in range(6):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return at(hi)


def compress(model: nn.Module, inputs, layers: list[str] | str | None = None, *, keep=None,
             max_drop: float | None = None, method: str = "merge", importance: str = "ablation", labels=None,
             eval_inputs=None, max_examples: int | None = 2048, batch_size: int = 256, output=None, seed: int = 0,
             spec: Mapping | None = None, finetune=None, finetune_data=None) -> Compressed:
    """A smaller copy of `model` with fewer units in each of `layers`, verified on data.

    Args:
        model: any module whose unit layers lie on chains of Linear/Conv, BatchNorm, activations, dropout,
            pooling and flatten (mlp, alexnet_cifar, an ``nn.Sequential``); residual adds and concatenations
            (resnet56_cifar) need Torch-Pruning (``widthlab[compress]``). A HF transformers model is compressed in
            the intermediate units of its MLP blocks, all to one count, its config updated (`widthlab.compress.hf`).
            It is not modified.
        inputs: calibration inputs (any form `widthlab.measure` takes; the first `max_examples` are used): the
            activity regressed for merging and the single-unit ablations are measured on them.
        layers: module names (default: the model's ``unit_layers``, else its activation modules, as `analyze`).
        keep: units to keep per layer: a count, a share in (0, 1], or a mapping layer → count/share (layers not
            named keep all their units).
        max_drop: instead of `keep`, the fewest units per layer (each layer compressed alone, by bisection) at
            which accuracy on `eval_inputs` — agreement with the original's predictions without labels — falls by
            at most this much; if the layers compressed together fall by more, their counts are raised together
            until they do not (`_joint`).
        method: ``"merge"`` (fold removed units into the kept ones: exact for linear dependence, and where a
            module between mixes units or channels are coupled, pruning instead, said in ``method_used``) or
            ``"prune"`` (remove by importance).
        importance: ``"ablation"``, ``"magnitude"`` or ``"random"`` (seeded by `seed`): the order of pruning and
            the tie-break of merging.
        labels: class labels of the evaluation inputs (default: those inside them, if any).
        eval_inputs: inputs the table's accuracy and agreement are measured on (default: `inputs`, all of them).
        output: how to pick the scores from the model's output (as in `analyze`).
        spec: how to rebuild the original for `load_compressed` (default: what `create_model` recorded).
        finetune: after compressing, train the smaller model with widthlab's own `fit`: a `TrainConfig`, or a
            number of epochs (a `TrainConfig` with that many epochs and its other defaults); the table then also
            gives ``accuracy_finetuned`` and ``agreement_finetuned`` on the evaluation inputs (NaN without it), and
            `model` is the fine-tuned one. Needs `finetune_data`, a `widthlab.data.Splits` (its train split is
            trained on, its val split evaluated per epoch).

    Example: a 4x mlp merged to a quarter of its units, checked on 200 inputs:
        >>> small = compress(create_model("mlp", 4.0, input_dim=10, seed=0), x, keep=0.25)
        >>> small.model.fc1
        Linear(in_features=10, out_features=128, bias=True)
        >>> small.table[["layer", "units_before", "units_after", "method_used", "params_before", "params_after"]]
           layer  units_before  units_after method_used  params_before  params_after
        0  relu1           512          128       merge           6658          1666
    """
    if method not in METHODS:
        raise WidthlabError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    if importance not in select.IMPORTANCES:
        raise WidthlabError(f"unknown importance {importance!r}; valid: {', '.join(select.IMPORTANCES)}")
    if (keep is None) == (max_drop is None):
        raise WidthlabError("compress needs exactly one of keep= (units to keep) and max_drop= (the largest "
                            "accuracy/agreement drop allowed)")
    if max_drop is not None and (isinstance(max_drop, bool) or not isinstance(max_drop, (int, float))
                                 or not 0 <= max_drop <= 1):
        raise WidthlabError(f"max_drop must be a number in [0, 1] (a share of examples), got {max_drop!r}")
    check_positive_int("batch_size", batch_size)
    check_positive_int("max_examples", max_examples, optional=True)
    tuning = _finetune_config(finetune, finetune_data)
    for recognises, special in SPECIAL:  # HF transformers: MLP blocks found by name, one intermediate size
        if recognises(model):
            if tuning is not None:
                raise WidthlabError("finetune= is not supported for HF transformers models here; fine-tune the "
                                    "compressed model with your own trainer (its config is updated for "
                                    "from_pretrained)")
            return special(model, inputs, layers, keep=keep, max_drop=max_drop, method=method,
                           importance=importance, labels=labels, eval_inputs=eval_inputs,
                           max_examples=max_examples, batch_size=batch_size, output=output, seed=seed)
    if layers is None:
        # the layers `analyze` measures by default: the model's unit_layers, else its activation outputs
        names = default_layers(model, inputs, mask=None)
    else:
        names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise WidthlabError("no layers given; name at least one module of the model")
    named(model, names)  # unknown names: one line listing the valid ones
    saved_spec = _model_spec(model, spec)

    original = model
    work = copy.deepcopy(model).eval()
    graph = structure.trace(work)
    position = {node.target: i for i, node in enumerate(graph.nodes) if node.op == "call_module"}
    paths = [structure.find_path(work, graph, name) for name in names]
    structure.check_paths(paths)
    paths.sort(key=lambda p: position.get(p.producer, 0))
    units = {p.layer: p.units for p in paths}
    coupled = [p for p in paths if p.coupled]
    tp = _torch_pruning() if coupled else None
    if coupled and tp is None:
        raise WidthlabError(f"layer(s) {', '.join(repr(p.layer) for p in coupled)} have channels coupled to other "
                            f"layers ({coupled[0].coupled}); shrinking them needs Torch-Pruning: {EXTRA}")

    was_training = original.training
    original.eval()
    try:
        calibration = _collect(work, inputs, max_examples, batch_size)
        evaluation = calibration if eval_inputs is None and max_examples is None else \
            _collect(work, inputs if eval_inputs is None else eval_inputs, None, batch_size)
        labels_ = _labels(evaluation, labels)
        reference = _predict(work, evaluation, output)
        calib_labels = [b.labels for b in calibration]
        use_labels = all(y is not None for y in calib_labels) and labels_[0] is not None
        ref_calib = _predict(work, calibration, output)
        targets = [y.cpu() if use_labels else r for y, r in zip(calib_labels, ref_calib)]
        accuracy_before, _ = _scores(reference, reference, labels_)
        params_before = parameter_count(work)
        flops_before = flops_per_example(work, calibration[0])
        base = 1.0 if labels_[0] is None else accuracy_before

        run = _Run(method, importance, calibration, targets, output, seed, tp,
                   _coupled_owners(work, paths, calibration[0], tp) if coupled else {})
        if keep is not None:
            counts = _counts(names, keep, units)
        else:
            counts = {p.layer: _search(run, work, p, evaluation, reference, labels_, float(max_drop), base)
                      for p in paths}
            counts = {layer: counts[run.owners.get(layer, layer)] for layer in counts}
        for path in paths:
            owner = run.owners.get(path.layer, path.layer)
            if counts[path.layer] != counts[owner]:
                raise WidthlabError(f"layers {owner!r} and {path.layer!r} share their channels (coupled through "
                                    f"residual adds) but would keep {counts[owner]} and {counts[path.layer]} units; "
                                    "give them the same keep")

        if max_drop is not None and len(paths) > 1:
            counts = _joint(run, work, paths, counts, evaluation, reference, labels_, float(max_drop), base)
        work, kept, used = _shrink(run, work, paths, counts)
        work.eval()
        accuracy_after, agreement = _scores(_predict(work, evaluation, output), reference, labels_)
        tuned_accuracy = tuned_agreement = math.nan
        if tuning is not None:
            from widthlab.train import fit

            fit(work, finetune_data, tuning)
            work.eval()
            tuned_accuracy, tuned_agreement = _scores(_predict(work, evaluation, output), reference, labels_)
    finally:
        original.train(was_training)

    params_after = parameter_count(work)
    flops_after = flops_per_example(work, calibration[0])
    rows = [dict(layer=p.layer, units_before=units[p.layer], units_after=len(kept[p.layer]),
                 method_used=used[p.layer], importance=importance, params_before=params_before,
                 params_after=params_after, flops_before=flops_before, flops_after=flops_after,
                 accuracy_before=accuracy_before, accuracy_after=accuracy_after,
                 agreement=agreement, accuracy_finetuned=tuned_accuracy, agreement_finetuned=tuned_agreement)
            for p in paths]
    return Compressed(work, kept, pd.DataFrame(rows, columns=COLUMNS), saved_spec, units)


def _finetune_config(finetune, data):
    """The `TrainConfig` `compress` fine-tunes with (None: no fine-tuning), or one line saying what is wrong."""
    if finetune is None:
        if data is not None:
            raise WidthlabError("finetune_data= was given without finetune= (a TrainConfig or a number of epochs)")
        return None
    from widthlab.data import Splits
    from widthlab.train import TrainConfig

    if isinstance(finetune, bool) or not isinstance(finetune, (int, TrainConfig)) or \
            (isinstance(finetune, int) and finetune < 1):
        raise WidthlabError(f"finetune must be a TrainConfig or a number of epochs >= 1, got {finetune!r}")
    if not isinstance(data, Splits):
        raise WidthlabError(f"finetune= needs finetune_data=, a widthlab.data.Splits (train, val and test splits; "
                            f"e.g. widthlab.load_data(...)), got {type(data).__name__}")
    return TrainConfig(epochs=finetune) if isinstance(finetune, int) else finetune


# Loading --------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def fit_to_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Resize `model`'s Linear, Conv and BatchNorm modules (in place) to the shapes of a compressed `state`, adding
    a bias where the state has one the module lacks (merging adds it); other modules must already fit."""
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        weight = state.get(f"{prefix}weight")
        if isinstance(module, structure.WEIGHTS) and weight is not None:
            module.weight = nn.Parameter(torch.empty_like(weight, dtype=module.weight.dtype))
            if isinstance(module, nn.Linear):
                module.out_features, module.in_features = weight.shape
            else:
                module.out_channels, module.in_channels = weight.shape[0], weight.shape[1]
            bias = state.get(f"{prefix}bias")
            if bias is not None:
                module.bias = nn.Parameter(torch.empty_like(bias, dtype=module.weight.dtype))
        elif isinstance(module, structure.NORMS):
            mean = state.get(f"{prefix}running_mean", weight)
            if mean is None:
                continue
            n = len(mean)
            module.num_features = n
            if module.weight is not None:
                module.weight = nn.Parameter(torch.empty(n, dtype=module.weight.dtype))
                module.bias = nn.Parameter(torch.empty(n, dtype=module.bias.dtype))
            if module.running_mean is not None:
                module.running_mean = torch.empty(n, dtype=module.running_mean.dtype)
                module.running_var = torch.empty(n, dtype=module.running_var.dtype)
    return model


def load_compressed(path: str | os.PathLike, build: Callable[[], nn.Module] | nn.Module | None = None) -> Compressed:
    """The `Compressed` model saved by `Compressed.save`, rebuilt without running any code from the file.

    The original is built from the saved spec (a zoo model; a ``module:function`` one is not imported) or by
    `build` (a function returning the original, uncompressed model, or that model itself), resized to the saved
    weights and loaded with them. The table is not saved (it describes the data it was measured on): the result's
    table is empty.
    """
    path = Path(path)
    if not path.is_file():
        raise WidthlabError(f"compressed checkpoint {str(path)!r} does not exist")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise WidthlabError(f"{str(path)!r} is not a compressed checkpoint that loads with weights_only=True (what "
                            f"widthlab requires, so that loading runs no code): {type(exc).__name__}: {first}") \
            from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise WidthlabError(f"{str(path)!r} is not a widthlab compressed checkpoint (expected format {FORMAT!r})")
    state, kept, spec = saved.get("state"), saved.get("kept"), saved.get("spec")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()) or \
            not isinstance(kept, dict) or not all(isinstance(v, torch.Tensor) for v in kept.values()):
        raise WidthlabError(f"compressed checkpoint {str(path)!r} is damaged (its state or kept indices are not "
                            "tensors); was it edited?")
    if build is not None:
        model = build if isinstance(build, nn.Module) else build()
        if not isinstance(model, nn.Module):
            raise WidthlabError(f"build must return the original nn.Module, got {type(model).__name__}")
        model = copy.deepcopy(model)
    elif spec is None:
        raise WidthlabError(f"{str(path)!r} holds a model that is not from widthlab's zoo; pass build= (a function "
                            "returning the original, uncompressed model) to load_compressed")
    else:
        from widthlab.study.build import build_model

        model = build_model(spec["model"], spec["width"], num_classes=spec.get("num_classes"), import_code=False)
    fit_to_state(model, state)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise WidthlabError(f"the weights in {str(path)!r} do not fit the rebuilt model: "
                            f"{str(exc).splitlines()[0]}") from None
    units = {str(k): int(v) for k, v in (saved.get("units") or {}).items()}
    return Compressed(model.eval(), {str(k): v for k, v in kept.items()}, pd.DataFrame(columns=COLUMNS),
                      spec, units)


def describe(spec: Mapping[str, Any] | None) -> str:
    """A spec in a few words, for the CLI."""
    if spec is None:
        return "a model not from the zoo"
    return f"{spec['model'].get('name')} at width {spec['width']:g}"
