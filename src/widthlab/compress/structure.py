"""Where a unit layer's units live in the weights: the producer, what lies between, the consumer.

A unit of a layer is one output row (Linear) or output channel (Conv) of the weight layer that **produces** it,
carried through per-unit modules (BatchNorm, activations, dropout, pooling, flatten) to the weight layer that
**consumes** it (its input columns or in-channels). Removing a unit removes that row, those BatchNorm entries and
those columns, so the model really gets smaller.

The path is read from a torch.fx trace (`find_path`). It is a **chain** when every node from the producer to the
consumer has one user and every module on it acts on each unit alone: then widthlab shrinks it itself
(`shrink_chain`). A node with two users or a residual add/concat is a **coupling**: the producer's channels are
tied to other layers' channels, and only a dependency graph (Torch-Pruning, `widthlab[compress]`) can remove them
consistently. A module that mixes units (LocalResponseNorm) keeps the chain shrinkable, but a removed unit's
activity cannot be folded into the consumer (the kept units' normalisation changes), so merging falls back to
pruning there (`ChainPath.mixing`).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn

from widthlab.errors import WidthlabError, first_line
from widthlab.measure.capture import RELU_LIKE

WEIGHTS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Modules that act on each unit (channel) alone and hold no per-unit parameters.
PER_UNIT = (*[kind for kind in RELU_LIKE if kind is not nn.PReLU], nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Softplus,
            nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity,
            nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
            nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
            nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
MIXING = (nn.LocalResponseNorm,)  # shrinkable (no parameters) but couples neighbouring channels' activity
PER_UNIT_FUNCTIONS = {torch.relu, torch.nn.functional.relu, torch.tanh, torch.sigmoid, torch.nn.functional.gelu}
PER_UNIT_METHODS = {"relu", "tanh", "sigmoid", "contiguous"}
COUPLING_FUNCTIONS = {operator.add, operator.iadd, torch.add, torch.cat, torch.concat, operator.mul, torch.mul}


@dataclass
class ChainPath:
    """One unit layer's path through the weights.

    Attributes:
        layer: the unit layer's name; units: its unit count (the producer's outputs).
        producer, consumer: module names of the weight layers that make and read the units.
        between: names of the modules after the producer and before the consumer (per-unit, mixing or flatten).
        norms: the BatchNorm modules among them (sliced with the units).
        mixing: the first module between that mixes units (merging falls back to pruning), or None.
        coupled: None for a chain; else a one-line reason (a residual add, a node with two users): the producer's
            channels are tied to other layers' and only a dependency graph can shrink them.
    """

    layer: str
    units: int
    producer: str
    consumer: str | None = None
    between: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    mixing: str | None = None
    coupled: str | None = None


def trace(model: nn.Module) -> fx.Graph:
    """The torch.fx graph of `model`; a model fx cannot trace (data-dependent control flow) is one WidthlabError."""
    try:
        return fx.symbolic_trace(model).graph
    except Exception as exc:
        raise WidthlabError(f"cannot compress {type(model).__name__}: torch.fx cannot trace it to find which weights "
                            f"hold each unit ({first_line(exc)})") from None


def _layer_node(graph: fx.Graph, layer: str) -> fx.Node:
    """The node whose output is the module `layer`'s output: its own call, or the last node run inside it."""
    last = None
    for node in graph.nodes:
        if node.op == "call_module" and node.target == layer:
            return node
        stack = node.meta.get("nn_module_stack") or {}
        if any(key == layer or str(key).startswith(layer + ".") for key in stack) or \
                (node.op == "call_module" and str(node.target).startswith(layer + ".")):
            last = node
    if last is None:
        raise WidthlabError(f"layer {layer!r} does not run in the traced forward pass")
    return last


