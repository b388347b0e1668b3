"""What a network's graph says about its layers: which are cuts, and which Conv/Linear produces a layer's units.

**Cuts.** A layer is a *cut* when the model's output depends on the input only through the layer's output; the
perturbation engine may then run the network up to the layer once per batch and only the rest per perturbed
copy. A cut is proven in one of two ways:

- the model declares it: the layer is in ``model.cut_layers`` and ``model.forward_from(layer, h)`` runs the
  network from that layer's output ``h`` to the class scores;
- torch.fx graph dominance: the model is traced with ``torch.fx`` (the measured layers kept as single nodes); the
  layer's node is a cut when the backward closure of the output node, stopped at that node, reaches no
  placeholder (every path from the input to the output passes through it — so a use of the input's shape, such as
  ``x.view(x.size(0), -1)``, disproves it) and every node of the graph feeds the output (an unused node may act
  by side effect, such as an in-place op, which dataflow cannot see). The rest of the network is then the
  sub-graph of that closure, compiled as a ``GraphModule`` whose input is the layer's output.

A model that fx cannot trace (data-dependent control flow, for example) proves no cut by graph.

**Zero-commuting chains.** Zeroing some channels of a layer's output and then applying a module that acts
channel by channel and maps a zero channel to zero (ReLU, max or average pooling, eval-mode Dropout, Identity)
equals applying the module and then zeroing the same channels, exactly. When the graph shows such modules
following the layer one by one (each the only user of the one before), a zero ablation can be applied after
them, so they run once per batch instead of once per perturbed copy.

**Producers.** The Conv/Linear module that produces a layer's units is the layer itself when it is a Conv/Linear,
else found by one probe forward pass that records every leaf module's inputs and outputs: walking back from the
layer (for a container, from the leaf module whose output it returns) through modules that act unit by unit
(activations, BatchNorm/LayerNorm, Dropout, Identity), each taking as input exactly the tensor the previous module
returned, unchanged, until a Conv/Linear is reached. Anything else on the way (an addition, a concatenation, a
pooling) is a WidthlabError.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import fx, nn

from widthlab.errors import WidthlabError
from widthlab.measure.capture import RELU_LIKE, is_activation
from widthlab.measure.hooks import did_not_run, hooked, ran_twice
from widthlab.measure.inputs import Batch
from widthlab.measure.layout import is_hf_conv1d

# Modules between a Conv/Linear and the layer whose units it produces: they keep the unit axis (activations act unit
# by unit; BatchNorm and Dropout too in eval mode; a LayerNorm/GroupNorm/RMSNorm normalises across units, which
# the weights' perturbation then passes through as the network itself would).
PER_UNIT = (*RELU_LIKE, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
            nn.Dropout3d, nn.AlphaDropout, nn.Identity, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
# Modules that act channel by channel and map a zero channel to zero (see the module doc).
ZERO_COMMUTING = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
                  nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                  nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.Dropout, nn.Identity)
# Conv/Linear modules whose weight can be substituted exactly (`weighted_forward`).
PRODUCERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _is(module: object, kinds: tuple[type, ...]) -> bool:
    """True for an instance of one of `kinds` that keeps PyTorch's forward (a subclass may compute anything)."""
    return isinstance(module, kinds) and any(type(module).forward is kind.forward for kind in kinds)


def is_plain_producer(module: nn.Module) -> bool:
    """True for an nn.Linear / nn.Conv{1,2,3}d (or subclass) that keeps PyTorch's forward, or HF's Conv1D."""
    return _is(module, PRODUCERS) or is_hf_conv1d(module)


def _passes_units(module: nn.Module) -> bool:
    return _is(module, PER_UNIT) or is_activation(module)


