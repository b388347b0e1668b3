"""`compress` for HF transformers: the intermediate units of every MLP block, removed for real.

A HF model (``transformers.PreTrainedModel``) is not traced with torch.fx; its MLP blocks are found by name:

- GPT-2: ``….mlp.c_fc`` → ``….mlp.c_proj`` (``Conv1D`` modules, whose weight is (in, out));
- BERT and its kin (ViT, RoBERTa, …): ``….intermediate.dense`` → ``….output.dense`` (``nn.Linear``);
- ``fc1`` → ``fc2`` of one module (``nn.Linear``; OPT, CLIP).

A unit is an intermediate channel after the activation. Its activity is read at the consumer's input by a forward
pre-hook, one row per real token (the attention mask's padded positions are left out), so the merge regression
is on exactly what the consumer reads and, the consumer being linear, the fold is exact for units that are affine
functions of the kept ones. The model between producer and consumer must act on each unit alone (an activation,
dropout), as in every model named above.

A HF config holds one intermediate size for all layers (GPT-2's ``n_inner``, BERT's ``intermediate_size``, OPT's
``ffn_dim``), so every MLP block keeps the same number of units and the config is updated: the compressed model's
``save_pretrained`` → ``from_pretrained`` gives it back with the same outputs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from widthlab.compress import select
from widthlab.compress.core import (
    COLUMNS,
    SPECIAL,
    Compressed,
    _collect,
    _count,
    _labels,
    flops_per_example,
    is_hf,
    parameter_count,
)
from widthlab.errors import WidthlabError
from widthlab.measure.capture import unit_rows
from widthlab.measure.inputs import DEFAULT_MASK, Batch, select_scores, valid_positions

CONFIG_FIELDS = ("n_inner", "intermediate_size", "ffn_dim")  # where a HF config holds the intermediate size
ABLATION_TOKENS = 4096  # token positions per stacked forward pass of single-unit ablation copies
KINDS = "GPT-2's mlp.c_fc → mlp.c_proj, BERT's intermediate.dense → output.dense, fc1 → fc2"


@dataclass
class MlpPair:
    """One MLP block: `layer` (the name in the table and `kept`: the producer's), producer, consumer, unit count,
    and the other names a caller may give for it (the block, its activation module)."""

    layer: str
    producer: str
    consumer: str
    units: int
    aliases: tuple[str, ...]


def _is_conv1d(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


def _weight_oi(module: nn.Module) -> torch.Tensor:
    """The weight as (out, in): a Linear's as it is, a Conv1D's transposed."""
    return module.weight.t() if _is_conv1d(module) else module.weight


def _dense(module: object) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Module) and _is_conv1d(module))


def mlp_pairs(model: nn.Module) -> list[MlpPair]:
    """The MLP blocks of a HF model, in module order (module doc)."""
    pairs = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        found = None
        if _dense(getattr(module, "c_fc", None)) and _dense(getattr(module, "c_proj", None)):
            found = ("c_fc", "c_proj", "act")
        elif _dense(getattr(getattr(module, "intermediate", None), "dense", None)) and \
                _dense(getattr(getattr(module, "output", None), "dense", None)):
            found = ("intermediate.dense", "output.dense", "intermediate.intermediate_act_fn")
        elif isinstance(getattr(module, "fc1", None), nn.Linear) and isinstance(getattr(module, "fc2", None),
                                                                                nn.Linear):
            found = ("fc1", "fc2", "activation_fn")
        if found is None:
            continue
        producer, consumer = prefix + found[0], prefix + found[1]
        modules = dict(module.named_modules())
        units = _weight_oi(modules[found[0]]).shape[0]
        if _weight_oi(modules[found[1]]).shape[1] != units:
            continue  # not a producer → consumer pair (e.g. an attention output beside its block)
        aliases = [name, producer.rsplit(".", 1)[0]] if found[0] == "intermediate.dense" else [name]
        if isinstance(modules.get(found[2]), nn.Module):
            aliases.append(prefix + found[2])
        pairs.append(MlpPair(producer, producer, consumer, units, tuple(dict.fromkeys(a for a in aliases if a))))
    return pairs


def _config_field(config: object, units: int) -> str:
    for name in CONFIG_FIELDS:
        if name in getattr(config, "__dict__", {}) or hasattr(type(config), name):
            value = getattr(config, name, None)
            if value == units or (name == "n_inner" and value is None
                                  and 4 * getattr(config, "n_embd", 0) == units):
                return name
    raise WidthlabError(f"{type(config).__name__} holds the MLP's intermediate size ({units}) in none of "
                        f"{', '.join(CONFIG_FIELDS)}; widthlab cannot update it, so the compressed model would not "
                        "load with from_pretrained")


def _resolve(pairs: list[MlpPair], names) -> list[MlpPair]:
    """The pairs `names` (a name or names of producers, blocks or activations) stand for; every pair must be named
    (one intermediate size for all layers)."""
    by_name = {}
    for pair in pairs:
        for alias in (pair.layer, pair.consumer, *pair.aliases):
            by_name.setdefault(alias, pair)
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise WidthlabError(f"layer(s) {', '.join(map(repr, unknown))} are not MLP blocks of this HF model; its MLP "
                            f"layers: {', '.join(p.layer for p in pairs)}")
    chosen = {by_name[n].layer for n in names}
    missing = [p.layer for p in pairs if p.layer not in chosen]
    if missing:
        raise WidthlabError(f"a HF config holds one intermediate size for all layers, so widthlab compresses every "
                            f"MLP block of a HF model or none; layers leaves out {', '.join(map(repr, missing))} "
                            "(pass layers=None)")
    return pairs


def _common_count(pairs: list[MlpPair], keep) -> int:
    """The one unit count every MLP block keeps; per-layer counts that differ are one error saying why."""
    if not isinstance(keep, Mapping):
        return _count(pairs[0].layer, keep, pairs[0].units)
    by_name = {alias: p for p in pairs for alias in (p.layer, p.consumer, *p.aliases)}
    unknown = [k for k in keep if k not in by_name]
    if unknown:
        raise WidthlabError(f"keep names layer(s) {', '.join(map(repr, unknown))} that are not MLP blocks of this HF "
                            f"model; its MLP layers: {', '.join(p.layer for p in pairs)}")
    counts = {by_name[k].layer: _count(k, v, by_name[k].units) for k, v in keep.items()}
    counts = {p.layer: counts.get(p.layer, p.units) for p in pairs}
    if len(set(counts.values())) > 1:
        shown = ", ".join(f"{layer!r}: {k}" for layer, k in counts.items())
        raise WidthlabError(f"keep differs between layers ({shown}), but a HF config holds one intermediate size for "
                            "all layers (n_inner, intermediate_size), so the model could not be saved and loaded "
                            "with from_pretrained; give one count or share for every layer")
    return next(iter(counts.values()))


# Predictions (one per example, or one per real token) ---------------------------------------------------------------

def _predictions(scores: torch.Tensor, batch: Batch) -> torch.Tensor:
    """(N,) predictions: one per example for (B, classes) scores, one per real token for (B, T, V) ones."""
    valid = valid_positions(scores, batch)
    preds = scores.argmax(-1)
    return preds if valid is None else preds[valid]


@torch.no_grad()
def _predict(model: nn.Module, batches_: list[Batch], output) -> list[torch.Tensor]:
    return [_predictions(select_scores(b.run(model), output), b).cpu() for b in batches_]


def _scores(preds: list[torch.Tensor], reference: list[torch.Tensor], labels: list) -> tuple[float, float]:
    """``(accuracy or NaN, agreement)``: accuracy where the labels are one per prediction (sequence labels of a
    classifier; a language model's per-token predictions have no such labels)."""
    p, r = torch.cat(preds), torch.cat(reference)
    agreement = float((p == r).double().mean())
    if labels[0] is None or len(torch.cat(labels)) != len(p):
        return math.nan, agreement
    return float((p == torch.cat(labels).cpu()).double().mean()), agreement


# Statistics at the consumer's input ---------------------------------------------------------------------------------

def mlp_moments(model: nn.Module, consumer: nn.Module, units: int, calibration: list[Batch]) -> select.Moments:
    """Float64 moments of the consumer's input, one row per real token (the batch's mask), on `calibration`."""
    moments = select.Moments(units)
    current: dict = {}

    def pre(mod, args):
        moments.add(unit_rows(args[0], "the MLP consumer's input", -1, current["mask"]))

    handle = consumer.register_forward_pre_hook(pre)
    try:
        with torch.no_grad():
            for batch in calibration:
                current["mask"] = batch.mask
                batch.run(model)
    finally:
        handle.remove()
    return moments


@torch.no_grad()
def ablation_effects(model: nn.Module, consumer: nn.Module, units: int, calibration: list[Batch],
                     targets: list[torch.Tensor], output=None) -> tuple[np.ndarray, np.ndarray]:
    """``(drop, change)`` per unit when that unit alone is zeroed at the consumer's input: the share of
    predictions (per example or per real token) that stop matching their target minus those that start to, and
    the mean squared change of the scores at those positions. Copies run stacked along the batch."""
    drop, change, count = np.zeros(units), np.zeros(units), 0
    state: dict = {}

    def pre(mod, args):
        if "mask" not in state:
            return None
        x, mask = args[0], state["mask"]
        k = mask.shape[0]
        shaped = x.reshape(k, -1, *x.shape[1:])
        zeroed = shaped * mask.view(k, *[1] * (shaped.dim() - 2), units).to(x.dtype)
        return (zeroed.reshape(x.shape), *args[1:])

    handle = consumer.register_forward_pre_hook(pre)
    try:
        for batch, target in zip(calibration, targets):
            state.pop("mask", None)
            clean = select_scores(batch.run(model), output)
            target = target.to(clean.device)
            valid = valid_positions(clean, batch)
            base = (_predictions(clean, batch) == target).sum().item()
            positions = clean.shape[0] * (clean.shape[1] if clean.dim() == 3 else 1)
            step = max(1, min(units, ABLATION_TOKENS // max(positions, 1)))
            for lo in range(0, units, step):
                idx = torch.arange(lo, min(units, lo + step))
                mask = torch.ones(len(idx), units, device=clean.device)
                mask[torch.arange(len(idx)), idx] = 0
                state["mask"] = mask
                stacked = select._repeat(batch, len(idx)).run(model)
                state.pop("mask")
                scores = select_scores(stacked, output).reshape(len(idx), *clean.shape)
                diff = (scores - clean).double() ** 2
                if valid is not None:
                    scores, diff = scores[:, valid], diff[:, valid]
                correct = (scores.argmax(-1) == target).sum(1).double().cpu().numpy()
                drop[idx.numpy()] += base - correct
                change[idx.numpy()] += diff.sum((1, 2)).cpu().numpy()
            count += len(target)
    finally:
        handle.remove()
    return drop / max(count, 1), change / max(count, 1)


# Shrinking ------------------------------------------------------------------------------------------------------------

def _param(tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor.detach().clone().contiguous())


@torch.no_grad()
def fold(consumer: nn.Module, kept: np.ndarray, removed: np.ndarray, coef: np.ndarray, const: np.ndarray) -> None:
    """Fold the removed units into the kept ones of `consumer` (Linear or Conv1D), in float64: W[:, s] += Σ_r
    coef[s, r] W[:, r], bias += Σ_r const[r] W[:, r] (`const` zero for a consumer without a bias)."""
    w = _weight_oi(consumer).detach().to(torch.float64).clone()  # (out, units)
    w_removed = w[:, torch.from_numpy(removed).to(w.device)]
    w[:, torch.from_numpy(kept).to(w.device)] += w_removed @ torch.from_numpy(coef).to(w.device).T
    shift = w_removed @ torch.from_numpy(const).to(w.device)
    consumer.weight.copy_((w.T if _is_conv1d(consumer) else w).to(consumer.weight.dtype))
    if consumer.bias is not None:
        consumer.bias.add_(shift.to(consumer.bias.dtype))
    elif bool(shift.abs().max() > 0):
        raise WidthlabError("internal: a constant folded into a consumer without a bias")


@torch.no_grad()
def shrink_pair(producer: nn.Module, consumer: nn.Module, keep: torch.Tensor) -> None:
    """Keep only the units `keep` (sorted indices): the producer's out-features and bias, the consumer's
    in-features."""
    keep = keep.to(device=producer.weight.device, dtype=torch.long)
    if _is_conv1d(producer):
        producer.weight = _param(producer.weight[:, keep])
        producer.nf = len(keep)
    else:
        producer.weight = _param(producer.weight[keep])
        producer.out_features = len(keep)
    if producer.bias is not None:
        producer.bias = _param(producer.bias[keep])
    if _is_conv1d(consumer):
        consumer.weight = _param(consumer.weight[keep])
        consumer.nx = len(keep)
    else:
        consumer.weight = _param(consumer.weight[:, keep])
        consumer.in_features = len(keep)


def _rank(importance: str, model: nn.Module, producer: nn.Module, consumer: nn.Module, units: int,
          calibration: list[Batch], targets: list[torch.Tensor], output, seed: int) -> np.ndarray:
    if importance == "ablation":
        return select.importance_rank(*ablation_effects(model, consumer, units, calibration, targets, output))
    if importance == "magnitude":
        return select.importance_rank(_weight_oi(producer).detach().abs().sum(1).double().cpu().numpy())
    draws = torch.rand(units, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
    return select.importance_rank(draws.numpy())


@dataclass
class _Run:
    method: str
    importance: str
    calibration: list[Batch]
    targets: list[torch.Tensor]
    output: object
    seed: int
    field: str


def shrink(run: _Run, model: nn.Module, pairs: list[MlpPair], k: int):
    """``(smaller copy of model, kept, method_used)``: every block keeps `k` units, in forward order, each chosen
    and folded on the model with the blocks before it already compressed; the config says `k`."""
    work = copy.deepcopy(model)
    kept: dict[str, torch.Tensor] = {}
    used: dict[str, str] = {}
    for pair in pairs:
        if k == pair.units:
            kept[pair.layer], used[pair.layer] = torch.arange(pair.units), "kept all"
            continue
        modules = dict(work.named_modules())
        producer, consumer = modules[pair.producer], modules[pair.consumer]
        rank = _rank(run.importance, work, producer, consumer, pair.units, run.calibration, run.targets,
                     run.output, run.seed)
        if run.method == "merge":
            moments = mlp_moments(work, consumer, pair.units, run.calibration)
            order = select.merge_order(moments.cov, rank)
            keep, removed = np.sort(order[:k]), np.sort(order[k:])
            # a consumer without a bias keeps none (from_pretrained would drop one): regress through the origin
            coef, const = select.regression(moments, keep, removed, constant=consumer.bias is not None)
            fold(consumer, keep, removed, coef, const)
        else:
            keep = np.sort(select.prune_order(rank)[:k])
        kept[pair.layer] = torch.from_numpy(keep)
        used[pair.layer] = run.method
        shrink_pair(producer, consumer, kept[pair.layer])
    setattr(work.config, run.field, int(k))
    return work.eval(), kept, used


def compress_hf(model: nn.Module, inputs, layers, *, keep, max_drop, method: str, importance: str, labels,
                eval_inputs, max_examples, batch_size: int, output, seed: int) -> Compressed:
    """`compress` for a HF model (module doc); the arguments are `compress`'s, already checked."""
    work = copy.deepcopy(model).eval()
    pairs = mlp_pairs(work)
    if not pairs:
        raise WidthlabError(f"{type(model).__name__} has no MLP block widthlab knows how to shrink ({KINDS})")
    if layers is not None:
        _resolve(pairs, layers)
    sizes = {p.units for p in pairs}
    if len(sizes) > 1:
        raise WidthlabError(f"the MLP blocks of {type(model).__name__} have different intermediate sizes "
                            f"({sorted(sizes)}), unlike what its config describes")
    field = _config_field(work.config, pairs[0].units)
    count = _common_count(pairs, keep) if keep is not None else None

    was_training = model.training
    model.eval()
    try:
        calibration = _collect(work, inputs, max_examples, batch_size, mask=DEFAULT_MASK)
        evaluation = calibration if eval_inputs is None and max_examples is None else \
            _collect(work, inputs if eval_inputs is None else eval_inputs, None, batch_size, mask=DEFAULT_MASK)
        labels_ = _labels(evaluation, labels)
        reference = _predict(work, evaluation, output)
        ref_calib = _predict(work, calibration, output)
        calib_labels = [b.labels for b in calibration]
        use_labels = all(y is not None and len(y) == len(r) for y, r in zip(calib_labels, ref_calib)) \
            and labels_[0] is not None
        targets = [y.cpu() if use_labels else r for y, r in zip(calib_labels, ref_calib)]
        accuracy_before, _ = _scores(reference, reference, labels_)
        base = 1.0 if math.isnan(accuracy_before) else accuracy_before
        run = _Run(method, importance, calibration, targets, output, seed, field)

        def metric(m: nn.Module) -> float:
            accuracy, agreement = _scores(_predict(m, evaluation, output), reference, labels_)
            return agreement if math.isnan(accuracy) else accuracy

        if count is None:  # the fewest units every block keeps within max_drop: bisection on the common count
            lo, hi = 0, pairs[0].units
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if base - metric(shrink(run, work, pairs, mid)[0]) <= float(max_drop) + 1e-12:
                    hi = mid
                else:
                    lo = mid
            count = hi
        small, kept, used = shrink(run, work, pairs, count)
        accuracy_after, agreement = _scores(_predict(small, evaluation, output), reference, labels_)
    finally:
        model.train(was_training)

    params_before, params_after = parameter_count(work), parameter_count(small)
    flops_before, flops_after = flops_per_example(work, calibration[0]), flops_per_example(small, calibration[0])
    rows = [dict(layer=p.layer, units_before=p.units, units_after=len(kept[p.layer]), method_used=used[p.layer],
                 importance=importance, params_before=params_before, params_after=params_after,
                 flops_before=flops_before, flops_after=flops_after, accuracy_before=accuracy_before, accuracy_after=accuracy_after, agreement=agreement) for p in pairs]
    return Compressed(small, kept, pd.DataFrame(rows, columns=COLUMNS), None, {p.layer: p.units for p in pairs})


SPECIAL.append((is_hf, compress_hf))  # `compress` routes HF transformers here (core cannot import this module)
