"""`CutSequential`: a chain of named stages whose every top-level child is a cut of the graph.

The CNN families are plain chains once their branching is kept inside blocks (a ResNet stage, an Inception
mixed block). Declaring them as an ``nn.Sequential`` lets the measurement engine run the rest of the network
from any top-level child (its fast batched ablation path, including the ``"all"`` scope), and `forward_from`
offers the same to any caller through the ``cut_layers`` protocol of `widthlab.measure.engine`.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from widthlab.errors import WidthlabError


class CutSequential(nn.Sequential):
    """An ``nn.Sequential`` of named children that lists its `unit_layers` and can run from any child.

    Args:
        layers: the children in execution order, by name.
        unit_layers: names of the children whose outputs are measured.

    Example: with ``h`` the output of child ``"relu1"`` in a pass on ``inputs``, ``net.forward_from("relu1", h)``
    is ``net(inputs)``:
        >>> net = CutSequential(OrderedDict(fc1=nn.Linear(4, 8), relu1=nn.ReLU(), fc2=nn.Linear(8, 2)), ["relu1"])
        >>> inputs = torch.randn(3, 4)
        >>> h = net.relu1(net.fc1(inputs))
        >>> torch.equal(net.forward_from("relu1", h), net(inputs))
        True
    """

    def __init__(self, layers: OrderedDict[str, nn.Module], unit_layers: list[str]):
        super().__init__(layers)
        self.unit_layers = list(unit_layers)

    @property
    def cut_layers(self) -> list[str]:
        """Every top-level child: the rest of the network sees the input only through its output."""
        return list(self._modules)

    def forward_from(self, layer: str, h: torch.Tensor) -> torch.Tensor:
        """Run the children after `layer` on its output `h` (batch size free) and return the scores."""
        names = list(self._modules)
        if layer not in names:
            raise WidthlabError(f"{layer!r} is not a cut of {type(self).__name__}; cuts: {', '.join(names)}")
        for module in list(self._modules.values())[names.index(layer) + 1:]:
            h = module(h)
        return h