def weighted_forward(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The output of plain Conv/Linear `module` on `x` with `weight` in place of its own (bias unchanged)."""
    if isinstance(module, nn.Linear):
        return nn.functional.linear(x, weight, module.bias)
    if is_hf_conv1d(module):  # x @ W + b with W stored (in, out), as HF's own forward
        out = torch.addmm(module.bias, x.reshape(-1, x.shape[-1]), weight)
        return out.view(*x.shape[:-1], weight.shape[1])
    return module._conv_forward(x, weight, module.bias)


# Cuts ---------------------------------------------------------------------------------------------------------------

class _LeafTracer(fx.Tracer):
    """The default fx tracer, but the named modules stay single ``call_module`` nodes (their hooks then fire)."""

    def __init__(self, leaves: Iterable[str]):
        super().__init__()
        self.leaves = set(leaves)

    def is_leaf_module(self, module: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or super().is_leaf_module(module, qualname)


def trace(model: nn.Module, leaves: Iterable[str]) -> fx.Graph | None:
    """The fx graph of `model` with `leaves` as single nodes, or None when fx cannot trace it.

    Trace in the mode the graph will run in: fx records the control flow a forward pass takes at trace time.

    Args:
        leaves: module names kept as ``call_module`` nodes (besides torch.nn's own modules).

    Example: the mlp's graph with ``relu1`` kept as one node:
        >>> graph = trace(model.eval(), ["relu1"])
        >>> [node.target for node in graph.nodes if node.op == "call_module"]
        ['fc1', 'relu1', 'readout']
    """
    try:
        return _LeafTracer(leaves).trace(model)
    except Exception:  # any trace failure (data-dependent control flow, unsupported ops) means "no proof"
        return None


def _closure(node: fx.Node, stop: fx.Node | None = None) -> set[fx.Node]:
    """`node` and every node it depends on, not looking past `stop`."""
    seen, stack = set(), [node]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        if current is not stop:
            stack.extend(current.all_input_nodes)
    return seen


def suffix_module(model: nn.Module, graph: fx.Graph, layer: str) -> fx.GraphModule | None:
    """``h -> scores``: the network after `layer`, when the graph proves `layer` a cut (see module doc), else None.

    Args:
        graph: `trace` of `model` with `layer` among the leaves.
        layer: a module name.

    Example: with ``h`` the output of ``stage2`` on ``images``, the network after it gives the model's scores:
        >>> net = create_model("resnet56_cifar", 0.25, depth=8).eval()
        >>> images = torch.randn(2, 3, 32, 32)
        >>> h = net.stage2(net.stage1(net.stem(images)))
        >>> torch.equal(suffix_module(net, trace(net, ["stage2"]), "stage2")(h), net(images))
        True
    """
    starts = [node for node in graph.nodes if node.op == "call_module" and node.target == layer]
    if len(starts) != 1:
        return None
    start = starts[0]
    output = next(node for node in reversed(graph.nodes) if node.op == "output")
    live = _closure(output)
    if any(node not in live for node in graph.nodes if node.op != "placeholder"):
        return None
    needed = _closure(output, stop=start)
    if start not in needed or any(node.op == "placeholder" for node in needed):
        return None
    sub = fx.Graph()
    env = {start: sub.placeholder("h")}
    for node in graph.nodes:  # graph order is execution order, so in-place ops keep their sequence
        if node in needed and node is not start:
            env[node] = sub.node_copy(node, env.__getitem__)
    return fx.GraphModule(model, sub)


def zero_commuting_chain(model: nn.Module, graph: fx.Graph, layer: str, avoid: Iterable[str] = ()) -> list[str]:
    """Names of the `ZERO_COMMUTING` modules that follow `layer` one by one in the graph (see module doc).

    Each is the only user of the node before it and takes it as its only argument; the chain stops before a
    module named in `avoid` (one whose output is measured) or one called at more than one node.

    Args:
        graph: `trace` of `model`; layer: a module name; avoid: module names the chain must not include.

    Example: AlexNet's first ReLU is followed by a max-pool, then a local response norm (which mixes channels):
        >>> alexnet = create_model("alexnet_cifar", 0.25).eval()
        >>> zero_commuting_chain(alexnet, trace(alexnet, ["conv1_relu"]), "conv1_relu")
        ['pool1']
    """
    modules = dict(model.named_modules())
    avoid = set(avoid)
    nodes = [node for node in graph.nodes if node.op == "call_module" and node.target == layer]
    chain = []
    while len(nodes) == 1 and len(nodes[0].users) == 1:
        user = next(iter(nodes[0].users))
        module = modules.get(user.target) if user.op == "call_module" else None
        if (not _is(module, ZERO_COMMUTING) or getattr(module, "return_indices", False)
                or user.target in avoid or user.args != (nodes[0],) or user.kwargs
                or sum(node.op == "call_module" and node.target == user.target for node in graph.nodes) != 1):
            break
        chain.append(user.target)
        nodes = [user]
    return chain


def declared_suffix(model: nn.Module, layer: str):
    """``h -> scores`` from ``model.forward_from`` when the model lists `layer` in ``cut_layers``, else None."""
    forward_from = getattr(model, "forward_from", None)
    if layer in (getattr(model, "cut_layers", None) or ()) and callable(forward_from):
        return lambda h: forward_from(layer, h)
    return None


# Producers ----------------------------------------------------------------------------------------------------------

@dataclass
class _Call:
    """One call of a leaf module during the probe: its input and output, with copies taken at the time."""

    name: str
    module: nn.Module
    leaf: bool
    args: tuple
    kwargs: dict
    input_value: torch.Tensor | None  # a copy of the single tensor argument, or None
    output: object
    output_value: object


@dataclass(frozen=True)
class Probe:
    """What one forward pass shows about the measured layers.

    Attributes:
        order: the layers in the order their outputs were produced.
        outputs: each layer's output (of the probe examples).
        chains: for each layer asked about, ``[producer, ..., last]``: the Conv/Linear module producing its units
            followed by the per-unit modules up to the one whose output is the layer's (the layer itself, or for
            a container such as ``Sequential(conv, bn, relu)`` its last module; ``[layer]`` for a Conv/Linear).
    """

    order: list[str]
    outputs: dict[str, object]
    chains: dict[str, list[str]]


def probe(model: nn.Module, batch: Batch | torch.Tensor, layers: Sequence[str],
          producers_of: Sequence[str] = ()) -> Probe:
    """Run `model` once on `batch`, recording each layer's output and order, and the producer chain of `producers_of`.

    Raises a WidthlabError naming a layer that runs twice or never, or a layer of `producers_of` that is not a
    Conv/Linear and does not follow one through per-unit modules (docs/metrics.md: weight perturbations act on the
    module producing the units).

    Args:
        batch: a few examples (a `Batch` or one input tensor, on the model's device); layers: module names;
            producers_of: those of `layers` whose producing Conv/Linear is wanted (default none: then only the
            layers are hooked).

    Example: ``relu1``'s units are produced by ``fc1``:
        >>> probe(model, Batch((x[:2],), {}), ["relu1"], ["relu1"]).chains
        {'relu1': ['fc1', 'relu1']}
    """
    if isinstance(batch, torch.Tensor):
        batch = Batch((batch,), {})
    modules = dict(model.named_modules())
    names = set(layers)
    # Producer chains need every leaf module's values; order and outputs only the layers'.
    record = bool(producers_of)
    watched = [name for name, module in modules.items()
               if name in names or (record and name and not any(True for _ in module.children()))]
    calls: list[_Call] = []
    pending: dict[str, list] = {}

    def before(name):
        def hook(module, args, kwargs):
            single = record and len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor)
            pending.setdefault(name, []).append((args, kwargs, args[0].detach().clone() if single else None))
        return hook

    def after(name):
        def hook(module, args, kwargs, output):
            args, kwargs, value = pending[name].pop()
            copy = output.detach().clone() if record and isinstance(output, torch.Tensor) else None
            leaf = not any(True for _ in module.children())
            calls.append(_Call(name, module, leaf, args, kwargs, value, output, copy))
        return hook

    with hooked(model, watched, pre=before, forward=after, with_kwargs=True):
        batch.run(model)
    for name in layers:
        count = sum(call.name == name for call in calls)
        if count == 0:
            raise WidthlabError(did_not_run([name]))
        if count > 1:
            raise WidthlabError(ran_twice(name))
    order = [call.name for call in calls if call.name in names]
    outputs = {call.name: call.output for call in calls if call.name in names}
    return Probe(order=order, outputs=outputs, chains={name: _chain(calls, name) for name in producers_of})


def _chain(calls: list[_Call], layer: str) -> list[str]:
    """``[producer, ..., module whose output is the layer's]`` by walking back from `layer`'s call (module doc)."""
    index = next(i for i, call in enumerate(calls) if call.name == layer)
    if not calls[index].leaf:  # a container's output is that of the last leaf module that returned it
        index = _source(calls, index, calls[index].output, calls[index].output_value,
                        f"the output of {layer!r} is not the output of one of its modules (an operation such as "
                        f"torch.cat made it), so no Conv/Linear produces its units")
    chain = [calls[index].name]
    while True:
        call = calls[index]
        if is_plain_producer(call.module):
            if sum(c.module is call.module for c in calls) != 1:
                raise WidthlabError(f"module {call.name!r}, which produces the units of {layer!r}, runs more than "
                                    "once per forward pass; its weights are not one layer's")
            if call.input_value is None:
                raise WidthlabError(f"module {call.name!r} producing {layer!r} takes more than one input")
            return chain
        if not _passes_units(call.module):
            raise WidthlabError(f"the units of {layer!r} are not produced by a Conv/Linear module: {call.name!r} is "
                                f"a {type(call.module).__name__}; weight perturbations need a Conv/Linear layer or "
                                "one that follows a Conv/Linear (or HF Conv1D) through activation, norm, Dropout or "
                                "Identity modules")
        if call.input_value is None:
            raise WidthlabError(f"{call.name!r} (before {layer!r}) does not take one tensor input")
        index = _source(calls, index, call.args[0], call.input_value,
                        f"the input of {call.name!r} (before {layer!r}) is not the output of a module (an operation "
                        f"such as torch.add made it), so no Conv/Linear produces the units of {layer!r}")
        chain.insert(0, calls[index].name)


def _source(calls: list[_Call], index: int, tensor: object, value: torch.Tensor | None, missing: str) -> int:
    """The last leaf call before call `index` that returned `tensor`, holding `value` unchanged; else an error."""
    found = next((i for i in range(index - 1, -1, -1) if calls[i].leaf and calls[i].output is tensor), None)
    if found is None:
        raise WidthlabError(missing)
    if value is None or not torch.equal(calls[found].output_value, value):
        raise WidthlabError(f"the output of {calls[found].name!r} is changed by an operation outside modules before "
                            f"{calls[index].name!r} reads it")
    return found
