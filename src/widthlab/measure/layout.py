"""Which axis of a layer's output holds its units, decided by the module that produced it (docs/metrics.md).

Rule, for an output of three or more dimensions (an output (N, C) has its units on axis 1 = the last):

- a layer that is a ``Linear``, HF ``Conv1D``, ``LayerNorm``/``RMSNorm``, ``Embedding`` or
  ``MultiheadAttention``: the **last** axis (a transformer's (N, T, C) gives N·T rows of C units);
- a ``Conv*d``, ``ConvTranspose*d``, ``BatchNorm*d``, ``GroupNorm``, ``InstanceNorm*d``, pooling or channel-first
  ``LayerNorm2d``-style norm: axis **1**;
- any other leaf module whose output has its input's shape (an activation, Dropout, Identity, a scaling) passes
  the axis of the module that produced its input: the nearest earlier leaf module whose output has that shape;
- a container (a block, a stage): the module that produced its output, i.e. the last leaf module run inside it
  with the container's output shape; when none has it (a concatenation of branches), the axis every deciding
  module inside it agrees on.

Anything else — a leaf of unknown kind that changes the shape, disagreeing modules inside a container — is an
error naming the layer and its shape: pass ``unit_axis=`` then. An explicit ``unit_axis`` always overrides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from widthlab.errors import WidthlabError
from widthlab.measure.hooks import did_not_run, hooked

LAST_AXIS = (nn.Linear, nn.Bilinear, nn.LayerNorm, nn.RMSNorm, nn.Embedding, nn.MultiheadAttention)
CHANNEL_AXIS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.InstanceNorm1d,
                nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm, nn.MaxPool1d, nn.MaxPool2d,
                nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)


def is_hf_conv1d(module: nn.Module) -> bool:
    """HF transformers' ``Conv1D`` (GPT-2): a Linear with its weight stored (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None


def module_axis(module: nn.Module) -> str | None:
    """``"last"``, ``"channel"`` or None (the module's kind does not decide) for one module."""
    if isinstance(module, nn.LayerNorm) and type(module).__name__.endswith(("2d", "3d", "Nd")):
        return "channel"  # timm's LayerNorm2d and the like normalise axis 1 of (N, C, H, W)
    if isinstance(module, LAST_AXIS) or is_hf_conv1d(module):
        return "last"
    if isinstance(module, CHANNEL_AXIS):
        return "channel"
    return None


@dataclass
class _Call:
    name: str
    module: nn.Module
    leaf: bool
    start: int  # position of its pre-hook among all pre-hooks
    input_shape: tuple | None  # the shape of its first tensor argument
    output_shape: tuple | None


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    return next((v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)), None)


def record_calls(model: nn.Module, run) -> list[_Call]:
    """Every module call of one forward pass ``run()``, in the order the calls returned."""
    calls: list[_Call] = []
    starts: dict[int, list] = {}
    counter = [0]

    def before(module, args, kwargs):
        t = _first_tensor(args, kwargs)
        starts.setdefault(id(module), []).append((counter[0], None if t is None else tuple(t.shape)))
        counter[0] += 1

    def after(name):
        def hook(module, args, kwargs, output):
            start, shape = starts[id(module)].pop()
            out = output if isinstance(output, torch.Tensor) else None
            calls.append(_Call(name, module, not any(True for _ in module.children()), start, shape,
                               None if out is None else tuple(out.shape)))
        return hook

    names = [name for name, _ in model.named_modules() if name]
    with hooked(model, names, pre=lambda name: before, forward=after, with_kwargs=True):
        run()
    return calls


def _leaf_axis(calls: list[_Call], index: int) -> str | None:
    """The axis of leaf call `index`: its kind's, else (shape-preserving) that of the producer of its input."""
    while True:
        call = calls[index]
        kind = module_axis(call.module)
        if kind is not None:
            return kind
        if call.input_shape is None or call.input_shape != call.output_shape:
            return None
        earlier = [i for i in range(index - 1, -1, -1) if calls[i].leaf and calls[i].start < call.start
                   and calls[i].output_shape == call.input_shape]
        if not earlier:
            return None
        index = earlier[0]


def _axis_of(calls: list[_Call], index: int) -> str | None:
    call = calls[index]
    kind = module_axis(call.module)
    if kind is not None or call.leaf:
        return kind if kind is not None else _leaf_axis(calls, index)
    inside = [i for i in range(index) if calls[i].leaf and calls[i].start > call.start]
    same = [i for i in inside if calls[i].output_shape == call.output_shape]
    if same:
        return _leaf_axis(calls, same[-1])
    kinds = {module_axis(calls[i].module) for i in inside} - {None}
    return kinds.pop() if len(kinds) == 1 else None


def unit_axes(model: nn.Module, run, layers: Sequence[str], unit_axis: int | None = None,
              calls: list[_Call] | None = None) -> dict[str, int]:
    """``{layer: non-negative unit axis}`` of each layer's output in one forward pass ``run()`` (module doc).

    Args:
        run: a callable running the model once on a few examples (not needed when `calls` are given).
        unit_axis: an explicit axis for every layer (checked against each output), or None to decide by rule.
        calls: `record_calls` of that pass, when the caller has them.

    Example: a Linear's units lie on the last axis of its (N, T, C) output, and a GELU after it keeps them there;
    a Conv's lie on axis 1:
        >>> block = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        >>> unit_axes(block, lambda: block(torch.randn(2, 5, 8)), ["0", "1"])
        {'0': 2, '1': 2}
        >>> conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        >>> unit_axes(conv, lambda: conv(torch.randn(2, 3, 8, 8)), ["1"])
        {'1': 1}
    """
    calls = record_calls(model, run) if calls is None else calls
    axes = {}
    for name in layers:
        found = [i for i, call in enumerate(calls) if call.name == name]
        if not found:
            raise WidthlabError(did_not_run([name]))
        index = found[-1]
        shape = calls[index].output_shape
        if shape is None:
            raise WidthlabError(f"layer {name!r} returned {type(calls[index].module).__name__} output that is not "
                                "a tensor; measure a module whose output is one tensor")
        axes[name] = resolve_axis(name, shape, unit_axis, lambda: _axis_of(calls, index))
    return axes


def resolve_axis(name: str, shape: tuple, unit_axis: int | None, decide) -> int:
    """The unit axis of output `shape`: `unit_axis` checked, axis 1 of a 2-D output, else ``decide()``'s."""
    dims = len(shape)
    shape = "(" + ", ".join(["N", *map(str, shape[1:])]) + ")"  # the batch size of a probe pass means nothing
    if unit_axis is not None:
        if isinstance(unit_axis, bool) or not isinstance(unit_axis, int) or dims < 2 \
                or not -dims <= unit_axis < dims or unit_axis % dims == 0:
            raise WidthlabError(f"layer {name!r} output of shape {shape} has no unit axis {unit_axis!r} (axis 0 is "
                                "the batch)")
        return unit_axis % dims
    if dims < 2:
        raise WidthlabError(f"layer {name!r} output of shape {shape} has no unit axis (axis 0 is the batch)")
    if dims == 2:
        return 1
    kind = decide()
    if kind is None:
        raise WidthlabError(f"cannot tell which axis of layer {name!r}'s output of shape {shape} holds its units "
                            "(no Linear/Conv/norm module decides it); pass unit_axis= (CLI: --unit-axis)")
    return dims - 1 if kind == "last" else 1
