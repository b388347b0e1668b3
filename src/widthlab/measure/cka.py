"""`cka`: minibatch linear CKA between the layers of two models (or of one model with itself), streamed.

Centred kernel alignment (Kornblith et al. 2019) compares two layers through the similarity of their examples:
each layer gives a Gram matrix K = X Xᵀ over n examples (X: one row of activations per example), and

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L)).

It is invariant to an orthogonal transform and an isotropic scaling of either layer's units, so it can compare
layers of different widths, or a network with its wider version, where the paper's unit-wise |r| cannot.

**Minibatch estimator** (Nguyen, Raghu & Kornblith 2021). Per batch b of n examples, each layer's Gram matrix
over the batch, the HSIC terms of every layer pair, accumulated in float64; at the end

    CKA = mean_b HSIC_b(K, L) / sqrt(mean_b HSIC_b(K, K) · mean_b HSIC_b(L, L)).

Memory is O(layers × n²) for a batch of n, never O(examples²), and each model runs ONE forward pass per batch
for all its layers (both models see the same batch). HSIC_b is the unbiased estimator of Song et al. 2012
(`debiased=True`, the default):

    HSIC₁(K, L) = [tr(K̃L̃) + 1ᵀK̃1 · 1ᵀL̃1 / ((n−1)(n−2)) − 2/(n−2) · 1ᵀK̃L̃1] / (n(n−3)),

K̃, L̃ the Gram matrices with their diagonals set to zero; it needs n ≥ 4. ``debiased=False`` gives the classic
biased estimator HSIC₀ = tr(K H L H)/(n−1)² (H = I − 11ᵀ/n), whose CKA of unrelated layers is positive and
grows with their widths at a fixed n (p/(p+n) for two independent Gaussian layers of p units).

**What an example's activation vector is** (the ``reduction_a``/``reduction_b`` columns):

- ``example``: an (N, C) output, its C units;
- ``flatten`` (``spatial="flatten"``, default): a channel-first map (N, C, *spatial) (or a channels-last
  (N, H, W, C) map) flattened whole, C·H·W numbers per example, as Kornblith et al. and Nguyen et al. do;
- ``spatial_mean`` (``spatial="mean"``): the map averaged over positions, C numbers per example;
- ``token_mean`` (``tokens="mean"``, default): a token layer (N, T, C) (units on the last axis; with an attention
  mask, any output whose other axes match the mask) averaged over its real tokens, C numbers per example;
- ``tokens`` (``tokens="each"``): every real token is a row of its own (the engine's rows, `unit_rows`), so a
  batch's n is its number of real tokens; every layer compared must then give one row per real token.

A batch with fewer than 4 rows cannot be estimated: a ``batch_size`` below 4, or any batch but the last with
fewer than 4 rows, is a WidthlabError; a last batch with fewer than 4 rows (e.g. 1,001 examples in batches of
250) is dropped with a warning, and the ``examples`` column says how many examples were used. Every batch counts
equally in the means above, as in Nguyen et al.

The feature-space form (``form="features"``, `feature_hsic`) computes the same HSIC_b from the (n, d) features
without an n × n matrix: cheaper in memory and time when a layer has fewer units d than a batch has rows n.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import pandas as pd
import torch
from torch import nn

from widthlab.errors import WidthlabError, check_positive_int
from widthlab.measure.capture import check_unit_axis, default_layers, evaluating, layer_axes, layer_hooks
from widthlab.measure.hooks import resolve_modules
from widthlab.measure.inputs import DEFAULT_MASK, Batch, Inputs, batches
from widthlab.measure.redundancy import all_finite
from widthlab.threads import torch_blas_threads

MIN_ROWS = 4  # the unbiased HSIC estimator divides by n(n-3) and (n-2)
CKA_COLUMNS = ("layer_a", "layer_b", "cka", "examples", "rows", "batches", "estimator", "reduction_a",
               "reduction_b")
SPATIAL = ("flatten", "mean")
TOKENS = ("mean", "each")
FORMS = ("gram", "features")
_GRAM_BLOCK = 1 << 22  # elements of activations cast to float64 at a time while a Gram matrix is summed


def gram(features: torch.Tensor) -> torch.Tensor:
    """(n, n) float64 Gram matrix X Xᵀ of (n, d) features, summed over blocks of columns so that at most
    `_GRAM_BLOCK` activations are held in float64 at once (a conv map flattened whole has d in the 100,000s)."""
    n, d = features.shape
    step = max(1, _GRAM_BLOCK // max(n, 1))
    out = torch.zeros(n, n, dtype=torch.float64, device=features.device)
    for lo in range(0, d, step):
        block = features[:, lo:lo + step].to(torch.float64)
        out.addmm_(block, block.T)
    return out


def hsic_terms(grams_a: torch.Tensor, grams_b: torch.Tensor, debiased: bool) -> torch.Tensor:
    """(La, Lb) HSIC estimates of every pair of (La, n, n) and (Lb, n, n) Gram matrices of one batch (module doc):
    Song et al.'s unbiased HSIC₁ when `debiased`, else the biased tr(KHLH)/(n−1)²."""
    n = grams_a.shape[-1]
    if debiased:
        ka, kb = _zero_diagonal(grams_a), _zero_diagonal(grams_b)
        trace = ka.flatten(1) @ kb.flatten(1).T  # tr(K̃L̃) = Σ K̃ᵢⱼ L̃ᵢⱼ for symmetric K̃, L̃
        sums = ka.sum((1, 2))[:, None] * kb.sum((1, 2))[None, :] / ((n - 1) * (n - 2))
        cross = ka.sum(2) @ kb.sum(2).T  # 1ᵀK̃L̃1 = (K̃1)·(L̃1)
        return (trace + sums - 2 * cross / (n - 2)) / (n * (n - 3))
    ca, cb = _centre(grams_a), _centre(grams_b)
    return ca.flatten(1) @ cb.flatten(1).T / (n - 1) ** 2  # tr(KHLH) = tr(HKH · HLH), H idempotent


