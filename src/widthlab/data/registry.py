"""The data registry: `load_data(name, root=..., seed=...)` returns `Splits`."""

from __future__ import annotations

import os
from collections.abc import Callable

from widthlab.data.base import Splits
from widthlab.errors import WidthlabError
from widthlab.registry import Registry, call_user, check_kwargs

DATA_SETS = Registry("data set")


def register_data(fn: Callable[..., Splits]) -> Callable[..., Splits]:
    """Register a loader `fn(*, seed, root, **options) -> Splits` under its name."""
    return DATA_SETS.register(fn)


def list_data() -> list[str]:
    """Names accepted by `load_data` (a config may also name ``module:function``)."""
    return DATA_SETS.names()


def load_data(name: str, *, root: str | os.PathLike | None = None, seed: int = 0, **kw) -> Splits:
    """Load data set `name` as `Splits(train, val, test)`.

    Args:
        name: a registered data set (`list_data()`) or ``module:function`` for a user's loader, called as
            ``fn(seed=seed, root=root, **kw)`` and expected to return `Splits`.
        root: folder holding the data (default: ``$WIDTHLAB_DATA``); unused by synthetic data.
        seed: seeds every random choice (teacher, inputs, split shuffles).

    Example:
        >>> splits = load_data("synthetic", input_dim=10, seed=0)
        >>> splits.train.x.shape, splits.num_classes
        (torch.Size([1000, 10]), 2)
    """
    if root is None:
        root = os.environ.get("WIDTHLAB_DATA")
    loader = DATA_SETS.lookup(name)
    check_kwargs(loader, {"seed": seed, "root": root, **kw}, f"data set {name!r}")
    splits = call_user(loader, name, "data set", seed=seed, root=root, **kw)
    if not isinstance(splits, Splits):
        raise WidthlabError(f"data set {name!r} returned {type(splits).__name__}, not widthlab.data.Splits")
    return splits