def _describe(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    return f"{node.name} ({getattr(node.target, '__name__', node.target)})"


def _kind(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """``weight``, ``norm``, ``per_unit``, ``mixing``, ``flatten``, ``coupling``, ``output`` or ``other``."""
    if node.op == "call_module":
        module = modules[node.target]
        if isinstance(module, WEIGHTS):
            return "weight"
        if isinstance(module, NORMS):
            return "norm"
        if isinstance(module, nn.PReLU):
            return "per_unit" if module.num_parameters == 1 else "other"
        if isinstance(module, PER_UNIT):
            return "per_unit"
        if isinstance(module, MIXING):
            return "mixing"
        if isinstance(module, nn.Flatten):
            return "flatten" if module.start_dim == 1 and module.end_dim == -1 else "other"
        return "other"
    if node.op == "call_function":
        if node.target in PER_UNIT_FUNCTIONS:
            return "per_unit"
        if node.target is torch.flatten:
            return "flatten" if tuple(node.args[1:]) in ((1,), (1, -1)) or node.kwargs.get("start_dim") == 1 \
                else "other"
        if node.target in COUPLING_FUNCTIONS:
            return "coupling"
    if node.op == "call_method":
        if node.target in PER_UNIT_METHODS:
            return "per_unit"
        if node.target == "flatten":
            return "flatten" if tuple(node.args[1:]) in ((1,), (1, -1)) else "other"
        if node.target in ("add", "add_", "mul", "mul_"):
            return "coupling"
    if node.op == "output":
        return "output"
    return "other"


def _weight_units(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def find_path(model: nn.Module, graph: fx.Graph, layer: str) -> ChainPath:
    """The `ChainPath` of unit layer `layer` (a module name), read from `graph` (`trace(model)`).

    Walks back from the layer's output through per-unit modules to its producer, then forward from the producer
    to the first weight layer that reads it. A coupling on the way (a residual add, a node read twice) is recorded
    in ``coupled`` (the caller decides: Torch-Pruning or a refusal); a module that neither acts per unit nor is
    understood is a WidthlabError naming it.
    """
    modules = dict(model.named_modules())
    node = _layer_node(graph, layer)
    coupled = None
    # Back to the producer.
    while _kind(node, modules) != "weight":
        kind = _kind(node, modules)
        if kind == "coupling":
            coupled = coupled or f"{_describe(node)} joins {layer!r}'s channels with another branch"
        elif kind not in ("per_unit", "norm", "mixing"):
            raise WidthlabError(f"cannot compress layer {layer!r}: walking back to the weights that produce it, "
                                f"{_describe(node)} is neither a weight layer nor acts on each unit alone")
        inputs = [arg for arg in node.args if isinstance(arg, fx.Node)]
        if not inputs or inputs[0].op == "placeholder":
            raise WidthlabError(f"cannot compress layer {layer!r}: no Linear or Conv layer produces its units "
                                "(it reads the model's input)")
        node = inputs[0]
    producer = modules[node.target]
    if isinstance(producer, nn.modules.conv._ConvNd) and producer.groups != 1:
        raise WidthlabError(f"cannot compress layer {layer!r}: its producer {node.target!r} is a grouped "
                            f"convolution (groups={producer.groups}), whose channels are tied in groups")
    path = ChainPath(layer, _weight_units(producer), node.target, coupled=coupled)
    # Forward to the consumer.
    while True:
        users = list(node.users)
        if len(users) != 1:
            if not users:
                raise WidthlabError(f"cannot compress layer {layer!r}: {_describe(node)} has no user")
            path.coupled = path.coupled or (f"{_describe(node)} is read by {len(users)} nodes "
                                            f"({', '.join(_describe(u) for u in users)})")
            return path
        user = users[0]
        kind = _kind(user, modules)
        if kind == "weight":
            consumer = modules[user.target]
            tensor_args = [arg for arg in user.args if isinstance(arg, fx.Node)]
            if tensor_args != [node]:
                path.coupled = path.coupled or f"{_describe(user)} reads more than {_describe(node)}"
            if isinstance(consumer, nn.modules.conv._ConvNd) and consumer.groups != 1:
                raise WidthlabError(f"cannot compress layer {layer!r}: its consumer {user.target!r} is a grouped "
                                    f"convolution (groups={consumer.groups})")
            path.consumer = user.target
            break
        if kind == "output":
            raise WidthlabError(f"cannot compress layer {layer!r}: its units are the model's output (no weight layer "
                                "reads them, so removing one changes the output's shape)")
        if kind == "coupling":
            path.coupled = path.coupled or f"{_describe(user)} joins {layer!r}'s channels with another branch"
            return path
        if kind == "other":
            raise WidthlabError(f"cannot compress layer {layer!r}: {_describe(user)} between {path.producer!r} and "
                                "the next weight layer is not a module widthlab knows to act on each unit alone")
        if kind == "mixing" and path.mixing is None:
            path.mixing = _describe(user)
        if kind == "norm":
            path.norms.append(user.target)
        path.between.append(_describe(user))
        node = user
    return path


# Shrinking ------------------------------------------------------------------------------------------------------------

def _param(tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor.detach().clone().contiguous())


@torch.no_grad()
def shrink_chain(model: nn.Module, path: ChainPath, keep: torch.Tensor) -> None:
    """Remove from `model` (in place) every unit of `path` not in `keep` (sorted indices): the producer's output
    rows/channels, the BatchNorm entries between and the consumer's input columns (all positions of a flattened
    channel) or in-channels."""
    modules = dict(model.named_modules())
    producer, consumer = modules[path.producer], modules[path.consumer]
    keep = keep.to(device=producer.weight.device, dtype=torch.long)
    producer.weight = _param(producer.weight[keep])
    if producer.bias is not None:
        producer.bias = _param(producer.bias[keep])
    if isinstance(producer, nn.Linear):
        producer.out_features = len(keep)
    else:
        producer.out_channels = len(keep)
    for name in path.norms:
        norm = modules[name]
        if norm.weight is not None:
            norm.weight, norm.bias = _param(norm.weight[keep]), _param(norm.bias[keep])
        if norm.running_mean is not None:
            norm.running_mean = norm.running_mean[keep].clone()
            norm.running_var = norm.running_var[keep].clone()
        norm.num_features = len(keep)
    if isinstance(consumer, nn.Linear):
        positions = consumer.in_features // path.units
        columns = (keep[:, None] * positions + torch.arange(positions, device=keep.device)).reshape(-1)
        consumer.weight = _param(consumer.weight[:, columns])
        consumer.in_features = len(columns)
    else:
        consumer.weight = _param(consumer.weight[:, keep])
        consumer.in_channels = len(keep)
    path.units = len(keep)


def consumer_view(consumer: nn.Module, units: int, weight: torch.Tensor) -> torch.Tensor:
    """The consumer's weight as (outputs, units, positions…): a Linear reading a flattened channel-first tensor has
    ``in_features / units`` columns per unit (channel-major, as ``flatten`` lays them out)."""
    if isinstance(consumer, nn.Linear):
        if consumer.in_features % units:
            raise WidthlabError(f"the consumer Linear reads {consumer.in_features} features, not a multiple of the "
                                f"{units} units that feed it")
        return weight.reshape(weight.shape[0], units, consumer.in_features // units)
    return weight


def check_paths(paths: Sequence[ChainPath]) -> None:
    """Two layers of one chain (a unit layer and its own producer's layer, e.g. ``fc1`` and ``fc1_relu``) share
    their units: naming both would remove units twice; one line naming them."""
    by_producer: dict[str, str] = {}
    for path in paths:
        if path.producer in by_producer:
            raise WidthlabError(f"layers {by_producer[path.producer]!r} and {path.layer!r} hold the same units (both "
                                f"produced by {path.producer!r}); compress one of them")
        by_producer[path.producer] = path.layer