def self_hsic(grams: torch.Tensor, debiased: bool) -> torch.Tensor:
    """(L,) HSIC(K, K) of each of (L, n, n) Gram matrices (the diagonal of `hsic_terms` without its other pairs)."""
    n = grams.shape[-1]
    if debiased:
        k = _zero_diagonal(grams)
        rows = k.sum(2)
        return ((k * k).sum((1, 2)) + k.sum((1, 2)) ** 2 / ((n - 1) * (n - 2))
                - 2 * (rows * rows).sum(1) / (n - 2)) / (n * (n - 3))
    c = _centre(grams)
    return (c * c).sum((1, 2)) / (n - 1) ** 2


def feature_hsic(x: torch.Tensor, y: torch.Tensor, debiased: bool) -> float:
    """HSIC of one layer pair from its (n, p) and (n, q) float64 features, without forming an n × n matrix: the
    same estimator as `hsic_terms` on K = X Xᵀ, L = Y Yᵀ (equal to round-off), in O(n·p·q) time and O(p·q) memory
    (the feature-space form: for layers of fewer units than a batch has examples).

    With a = diag K, b = diag L (squared row norms) and sx = Xᵀ1, sy = Yᵀ1: tr(K̃L̃) = ‖XᵀY‖² − a·b,
    1ᵀK̃1 = ‖sx‖² − Σa, K̃1 = X sx − a, so HSIC₁ follows from the module doc's formula; the biased HSIC₀ is
    ‖XcᵀYc‖²/(n−1)² with Xc, Yc the column-centred features."""
    n = x.shape[0]
    if not debiased:
        xc, yc = x - x.mean(0), y - y.mean(0)
        return float((xc.T @ yc).square().sum()) / (n - 1) ** 2
    a, b = x.square().sum(1), y.square().sum(1)
    sx, sy = x.sum(0), y.sum(0)
    trace = float((x.T @ y).square().sum()) - float(a @ b)
    sum_k, sum_l = float(sx @ sx) - float(a.sum()), float(sy @ sy) - float(b.sum())
    cross = float((x @ sx - a) @ (y @ sy - b))
    return (trace + sum_k * sum_l / ((n - 1) * (n - 2)) - 2 * cross / (n - 2)) / (n * (n - 3))


def _zero_diagonal(grams: torch.Tensor) -> torch.Tensor:
    return grams * (1 - torch.eye(grams.shape[-1], dtype=grams.dtype, device=grams.device))


def _centre(grams: torch.Tensor) -> torch.Tensor:
    """H K H of each Gram matrix: its row and column means removed, its grand mean added back."""
    return (grams - grams.mean(1, keepdim=True) - grams.mean(2, keepdim=True)
            + grams.mean((1, 2), keepdim=True))


