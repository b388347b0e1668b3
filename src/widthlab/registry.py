"""Named builders: the one registry behind `create_model` and `load_data`, and the ``module:function`` escape.

A config names a registered function (``mlp``, ``synthetic``) or a user's own as ``module:function``; the
latter is the only way a config runs a user's code. `models/` and `data/` each hold one `Registry`.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from widthlab.errors import WidthlabError, first_line


class Registry:
    """Functions registered under their ``__name__``, looked up by name or as ``module:function``.

    Args:
        what: what one entry builds, for messages (``"model"``, ``"data set"``).

    Example:
        >>> MODELS = Registry("model")
        >>> @MODELS.register
        ... def mlp(width=1.0):
        ...     return nn.Linear(10, round(128 * width))
        >>> MODELS.lookup("mlp") is mlp, MODELS.names()
        (True, ['mlp'])
        >>> MODELS.lookup("mpl")
        Traceback (most recent call last):
        ...
        widthlab.errors.WidthlabError: unknown model 'mpl'; registered: mlp (or 'module:function')
    """

    def __init__(self, what: str):
        self.what = what
        self._entries: dict[str, Callable] = {}

    def register(self, fn: Callable) -> Callable:
        """Register `fn` under ``fn.__name__`` (a later one of the same name replaces it); returns `fn`."""
        self._entries[fn.__name__] = fn
        return fn

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def lookup(self, name: str) -> Callable:
        """The function registered as `name`, or a user's ``module:function``; otherwise a WidthlabError naming
        `name` and listing the registered ones."""
        if name in self._entries:
            return self._entries[name]
        if ":" in name:
            return resolve_callable(name, self.what)
        raise WidthlabError(f"unknown {self.what} {name!r}; registered: {', '.join(self.names())} "
                            "(or 'module:function')")


_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def resolve_callable(spec: str, what: str) -> Callable:
    """Import ``module:function`` named by a config (the only way a config runs a user's code).

    The module is looked up among installed modules first, then in the current folder, and the current folder is
    on ``sys.path`` (at its end) only while that one module imports: a folder the command runs in never shadows
    an installed or standard module, and none of its files runs unless the user named it.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise WidthlabError(f"{what} {spec!r} is neither registered nor of the form 'module:function'")
    if not _MODULE.match(module_name) or not attr.isidentifier():
        raise WidthlabError(f"{what} {spec!r}: {module_name!r}:{attr!r} is not a Python module path and function "
                            "name (e.g. 'my_models:build' for my_models.py in the current folder)")
    try:
        module = _import_user_module(module_name)
    except WidthlabError:
        raise
    except Exception as exc:  # ImportError, or the module's own SyntaxError or exception at import
        raise WidthlabError(f"{what} {spec!r}: cannot import module {module_name!r} ({first_line(exc)})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise WidthlabError(f"{what} {spec!r}: module {module_name!r} has no callable {attr!r}")
    return fn


def _import_user_module(module_name: str) -> ModuleType:
    top = module_name.partition(".")[0]
    here = os.getcwd()
    local = [p for p in (Path(here) / f"{top}.py", Path(here) / top) if p.exists()]
    installed = None if top in sys.modules else importlib.util.find_spec(top)
    if top in sys.modules or installed is not None:
        found = getattr(sys.modules.get(top), "__file__", None) or getattr(installed, "origin", None)
        if local and found and Path(found).resolve().parent not in (Path(here).resolve(), local[0].resolve()):
            raise WidthlabError(f"module {top!r} names both {str(local[0])!r} in the current folder and the "
                                f"installed {found!r}, which widthlab imports; rename your file")
        return importlib.import_module(module_name)
    sys.path.append(here)  # at the end: the user's module may import its neighbours, never shadow a package
    try:
        return importlib.import_module(module_name)
    finally:
        for index in range(len(sys.path) - 1, -1, -1):
            if sys.path[index] == here:
                del sys.path[index]
                break


def check_kwargs(fn: Callable, kwargs: dict, what: str) -> None:
    """Reject keyword arguments that `fn` does not take, naming them and the valid ones."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise WidthlabError(f"{what}: unknown option(s) {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")


def call_user(fn: Callable, name: str, what: str, **kwargs):
    """``fn(**kwargs)``; for a user's ``module:function``, any exception becomes one WidthlabError naming the
    function and the first line of its message (a study then stops once with it, instead of failing every run)."""
    if ":" not in name:
        return fn(**kwargs)
    try:
        return fn(**kwargs)
    except WidthlabError:
        raise
    except Exception as exc:
        raise WidthlabError(f"{what} {name!r} raised {first_line(exc)}") from None
