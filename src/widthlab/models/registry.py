"""The model registry: `create_model(name, width=...)` builds any registered family at any width factor."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from widthlab.errors import WidthlabError, check_positive_int
from widthlab.models.init import initialize
from widthlab.registry import Registry, call_user, check_kwargs

MODELS = Registry("model")


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder `fn(width, *, num_classes=None, **arch_kwargs) -> nn.Module` under its name."""
    return MODELS.register(fn)


def list_models() -> list[str]:
    """Names accepted by `create_model` (a config may also name ``module:function``)."""
    return MODELS.names()


def scale_width(units: int, width: float) -> int:
    """round(units · width) with halves rounded up, at least 1 (the paper's 1/4x of 96 is 24)."""
    return max(1, int(math.floor(units * width + 0.5)))


def check_width(width: object) -> float:
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not math.isfinite(width) or width <= 0:
        raise WidthlabError(f"width must be a positive finite number, got {width!r}")
    return float(width)


def check_positive_ints(family: str, **options: object) -> None:
    """Raise a WidthlabError naming the first option of model `family` that is not a positive integer."""
    for key, value in options.items():
        check_positive_int(f"{family}: {key}", value)


def check_probabilities(family: str, **options: object) -> None:
    """Raise a WidthlabError naming the first option of model `family` outside [0, 1) (e.g. a dropout rate)."""
    for key, value in options.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise WidthlabError(f"{family}: {key} must be a probability in [0, 1), got {value!r}")


def create_model(name: str, width: float = 1.0, *, init: str = "glorot_normal", sigma: float | None = None,
                 num_classes: int | None = None, seed: int | None = None, **kw) -> nn.Module:
    """Build model family `name` at width factor `width` and initialise it.

    Args:
        name: a registered family (`list_models()`) or ``module:function`` for a user's own builder, which is
            called as ``fn(width=width, num_classes=num_classes, **kw)`` (``num_classes`` only when given).
        width: width factor; every hidden unit/channel count is multiplied by it (rounded, at least 1).
        init: initialisation scheme (`widthlab.models.init.INIT_SCHEMES`); sigma: std for normal schemes.
        seed: draws the initial weights from a private generator seeded by it (global RNG untouched).
        **kw: architecture options of the family (e.g. ``input_dim`` for ``mlp``).

    Example:
        >>> net = create_model("mlp", 2.0, init="normal", sigma=0.01, input_dim=10)
        >>> net.unit_layers, net.fc1.out_features
        (['relu1'], 256)
    """
    width = check_width(width)
    builder = MODELS.lookup(name)
    if num_classes is not None:
        kw["num_classes"] = num_classes
    check_kwargs(builder, {"width": width, **kw}, f"model {name!r}")
    # PyTorch's module constructors draw default weights from the global RNG; with a seed those draws are
    # overwritten anyway, so keep the caller's RNG state as it was.
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        model = call_user(builder, name, "model", width=width, **kw)
    if not isinstance(model, nn.Module):
        raise WidthlabError(f"model {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    if not getattr(model, "unit_layers", None):
        raise WidthlabError(f"model {name!r} declares no `unit_layers` (a list of module names to measure)")
    known = {n for n, _ in model.named_modules()}
    missing = [layer for layer in model.unit_layers if layer not in known]
    if missing:
        raise WidthlabError(f"model {name!r} lists unit layers {missing} that are not among its modules")
    if ":" not in name:
        # How to rebuild the architecture (not the weights): a compressed model's file names it instead of code.
        options = {k: v for k, v in kw.items() if k != "num_classes"}
        model.widthlab_spec = {"model": {"name": name, **options}, "width": width, "num_classes": kw.get("num_classes")}
    return initialize(model, init, sigma, seed)