def example_features(output: object, name: str, axis: int, mask: torch.Tensor | None, spatial: str,
                     tokens: str) -> tuple[torch.Tensor, str]:
    """``((rows, d) features, reduction)`` of one layer output (module doc): one row per example, or per real
    token with ``tokens="each"``. Raises a WidthlabError for NaN/inf activations or a layer that has no token
    axis matching the batch's attention mask."""
    axis = check_unit_axis(output, name, axis)
    out = output.detach()
    if not out.is_floating_point():
        out = out.float()
    if out.dim() == 2:
        features, reduction = out, "example"
    else:
        moved = out.movedim(axis, -1)  # (B, ..., C)
        if mask is not None:
            if tuple(moved.shape[:-1]) != tuple(mask.shape):
                raise WidthlabError(f"layer {name!r} output of shape {tuple(out.shape)} (units on axis {axis}) has "
                                    f"no token axis matching the attention mask {tuple(mask.shape)}; compare token "
                                    "layers (B, T, C), or pass mask=None to count padded positions as tokens")
            token = True
        else:
            token = out.dim() == 3 and axis == 2
        if token and tokens == "each":
            features = moved[mask] if mask is not None else moved.reshape(-1, moved.shape[-1])
            reduction = "tokens"
        elif token:
            real = (torch.ones(moved.shape[:2], dtype=torch.bool, device=moved.device) if mask is None
                    else mask.to(moved.device))
            counts = real.sum(1, keepdim=True)
            if bool((counts == 0).any()):
                raise WidthlabError(f"an example of the batch has no real token (an all-zero attention mask row); "
                                    f"layer {name!r} has no mean over its tokens")
            features = (moved.to(torch.float64) * real[..., None]).sum(1) / counts
            reduction = "token_mean"
        elif spatial == "mean":
            features, reduction = moved.reshape(len(moved), -1, moved.shape[-1]).mean(1), "spatial_mean"
        else:
            features, reduction = out.reshape(len(out), -1), "flatten"  # the order of a row's numbers: no matter
    if not all_finite(features):
        raise WidthlabError(f"layer {name!r} produced NaN or inf activations")
    return features, reduction


class _GramPass:
    """One model's hooks for the whole comparison: per forward pass, each layer's (n, n) Gram matrix (or, in the
    feature form, its (n, d) float64 features) and how its activations were reduced, computed in the hook, so only
    those outlive the pass."""

    def __init__(self, model: nn.Module, names: list[str], axes: dict[str, int], spatial: str, tokens: str,
                 form: str = "gram"):
        self.model, self.names, self.axes = model, names, axes
        self.spatial, self.tokens, self.form = spatial, tokens, form
        self.grams: dict[str, torch.Tensor] = {}
        self.reductions: dict[str, str] = {}
        self.mask: torch.Tensor | None = None

    def hook(self, name: str, output: object) -> None:
        features, reduction = example_features(output, name, self.axes[name], self.mask, self.spatial, self.tokens)
        self.grams[name] = gram(features) if self.form == "gram" else features.to(torch.float64)
        self.reductions[name] = reduction

    def run(self, run, batch: Batch) -> dict[str, torch.Tensor]:
        self.grams.clear()
        self.mask = batch.mask
        with torch.no_grad():
            run(batch)
        return {name: self.grams.pop(name) for name in self.names}


def _moved(model: nn.Module, batch: Batch) -> Batch:
    """`batch` on the model's device, its floating inputs in the model's dtype (`batches`' rule)."""
    return next(batches(model, batch, 1))


