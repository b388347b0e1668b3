"""Layer activations as (rows, units) matrices: forward hooks, batching and a streaming primitive.

A layer is a named module; its units are the channels of its output (DESIGN.md §1): an output (N, C) gives
N rows, an output (N, C, *spatial) gives N·H·W… rows (every position of every example). Hooks are installed by
a context manager and always removed in ``finally``; the model runs in eval mode under ``no_grad`` and gets
its training flags back afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from widthlab.errors import WidthlabError, check_positive_int

# Modules whose outputs `layers=None` measures when a model declares no `unit_layers`.
RELU_LIKE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU,
             nn.Mish)

Inputs = torch.Tensor | Dataset | DataLoader


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without either)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _float_dtype(model: nn.Module) -> torch.dtype | None:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


def batches(model: nn.Module, inputs: Inputs, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield ``(x, y)`` batches on the model's device; ``y`` is None when the inputs carry no labels.

    Floating inputs are cast to the model's parameter dtype, so a float64 model can take float32 data.

    Args:
        inputs: a tensor (N, ...) split into batches of `batch_size`; a Dataset (read in order, `batch_size` at a
            time) or a DataLoader (its own batches), either yielding ``(x, y)`` or ``x``.
    """
    check_positive_int("batch_size", batch_size)
    device, dtype = model_device(model), _float_dtype(model)
    if isinstance(inputs, torch.Tensor):
        source = ((x, None) for x in inputs.split(batch_size))
    elif isinstance(inputs, (Dataset, DataLoader)):
        loader = inputs if isinstance(inputs, DataLoader) else DataLoader(inputs, batch_size=batch_size)
        source = map(_split_batch, loader)
    else:
        raise WidthlabError(f"inputs must be a tensor, Dataset or DataLoader, got {type(inputs).__name__}")
    for x, y in source:
        x = x.to(device, dtype) if dtype is not None and x.is_floating_point() else x.to(device)
        yield x, None if y is None else y.to(device)


