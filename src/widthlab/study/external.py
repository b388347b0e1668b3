"""Models and inputs a user already has, for `widthlab analyze`.

A model is named by one of:
- a widthlab checkpoint (``.pt`` written by a study or by `fit(..., checkpoint=...)`): rebuilt from its stored
  model spec and loaded with the weights the run was measured with;
- ``module:function``: imported and called with no arguments; it must return an ``nn.Module``;
- ``torchvision:NAME`` or ``timm:NAME``: built by that package (random weights, nothing is downloaded) when it
  is installed.

Inputs are named by a registered data set (`widthlab.data.list_data()`, options via ``--data-opt``) or a
``.pt`` file holding a tensor of inputs, a ``(inputs, labels)`` pair or a ``{"x": ..., "y": ...}`` mapping.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from widthlab.data import load_data
from widthlab.data.base import ArrayDataset
from widthlab.errors import WidthlabError
from widthlab.models import create_model
from widthlab.models.registry import resolve_callable
from widthlab.train.checkpoint import load_checkpoint, trained_weights

HUBS = ("torchvision", "timm")


def load_model(spec: str) -> nn.Module:
    """The model named by `spec` (see the module docstring), in eval mode on the CPU."""
    path = Path(spec)
    if spec.endswith((".pt", ".pth")) or path.is_file():
        return _from_checkpoint(path)
    hub, _, name = spec.partition(":")
    if hub in HUBS and name:
        return _from_hub(hub, name)
    if ":" in spec:
        model = resolve_callable(spec, "model")()
        if not isinstance(model, nn.Module):
            raise WidthlabError(f"model {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
        return model.eval()
    raise WidthlabError(f"model {spec!r} is neither a checkpoint file, 'module:function', nor "
                        f"'torchvision:NAME' / 'timm:NAME'")


def _from_checkpoint(path: Path) -> nn.Module:
    state = load_checkpoint(path)
    meta = state.get("meta") or {}
    if "model" not in meta or "width" not in meta:
        raise WidthlabError(f"checkpoint {str(path)!r} does not say how to rebuild its model (no meta.model)")
    spec = dict(meta["model"])
    name, init, sigma = spec.pop("name"), spec.pop("init", "glorot_normal"), spec.pop("sigma", None)
    model = create_model(name, meta["width"], init=init, sigma=sigma, num_classes=meta.get("num_classes"), **spec)
    model.load_state_dict(trained_weights(state))
    return model.eval()


def _from_hub(hub: str, name: str) -> nn.Module:
    try:
        package = importlib.import_module(hub)
    except ImportError:
        raise WidthlabError(f"model '{hub}:{name}' needs the {hub} package, which is not installed") from None
    except Exception as exc:  # e.g. torchvision built for another torch fails at import with a RuntimeError
        raise WidthlabError(f"{hub} is installed but does not import here ({type(exc).__name__}: {exc})") from None
    try:
        model = package.models.get_model(name, weights=None) if hub == "torchvision" else \
            package.create_model(name, pretrained=False)
    except Exception as exc:
        raise WidthlabError(f"{hub} cannot build {name!r}: {exc}") from None
    return model.eval()


def load_inputs(spec: str, *, split: str = "test", seed: int = 0, root: str | None = None,
                options: dict | None = None):
    """The evaluation inputs named by `spec`: a registry data set's split, or a ``.pt`` file."""
    path = Path(spec)
    if spec.endswith(".pt") or path.is_file():
        if not path.is_file():
            raise WidthlabError(f"input file {spec!r} does not exist")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise WidthlabError(f"{spec!r} is not a readable tensor file ({type(exc).__name__}: {exc})") from None
        if isinstance(obj, torch.Tensor):
            return obj
        if isinstance(obj, (tuple, list)) and len(obj) == 2:
            return ArrayDataset(*obj)
        if isinstance(obj, dict) and "x" in obj:
            return ArrayDataset(obj["x"], obj["y"]) if "y" in obj else obj["x"]
        raise WidthlabError(f"{spec!r} must hold a tensor, an (inputs, labels) pair or a dict with 'x' (and 'y')")
    return load_data(spec, root=root, seed=seed, **(options or {})).split(split)