@torch_blas_threads
def cka(model_a: nn.Module, model_b: nn.Module | None, inputs: Inputs, layers_a: Sequence[str] | None = None,
        layers_b: Sequence[str] | None = None, *, batch_size: int = 256, debiased: bool = True,
        spatial: str = "flatten", tokens: str = "mean", unit_axis: int | None = None,
        mask: str | int | None = DEFAULT_MASK, form: str = "gram") -> pd.DataFrame:
    """Minibatch linear CKA of every layer of `model_a` with every layer of `model_b`; one row per pair.

    Columns: ``layer_a, layer_b, cka`` (NaN for a layer whose HSIC with itself is not positive, e.g. a constant
    layer), ``examples`` (examples used), ``rows`` (Gram rows summed over batches: the examples, or the real tokens
    with ``tokens="each"``), ``batches``, ``estimator`` (``"debiased"`` or ``"biased"``), ``reduction_a``,
    ``reduction_b`` (what one row of each layer is: ``example``, ``flatten``, ``spatial_mean``, ``token_mean`` or
    ``tokens``; see the module doc).

    Args:
        model_a, model_b: any modules taking the same inputs; `model_b` None (or `model_a` itself) compares
            `model_a` with itself (the layer × layer matrix) from one forward pass per batch.
        inputs: a tensor, a tuple or mapping of tensors, or a Dataset / DataLoader of these
            (`widthlab.measure.inputs`). They are read once, each batch fed to both models in turn, so a
            shuffling DataLoader still gives both models the same examples.
        layers_a, layers_b: module names (default: the layers `analyze` measures, `default_layers`; with
            `model_b` None, `layers_b` defaults to `layers_a`).
        batch_size: examples per batch (default 256; at least 4). Memory grows with its square; one batch
            holding every input gives the full-sample estimator.
        debiased: Song et al.'s unbiased HSIC (default True), else the biased tr(KHLH)/(n−1)².
        spatial: ``"flatten"`` (default) compares conv maps flattened whole, ``"mean"`` averaged over positions.
        tokens: ``"mean"`` (default) one row per example, its real tokens averaged; ``"each"`` one row per real
            token (every layer must then have one row per real token).
        unit_axis: the unit axis of every layer output (default None: by the rule of `widthlab.measure.layout`).
        mask: the attention mask's keyword or position (default ``"attention_mask"``); None ignores masks.
        form: ``"gram"`` (default) sums each batch's (n, n) Gram matrices; ``"features"`` computes the same
            estimate from the layers' (n, d) features (`feature_hsic`), which is cheaper when the layers have fewer
            units d than a batch has rows n (memory O(n·d) per layer instead of O(n²), time O(n·d_a·d_b) per pair).
            Both give the same numbers to round-off.

    Example: a network's layer × layer matrix (1 on its diagonal), and the 1/4x mlp's ``relu1`` against the 1x's:
        >>> net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
        >>> frame = cka(net, None, x)
        >>> frame[["layer_a", "layer_b"]].values.tolist()
        [['1', '1'], ['1', '3'], ['3', '1'], ['3', '3']]
        >>> frame.query("layer_a == layer_b")["cka"].round(6).tolist()
        [1.0, 1.0]
        >>> small = create_model("mlp", 0.25, input_dim=10, seed=1)
        >>> cka(small, model, x, ["relu1"], ["relu1"])["cka"].round(2).tolist()
        [0.77]
    """
    check_positive_int("batch_size", batch_size)
    if batch_size < MIN_ROWS:
        raise WidthlabError(f"batch_size must be at least {MIN_ROWS} for CKA (the unbiased HSIC estimator needs "
                            f"n >= {MIN_ROWS} examples per batch), got {batch_size}")
    if spatial not in SPATIAL:
        raise WidthlabError(f"spatial must be one of {', '.join(map(repr, SPATIAL))}, got {spatial!r}")
    if tokens not in TOKENS:
        raise WidthlabError(f"tokens must be one of {', '.join(map(repr, TOKENS))}, got {tokens!r}")
    if form not in FORMS:
        raise WidthlabError(f"form must be one of {', '.join(map(repr, FORMS))}, got {form!r}")
    if not isinstance(debiased, bool):
        raise WidthlabError(f"debiased must be True or False, got {debiased!r}")
    same = model_b is None or model_b is model_a
    model_b = model_a if model_b is None else model_b
    names_a = default_layers(model_a, inputs, batch_size=batch_size, mask=mask) if layers_a is None \
        else [layers_a] if isinstance(layers_a, str) else list(layers_a)
    if layers_b is None:
        names_b = names_a if same else default_layers(model_b, inputs, batch_size=batch_size, mask=mask)
    else:
        names_b = [layers_b] if isinstance(layers_b, str) else list(layers_b)
    resolve_modules(model_a, names_a)
    resolve_modules(model_b, names_b)

    source = batches(nn.Module(), inputs, batch_size, mask=mask)  # on the CPU, uncast: each model casts its own
    first = next(source, None)
    if first is None or len(first) == 0:
        raise WidthlabError("inputs yielded no examples")
    union_a = list(dict.fromkeys([*names_a, *names_b])) if same else names_a
    passes = [_GramPass(model_a, union_a, layer_axes(model_a, _moved(model_a, first), union_a, unit_axis),
                        spatial, tokens, form)]
    if not same:
        passes.append(_GramPass(model_b, names_b, layer_axes(model_b, _moved(model_b, first), names_b, unit_axis),
                                spatial, tokens, form))

    hsic_ab = torch.zeros(len(names_a), len(names_b), dtype=torch.float64)
    hsic_aa = torch.zeros(len(names_a), dtype=torch.float64)
    hsic_bb = torch.zeros(len(names_b), dtype=torch.float64)
    examples = rows = used = 0
    with evaluating(model_a), evaluating(model_b), \
            layer_hooks(model_a, union_a, passes[0].hook) as run_a, \
            _maybe_hooks(model_b, names_b, passes[-1].hook, not same) as run_b:
        batch = first
        while batch is not None:
            following = next(source, None)
            grams_a = passes[0].run(run_a, _moved(model_a, batch))
            grams_b = grams_a if same else passes[1].run(run_b, _moved(model_b, batch))
            listed_a = [grams_a[name] for name in _same_rows(grams_a, names_a, grams_b, names_b)]
            listed_b = [grams_b[name].to(listed_a[0].device) for name in names_b]
            n = listed_a[0].shape[0]
            if n < MIN_ROWS:
                if following is not None:
                    raise WidthlabError(f"a batch of {n} rows (examples, or real tokens with tokens='each') is too "
                                        f"small for CKA: every batch but the last needs at least {MIN_ROWS}")
                if used == 0:
                    raise WidthlabError(f"CKA needs at least {MIN_ROWS} examples (or real tokens with "
                                        f"tokens='each'); the inputs gave {n}")
                warnings.warn(f"cka: the last batch ({n} rows) is dropped: the unbiased HSIC estimator needs at "
                              f"least {MIN_ROWS}", stacklevel=3)
                break
            if form == "gram":
                ga, gb = torch.stack(listed_a), torch.stack(listed_b)
                hsic_ab += hsic_terms(ga, gb, debiased).cpu()
                hsic_aa += self_hsic(ga, debiased).cpu()
                hsic_bb += self_hsic(gb, debiased).cpu()
            else:
                hsic_ab += torch.tensor([[feature_hsic(x, y, debiased) for y in listed_b] for x in listed_a],
                                        dtype=torch.float64)
                hsic_aa += torch.tensor([feature_hsic(x, x, debiased) for x in listed_a], dtype=torch.float64)
                hsic_bb += torch.tensor([feature_hsic(y, y, debiased) for y in listed_b], dtype=torch.float64)
            examples, rows, used = examples + len(batch), rows + n, used + 1
            batch = following
    reductions_a = passes[0].reductions
    reductions_b = passes[-1].reductions
    records = []
    for i, name_a in enumerate(names_a):
        for j, name_b in enumerate(names_b):
            denominator = float(hsic_aa[i]) * float(hsic_bb[j])
            value = float(hsic_ab[i, j]) / math.sqrt(denominator) if denominator > 0 else math.nan
            records.append((name_a, name_b, value, examples, rows, used, "debiased" if debiased else "biased",
                            reductions_a[name_a], reductions_b[name_b]))
    frame = pd.DataFrame.from_records(records, columns=list(CKA_COLUMNS))
    return frame.astype({"layer_a": str, "layer_b": str, "cka": float, "examples": int, "rows": int, "batches": int})


