"""Hooks on named modules: installed by one context manager, validated by one message, removed in ``finally``.

Every place in `widthlab.measure` that hooks a model (capture, the unit-axis rule, the probe pass, the engine's
sites) goes through `hooked`, so a bad layer name gives the same error everywhere and no hook survives an error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from torch import nn

from widthlab.errors import WidthlabError

HookFactory = Callable[[str], Callable]  # layer name -> the hook function for that layer's module


def named(model: nn.Module, names: Sequence[str]) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` for each of `names`, or a WidthlabError naming the unknown ones and listing the valid ones.

    The model itself (name ``""``) is not a layer; a name given twice is an error (its hooks would run twice).
    """
    modules = dict(model.named_modules())
    modules.pop("", None)
    unknown = [name for name in names if name not in modules]
    if unknown:
        raise WidthlabError(f"unknown layer(s) {', '.join(map(repr, unknown))}; valid module names: "
                            f"{', '.join(modules)}")
    if len(set(names)) != len(names):
        raise WidthlabError(f"layers {list(names)} name a module more than once")
    return [(name, modules[name]) for name in names]


def resolve_modules(model: nn.Module, layers: str | Sequence[str]) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` for each layer a user named (at least one), checked by `named`."""
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise WidthlabError("no layers given; name at least one module of the model")
    return named(model, names)


@contextmanager
def hooked(model: nn.Module, names: Sequence[str], *, forward: HookFactory | None = None,
           pre: HookFactory | None = None, with_kwargs: bool = False) -> Iterator[list[tuple[str, nn.Module]]]:
    """Hook the modules called `names` for the block; yield their ``(name, module)`` pairs.

    Args:
        names: module names (checked by `named`).
        forward: ``forward(name)`` gives the forward hook of that module (default None: none).
        pre: ``pre(name)`` gives its forward pre-hook (default None: none); each module's pre-hook is
            registered before its forward hook.
        with_kwargs: the hooks take the call's keyword arguments too (torch's ``with_kwargs``; default False).

    Every handle registered is removed in ``finally``, whatever happens in the block or while registering.

    Example: keep the output of ``relu1`` in one pass; no hook is left afterwards:
        >>> kept = {}
        >>> def keep(name):
        ...     return lambda module, args, output: kept.update({name: output})
        >>> with hooked(model, ["relu1"], forward=keep) as modules:
        ...     scores = model(x)
        >>> modules, kept["relu1"].shape, len(model.relu1._forward_hooks)
        ([('relu1', ReLU())], torch.Size([200, 128]), 0)
    """
    modules = named(model, names)
    handles = []
    try:
        for name, module in modules:
            if pre is not None:
                handles.append(module.register_forward_pre_hook(pre(name), with_kwargs=with_kwargs))
            if forward is not None:
                handles.append(module.register_forward_hook(forward(name), with_kwargs=with_kwargs))
        yield modules
    finally:
        for handle in handles:
            handle.remove()


def did_not_run(names: Sequence[str]) -> str:
    """The error for layers that did not run in a forward pass."""
    return f"layer{'s' if len(names) > 1 else ''} {', '.join(map(repr, names))} did not run in the forward pass"


def ran_twice(name: str) -> str:
    """The error for a layer whose module runs more than once per forward pass."""
    return (f"layer {name!r} ran more than once in one forward pass, so its output is not one layer; measure a "
            "module that runs once (e.g. not a shared ReLU: its block's output instead)")
