"""Layer activations as (rows, units) matrices: forward hooks, batching and a streaming primitive.

A layer is a named module; its units are the channels of its output (docs/metrics.md): an output (N, C) gives
N rows, an output (N, C, *spatial) gives N·H·W… rows (every position of every example). Hooks are installed by
a context manager and always removed in ``finally``; the model runs in eval mode under ``no_grad`` and gets
its training flags back afterwards.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from widthlab.errors import WidthlabError
from widthlab.measure.hooks import did_not_run, hooked, ran_twice, resolve_modules
from widthlab.measure.inputs import DEFAULT_MASK, Batch, Inputs, batches, first_batch
from widthlab.measure.layout import record_calls, resolve_axis, unit_axes
from widthlab.measure.redundancy import all_finite

# Activation modules: the outputs `layers=None` measures when a model declares no `unit_layers`.
RELU_LIKE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU,
             nn.Mish, nn.Hardswish)
# Activation classes of HF transformers and timm are found by their package; these of theirs are not units' but
# gates or identities.
ACTIVATION_PACKAGES = ("transformers.activations", "timm.layers.activations", "timm.models.layers.activations")
NOT_ACTIVATIONS = {"Sigmoid", "HardSigmoid", "Hardsigmoid", "Tanh", "LinearActivation", "Identity"}


def is_activation(module: nn.Module) -> bool:
    """An activation module of torch (`RELU_LIKE`), HF transformers or timm (not a gate such as a sigmoid)."""
    if isinstance(module, RELU_LIKE):
        return True
    kind = type(module)
    return kind.__module__.startswith(ACTIVATION_PACKAGES) and kind.__name__ not in NOT_ACTIVATIONS


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode for the block and give every module its training flag back afterwards."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


@contextmanager
def layer_hooks(model: nn.Module, layers: str | Sequence[str],
                fn: Callable[[str, object], torch.Tensor | None]) -> Iterator[Callable[[Batch], object]]:
    """Hook ``fn(name, output)`` onto each layer for the block; yield ``run(batch)``, one checked forward pass.

    `fn` may return a tensor that replaces the layer's output. ``run`` raises a WidthlabError naming a layer that
    ran twice in one forward pass (its output is not one layer) or not at all. The hooks are removed in
    ``finally``, whatever happens during the block.
    """
    calls: dict[str, int] = {}
    names = [name for name, _ in resolve_modules(model, layers)]

    def make_hook(name: str):
        def hook(module, args, output):
            calls[name] = calls.get(name, 0) + 1
            if calls[name] > 1:
                raise WidthlabError(ran_twice(name))
            return fn(name, output)
        return hook

    def run(batch: Batch):
        calls.clear()
        out = batch.run(model)
        silent = [name for name in names if name not in calls]
        if silent:
            raise WidthlabError(did_not_run(silent))
        return out

    with hooked(model, names, forward=make_hook):
        yield run


def check_unit_axis(output: object, name: str, unit_axis: int) -> int:
    """The non-negative unit axis of a layer output, or a WidthlabError if it is not a tensor with that axis."""
    if not isinstance(output, torch.Tensor):
        raise WidthlabError(f"layer {name!r} returned {type(output).__name__}, not a tensor; measure a module "
                            "whose output is one tensor")
    return resolve_axis(name, tuple(output.shape), unit_axis, lambda: None)


def unit_rows(output: object, name: str, unit_axis: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """A layer output as a (rows, units) matrix: the unit axis moved last, everything else flattened.

    With a token `mask` (B, T), an output whose other axes are (B, T) keeps only the rows of real tokens; an
    output (B, C) keeps every row; any other layout beside a mask is an error (its padding cannot be told).
    The result never shares memory with `output`, so a later in-place op (``ReLU(inplace=True)``) cannot
    overwrite it. Raises a WidthlabError for a non-tensor output, a missing unit axis or NaN/inf values.
    """
    axis = check_unit_axis(output, name, unit_axis)
    moved = output.detach().movedim(axis, -1)  # (B, ..., C)
    if mask is not None and moved.dim() > 2:
        if tuple(moved.shape[:-1]) != tuple(mask.shape):
            raise WidthlabError(f"layer {name!r} output of shape {tuple(output.shape)} (units on axis {axis}) has "
                                f"no token axis matching the attention mask {tuple(mask.shape)}; measure token "
                                "layers (B, T, C), or pass mask=None to count padded positions as rows")
        rows = moved[mask.to(moved.device)]
    else:
        rows = moved.reshape(-1, output.shape[axis])
    if rows.untyped_storage().data_ptr() == output.untyped_storage().data_ptr():
        rows = rows.clone()
    if not rows.is_floating_point():
        rows = rows.float()
    if not all_finite(rows):
        raise WidthlabError(f"layer {name!r} produced NaN or inf activations")
    return rows


def layer_axes(model: nn.Module, batch: Batch, layers: Sequence[str], unit_axis: int | None) -> dict[str, int]:
    """`unit_axes` of `layers` from one forward pass on the first two examples of `batch` (eval mode)."""
    probe = batch.head(2)
    with evaluating(model), torch.no_grad():
        return unit_axes(model, lambda: probe.run(model), layers, unit_axis)


def stream_activations(model: nn.Module, inputs: Inputs, layers: str | Sequence[str], *,
                       unit_axis: int | None = None, batch_size: int = 1024,
                       mask: str | int | None = DEFAULT_MASK) -> Iterator[tuple[dict[str, torch.Tensor], Batch]]:
    """Yield, batch by batch, ``({layer: (rows, units) chunk}, the Batch)`` on the model's device.

    Statistics can be accumulated from the chunks without materialising all activations. Consume the
    iterator fully (or close it): the hooks and eval mode last until it finishes. The same dict is yielded every
    time and emptied before the next batch runs, so one batch's rows are freed before the next exist: keep the
    tensors, not the dict.

    Args:
        layers: module name(s) from ``model.named_modules()``.
        unit_axis: the unit axis of every layer output (default None: by the rule of `widthlab.measure.layout`).
        batch_size: examples per forward pass for tensor/Dataset inputs (default 1024).
        mask: the attention mask's keyword or position (default ``"attention_mask"``; see `widthlab.measure.inputs`).

    Example: the moments of ``relu1``, accumulated batch by batch:
        >>> from widthlab.measure.redundancy import Moments
        >>> moments = Moments()
        >>> for chunks, batch in stream_activations(model, x, ["relu1"], batch_size=64):
        ...     _ = moments.update(chunks["relu1"])
        >>> moments.n, moments.n_units
        (200, 128)
    """
    names = [name for name, _ in resolve_modules(model, layers)]
    source = batches(model, inputs, batch_size, mask=mask)
    first = next(source, None)
    if first is None:
        return
    axes = layer_axes(model, first, names, unit_axis)  # decided once, before the hooks below go on
    chunks: dict[str, torch.Tensor] = {}
    kept: dict[str, tuple[torch.Tensor, int]] = {}  # layer -> (its output, the output's version when it ran)
    copied: set[str] = set()  # layers whose outputs a later in-place op overwrites: their rows are made in the hook
    yielded: dict[str, torch.Tensor] = {}
    current: list[Batch] = []

    def keep(name: str, output: object) -> None:
        # The (rows, units) copy is made after the pass, once the model's other intermediates are freed, so it does
        # not add to the forward pass's own peak; an output changed in place later in the pass (its version moves)
        # is copied in the hook instead, from then on.
        version = _version(output) if name not in copied else None
        if version is None:
            chunks[name] = unit_rows(output, name, axes[name], current[0].mask)
        else:
            kept[name] = (output.detach(), version)

    with evaluating(model), layer_hooks(model, names, keep) as run:
        for batch in itertools.chain([first], source):
            current[:] = [batch]
            overwritten = names
            while overwritten:
                chunks.clear()
                kept.clear()
                with torch.no_grad():
                    run(batch)
                overwritten = [name for name, (out, version) in kept.items() if out._version != version]
                copied.update(overwritten)  # then the batch runs again, those layers copied in the hook
            for name in list(kept):
                chunks[name] = unit_rows(kept.pop(name)[0], name, axes[name], batch.mask)
            yielded.update((name, chunks.pop(name)) for name in names)
            yield yielded, batch
            yielded.clear()  # the caller's reference to this batch's rows goes before the next pass runs


def _version(output: object) -> int | None:
    """The in-place version counter of a tensor output (None for other outputs and inference-mode tensors)."""
    if not isinstance(output, torch.Tensor):
        return None
    try:
        return output._version
    except RuntimeError:  # inference tensors keep no version counter
        return None


def capture(model: nn.Module, inputs: Inputs, layers: str | Sequence[str], *, unit_axis: int | None = None,
            batch_size: int = 1024, mask: str | int | None = DEFAULT_MASK) -> dict[str, torch.Tensor]:
    """Materialise each layer's activations as a (rows, units) float tensor on the CPU.

    Args:
        model: any module; it runs on its own device in eval mode under ``no_grad`` (training flags restored).
        inputs: a tensor, a tuple or mapping of tensors, or a Dataset / DataLoader of these
            (`widthlab.measure.inputs`).
        layers: module name(s) from ``model.named_modules()``.
        unit_axis: the unit axis of the layer outputs (default None: by the rule of `widthlab.measure.layout`:
            axis 1 after Conv/BatchNorm, the last axis after Linear/LayerNorm and the activations following them).
        batch_size: examples per forward pass for tensor/Dataset inputs (default 1024).
        mask: the attention mask (default the ``"attention_mask"`` keyword): only real tokens' rows are kept.

    Example: the 128 units of the 1x mlp on 100 inputs:
        >>> capture(model, torch.randn(100, 10), ["relu1"])["relu1"].shape
        torch.Size([100, 128])
    """
    parts: dict[str, list[torch.Tensor]] = {}
    for chunks, _ in stream_activations(model, inputs, layers, unit_axis=unit_axis, batch_size=batch_size,
                                        mask=mask):
        for name, rows in chunks.items():
            parts.setdefault(name, []).append(rows.cpu())
    if not parts:
        raise WidthlabError("inputs yielded no examples")
    return {name: torch.cat(rows) for name, rows in parts.items()}


def _is_gate(shape: tuple | None) -> bool:
    """A (N, C, 1, 1[, 1]) output: a squeeze-excitation bottleneck (or a pooled head), not a layer of units."""
    return shape is not None and len(shape) >= 4 and all(d == 1 for d in shape[2:])


def default_layers(model: nn.Module, inputs: Inputs, *, batch_size: int = 1024,
                   mask: str | int | None = DEFAULT_MASK) -> list[str]:
    """The layers measured when none are named: ``model.unit_layers``, else the model's activation outputs.

    Activations (`is_activation`): torch's ReLU, ReLU6, LeakyReLU, PReLU, RReLU, ELU, CELU, SELU, GELU, SiLU, Mish
    and Hardswish, and the activation classes of HF transformers and timm (not sigmoid/tanh gates), in module
    order. One forward pass on the first batch decides:

    - an activation that does not run is left out;
    - an activation module called more than once per forward pass (the ReLU a torchvision BasicBlock applies
      twice) has no single output: it is replaced by the output of the smallest module containing it that runs
      once (the block), listed once;
    - an activation whose output is (N, C, 1, 1) — a squeeze-excitation bottleneck — is left out (name it in
      `layers` to measure it).

    Example: a widthlab model's unit layers, and the activations of a plain ``nn.Sequential``:
        >>> default_layers(model, x)
        ['relu1']
        >>> default_layers(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), torch.randn(3, 4))
        ['1']
    """
    declared = getattr(model, "unit_layers", None)
    if declared:
        return list(declared)
    candidates = [name for name, module in model.named_modules() if name and is_activation(module)]
    if not candidates:
        raise WidthlabError(f"{type(model).__name__} has no `unit_layers` and no activation modules; pass layers=")
    batch = first_batch(model, inputs, min(batch_size, 2), mask)
    with evaluating(model), torch.no_grad():
        calls = record_calls(model, lambda: batch.run(model))
    runs: dict[str, int] = {}
    shape: dict[str, tuple | None] = {}
    for call in calls:
        runs[call.name] = runs.get(call.name, 0) + 1
        shape[call.name] = call.output_shape
    found: list[str] = []
    for name in candidates:
        count = runs.get(name, 0)
        if count == 0 or _is_gate(shape.get(name)):
            continue
        while count > 1:
            if "." not in name:
                raise WidthlabError(f"activation {name!r} of {type(model).__name__} runs {count} times per forward "
                                    "pass and belongs to no block that runs once; pass layers=")
            name = name.rsplit(".", 1)[0]
            count = runs.get(name, 0)
            if count == 0:
                raise WidthlabError(f"an activation inside {name!r} of {type(model).__name__} runs more than once "
                                    "per forward pass, and its block does not run; pass layers=")
        if name not in found:
            found.append(name)
    if not found:
        raise WidthlabError(f"no activation module of {type(model).__name__} runs once in a forward pass "
                            f"(candidates: {', '.join(candidates)}); pass layers=")
    return found