def _same_rows(grams_a: dict[str, torch.Tensor], names_a: list[str], grams_b: dict[str, torch.Tensor],
               names_b: list[str]) -> list[str]:
    """`names_a` when every layer compared has as many rows in this batch, else a WidthlabError naming two that do
    not (with ``tokens="each"``, a token layer beside a per-example one)."""
    sizes = [(name, grams_a[name].shape[0]) for name in names_a]
    if grams_b is not grams_a:  # a second model: its layers may differ from the first's
        sizes += [(f"{name} of model_b", grams_b[name].shape[0]) for name in names_b]
    odd = next(((name, n) for name, n in sizes if n != sizes[0][1]), None)
    if odd is not None:
        raise WidthlabError(f"layers {sizes[0][0]!r} ({sizes[0][1]} rows in a batch) and {odd[0]!r} ({odd[1]} rows) "
                            "cannot be compared: with tokens='each' every layer needs one row per real token; use "
                            "tokens='mean' for one row per example")
    return names_a


class _maybe_hooks:
    """`layer_hooks` when `active`, else a context yielding None (the second model is the first)."""

    def __init__(self, model: nn.Module, names: list[str], fn, active: bool):
        self.context = layer_hooks(model, names, fn) if active else None

    def __enter__(self):
        return None if self.context is None else self.context.__enter__()

    def __exit__(self, *exc):
        return None if self.context is None else self.context.__exit__(*exc)