def _split_batch(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        y = batch[1] if len(batch) > 1 else None
        # Only 1-D integer targets are class labels; anything else (masks, regression targets) is ignored.
        is_label = isinstance(y, torch.Tensor) and y.dim() == 1 and not y.is_floating_point()
        return batch[0], y if is_label else None
    raise WidthlabError(f"a batch must be a tensor x or a tuple (x, y, ...), got {type(batch).__name__}")


def count_examples(inputs: Inputs) -> int:
    """The number of examples `inputs` yields (a DataLoader is iterated once, without the model)."""
    if isinstance(inputs, DataLoader):
        return sum(len(_split_batch(batch)[0]) for batch in inputs)
    try:
        return len(inputs)
    except TypeError as exc:
        raise WidthlabError(f"cannot count the examples of {type(inputs).__name__}; pass a sized Dataset") from exc


def resolve_modules(model: nn.Module, layers: str | Sequence[str]) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` for each layer name, or a WidthlabError listing the valid module names."""
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise WidthlabError("no layers given; name at least one module of the model")
    modules = dict(model.named_modules())
    modules.pop("", None)
    unknown = [name for name in names if name not in modules]
    if unknown:
        raise WidthlabError(f"unknown layer(s) {', '.join(map(repr, unknown))}; valid module names: "
                            f"{', '.join(modules)}")
    if len(set(names)) != len(names):
        raise WidthlabError(f"layers {names} name a module more than once")
    return [(name, modules[name]) for name in names]


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
                fn: Callable[[str, object], torch.Tensor | None]) -> Iterator[Callable[[torch.Tensor], object]]:
    """Hook ``fn(name, output)`` onto each layer for the block; yield ``run(x)``, one checked forward pass.

    `fn` may return a tensor that replaces the layer's output. ``run`` raises a WidthlabError naming a layer that
    ran twice in one forward pass (its output is not one layer) or not at all. The hooks are removed in
    ``finally``, whatever happens during the block.
    """
    modules = resolve_modules(model, layers)
    calls: dict[str, int] = {}

    def make_hook(name: str):
        def hook(module, args, output):
            calls[name] = calls.get(name, 0) + 1
            if calls[name] > 1:
                raise WidthlabError(f"layer {name!r} ran more than once in one forward pass, so its output is not "
                                    "one layer; measure a module that runs once (e.g. not a shared ReLU)")
            return fn(name, output)
        return hook

    def run(x: torch.Tensor):
        calls.clear()
        out = model(x)
        silent = [name for name, _ in modules if name not in calls]
        if silent:
            raise WidthlabError(f"layer(s) {', '.join(map(repr, silent))} did not run in the forward pass")
        return out

    handles = []
    try:
        for name, module in modules:
            handles.append(module.register_forward_hook(make_hook(name)))
        yield run
    finally:
        for handle in handles:
            handle.remove()


def check_unit_axis(output: object, name: str, unit_axis: int = 1) -> int:
    """The non-negative unit axis of a layer output, or a WidthlabError if it is not a tensor with that axis."""
    if not isinstance(output, torch.Tensor):
        raise WidthlabError(f"layer {name!r} returned {type(output).__name__}, not a tensor; measure a module "
                            "whose output is one tensor")
    if output.dim() < 2 or not -output.dim() <= unit_axis < output.dim() or unit_axis % output.dim() == 0:
        raise WidthlabError(f"layer {name!r} output of shape {tuple(output.shape)} has no unit axis "
                            f"{unit_axis} (axis 0 is the batch); pass unit_axis= naming the channel axis")
    return unit_axis % output.dim()


def unit_rows(output: object, name: str, unit_axis: int = 1) -> torch.Tensor:
    """A layer output as a (rows, units) matrix: the unit axis moved last, everything else flattened.

    The result never shares memory with `output`, so a later in-place op (``ReLU(inplace=True)``) cannot
    overwrite it. Raises a WidthlabError for a non-tensor output, a missing unit axis or NaN/inf values.
    """
    axis = check_unit_axis(output, name, unit_axis)
    rows = output.detach().movedim(axis, -1).reshape(-1, output.shape[axis])
    if rows.untyped_storage().data_ptr() == output.untyped_storage().data_ptr():
        rows = rows.clone()
    if not rows.is_floating_point():
        rows = rows.float()
    if not torch.isfinite(rows).all():
        raise WidthlabError(f"layer {name!r} produced NaN or inf activations")
    return rows


def stream_activations(model: nn.Module, inputs: Inputs, layers: str | Sequence[str], *, unit_axis: int = 1,
                       batch_size: int = 1024) -> Iterator[tuple[dict[str, torch.Tensor], int]]:
    """Yield, batch by batch, ``({layer: (rows, units) chunk}, examples in the batch)`` on the model's device.

    Statistics can be accumulated from the chunks without materialising all activations. Consume the
    iterator fully (or close it): the hooks and eval mode last until it finishes.

    Args:
        layers: module name(s) from ``model.named_modules()``.
        unit_axis: the channel axis of every layer output (default 1).
        batch_size: examples per forward pass for tensor/Dataset inputs (default 1024).

    Example: ``for chunks, n in stream_activations(model, x, ["relu1"]): moments.update(chunks["relu1"])``
    """
    chunks: dict[str, torch.Tensor] = {}

    def keep(name: str, output: object) -> None:
        chunks[name] = unit_rows(output, name, unit_axis)

    with evaluating(model), layer_hooks(model, layers, keep) as run:
        for x, _ in batches(model, inputs, batch_size):
            chunks.clear()
            with torch.no_grad():
                run(x)
            yield dict(chunks), len(x)


def capture(model: nn.Module, inputs: Inputs, layers: str | Sequence[str], *, unit_axis: int = 1,
            batch_size: int = 1024) -> dict[str, torch.Tensor]:
    """Materialise each layer's activations as a (rows, units) float tensor on the CPU.

    Args:
        model: any module; it runs on its own device in eval mode under ``no_grad`` (training flags restored).
        inputs: a tensor (N, ...), or a Dataset / DataLoader yielding ``(x, y)`` or ``x``.
        layers: module name(s) from ``model.named_modules()``.
        unit_axis: the channel axis of the layer outputs (default 1).
        batch_size: examples per forward pass for tensor/Dataset inputs (default 1024).

    Example: ``capture(mlp, torch.randn(100, 10), ["relu1"])["relu1"].shape == (100, hidden)``
    """
    parts: dict[str, list[torch.Tensor]] = {}
    for chunks, _ in stream_activations(model, inputs, layers, unit_axis=unit_axis, batch_size=batch_size):
        for name, rows in chunks.items():
            parts.setdefault(name, []).append(rows.cpu())
    if not parts:
        raise WidthlabError("inputs yielded no examples")
    return {name: torch.cat(rows) for name, rows in parts.items()}


def default_layers(model: nn.Module, inputs: Inputs, *, batch_size: int = 1024) -> list[str]:
    """The layers measured when none are named: ``model.unit_layers``, else every ReLU-like module output.

    ReLU-like = `RELU_LIKE` (ReLU, ReLU6, LeakyReLU, PReLU, RReLU, ELU, CELU, SELU, GELU, SiLU, Mish), in module
    order. One forward pass on the first batch finds which run: a module that does not run has no output and is
    left out; a module reused within a forward pass (such as the shared ReLU of a torchvision BasicBlock) has no
    single output, which is a WidthlabError naming it (pass `layers` explicitly then).

    Example: ``default_layers(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), x) == ["1"]``
    """
    declared = getattr(model, "unit_layers", None)
    if declared:
        return list(declared)
    candidates = [name for name, module in model.named_modules() if isinstance(module, RELU_LIKE)]
    if not candidates:
        raise WidthlabError(f"{type(model).__name__} has no `unit_layers` and no ReLU-like modules; pass layers=")
    calls = dict.fromkeys(candidates, 0)

    def counter(name: str):
        def hook(module, args, output):
            calls[name] += 1
        return hook

    handles = [module.register_forward_hook(counter(name)) for name, module in resolve_modules(model, candidates)]
    try:
        with evaluating(model), torch.no_grad():
            x, _ = next(batches(model, inputs, batch_size), (None, None))
            if x is None:
                raise WidthlabError("inputs yielded no examples")
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    reused = [name for name in candidates if calls[name] > 1]
    if reused:
        raise WidthlabError(f"ReLU-like module(s) {', '.join(map(repr, reused))} of {type(model).__name__} run more "
                            "than once per forward pass, so their output is not one layer; pass layers= naming "
                            "modules that run once (or give the model `unit_layers`)")
    found = [name for name in candidates if calls[name] == 1]
    if not found:
        raise WidthlabError(f"no ReLU-like module of {type(model).__name__} runs in a forward pass "
                            f"(candidates: {', '.join(candidates)}); pass layers=")
    return found
