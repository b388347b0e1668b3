"""A model from its stored spec: the one place a study's run, its preflight, its parameter counts and
`widthlab analyze` of a checkpoint turn a model section back into an `nn.Module`.

A stored spec is data, not code: a ``module:function`` model it names is imported only with ``import_code``
(the user's own config, or ``--allow-code``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch
from torch import nn

from widthlab.errors import WidthlabError
from widthlab.memory import check_memory, weight_bytes
from widthlab.models import create_model
from widthlab.study.config import ModelSpec, validated
from widthlab.train.checkpoint import checkpoint_meta, trained_weights

log = logging.getLogger("widthlab")


def model_spec(spec: ModelSpec | Mapping[str, Any]) -> ModelSpec:
    """`spec` as a validated `ModelSpec` (a stored mapping such as a checkpoint's ``meta["model"]``); one that
    no longer validates is one WidthlabError."""
    if isinstance(spec, ModelSpec):
        return spec
    if not isinstance(spec, Mapping):
        raise WidthlabError(f"a model section must be a mapping, got {type(spec).__name__}")
    return validated(ModelSpec, spec, f"model section {dict(spec)!r} does not validate")


def build_model(spec: ModelSpec | Mapping[str, Any], width: float, *, num_classes: int | None = None,
                seed: int | None = None, device: str | torch.device | None = None,
                import_code: bool = True) -> nn.Module:
    """The model `spec` names at `width`, initialised as it says (with `seed`, its own draws).

    Args:
        spec: a model section (`ModelSpec`, or the mapping a store or checkpoint keeps).
        num_classes: the readout's size (None: the family's default).
        device: build under this device context; ``"meta"`` gives shapes without storage (a 4x Inception-v3
            costs no memory), and skips the initialisation.
        import_code: False refuses a ``module:function`` model (a store or a checkpoint names it).

    Example: a 2x mlp's shapes, without storage:
        >>> net = build_model({"name": "mlp", "input_dim": 10}, 2.0, device="meta")
        >>> net.fc1.weight.shape, net.fc1.weight.device
        (torch.Size([256, 10]), device(type='meta'))
    """
    spec = model_spec(spec)
    if ":" in spec.name and not import_code:
        raise WidthlabError(f"the model {spec.name!r} is a module:function named by stored data, which widthlab "
                            "does not import; allow it with --allow-code")
    options = dict(init=spec.init, sigma=spec.sigma, num_classes=num_classes, seed=seed, **spec.options)
    if device is None:
        return create_model(spec.name, width, **options)
    with torch.device(device):
        return create_model(spec.name, width, **options)


def checkpoint_model(state: dict[str, Any], path: str, *, import_code: bool) -> nn.Module:
    """The model a study checkpoint's ``meta`` describes, with the weights its run was measured with.

    The model is built on the ``meta`` device first: weights that do not fit it (an edited ``meta.width``,
    ``input_dim`` or ``num_classes``) and a model too big for memory are one WidthlabError before anything of
    that size is allocated. `state` is a `load_checkpoint`; `import_code` as for `build_model`.
    """
    meta = checkpoint_meta(state, path)
    if "model" not in meta or "width" not in meta:
        raise WidthlabError(f"checkpoint {path!r} does not say how to rebuild its model (no meta.model)")
    where = f"checkpoint {path!r}"
    options = dict(num_classes=meta.get("num_classes"), import_code=import_code)
    try:
        shapes = build_model(meta["model"], meta["width"], device="meta", **options)
    except WidthlabError as exc:
        raise WidthlabError(f"{where}: {exc}") from None
    except Exception:  # a user's model (imported with --allow-code) that cannot be built on meta: built below
        shapes = None
    weights = trained_weights(state)
    if shapes is not None:
        wanted = {name: tuple(value.shape) for name, value in shapes.state_dict().items()}
        stored = {name: tuple(value.shape) for name, value in weights.items()}
        wrong = [f"{name} is {stored.get(name, 'missing')} in the file, {shape} in the model" for name, shape in
                 wanted.items() if stored.get(name) != shape] + [f"{name} is not in the model" for name in stored
                                                                if name not in wanted]
        if wrong:
            raise WidthlabError(f"{where}: its weights do not fit the model its meta describes "
                                f"({meta['model'].get('name')} at width {meta['width']:g}): {wrong[0]}"
                                f"{f' (and {len(wrong) - 1} more)' if len(wrong) > 1 else ''}; was it edited?")
        check_memory(weight_bytes(shapes), "cpu", f"the model of {where}", "analyze it on a larger machine")
    try:
        model = build_model(meta["model"], meta["width"], **options)
    except WidthlabError as exc:
        raise WidthlabError(f"{where}: {exc}") from None
    model.load_state_dict(weights)
    return model


def expected_input(model: nn.Module) -> str | None:
    """What the model's first Linear, Conv or Embedding module takes, for shape-mismatch messages (None: unknown)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            return f"its first layer {name!r} (Linear) takes {module.in_features} features"
        if isinstance(module, nn.modules.conv._ConvNd):
            return f"its first layer {name!r} ({type(module).__name__}) takes {module.in_channels} channels"
        if isinstance(module, nn.Embedding):
            return f"its first layer {name!r} (Embedding) takes token ids below {module.num_embeddings}"
    return None


def parameter_count(model: nn.Module, *, trainable: bool = False) -> int:
    """The number of parameters of `model` (with `trainable`, only those that require a gradient)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def parameter_counts(runs: pd.DataFrame, *, import_code: bool = False) -> pd.DataFrame | None:
    """Trainable parameters per model and width (paper Figure A1), built on the meta device from each variant's
    stored model config; None (the figure is skipped) when a model cannot be built there.

    The readout has the model's default number of classes: the data set is not loaded just to count it. A store
    is data, not code: a ``module:function`` model named in it is imported only with `import_code` (the user's
    own config, or ``widthlab report --allow-code``); otherwise the figure is skipped.
    """
    rows = []
    for (variant, width), group in runs.groupby(["variant", "width"], sort=False):
        stored = json.loads(group["config"].iloc[0]).get("model")
        name = str(stored.get("name")) if isinstance(stored, Mapping) else repr(stored)
        if ":" in name and not import_code:
            log.warning("parameter counts skipped: the store names user code %r, which is imported only with "
                        "--allow-code", name)
            return None
        try:
            model = build_model(stored, float(width), device="meta")
        except Exception as exc:  # a section that no longer validates (a family registered in another session,
            # an option an upgrade removed), or a user's model that does not build on meta: the figure is optional
            log.info("parameter counts skipped: %s cannot be built on meta: %s", name, exc)
            return None
        rows.append(dict(variant=variant, name=name, width=float(width),
                         params=parameter_count(model, trainable=True)))
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    # One line per model, unless variants change its architecture: then one per variant.
    per_variant = frame.groupby(["name", "width"])["params"].nunique().gt(1).any()
    frame["model"] = frame["name"] + (" (" + frame["variant"].astype(str) + ")" if per_variant else "")
    return frame[["model", "width", "params"]].drop_duplicates()
