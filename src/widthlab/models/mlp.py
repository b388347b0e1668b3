"""The paper's MLP: one hidden ReLU layer of round(128 · width) units with bias, and a linear readout."""

from __future__ import annotations

import torch
from torch import nn

from widthlab.models.registry import check_positive_ints, register_model, scale_width


class MLP(nn.Module):
    """input (N, D) → fc1 → relu1 (N, H) → readout (N, num_classes). Unit layer: ``relu1``."""

    def __init__(self, input_dim: int, hidden: int, num_classes: int):
        super().__init__()
        self.fc1 = nn.Linear(input_dim, hidden)
        self.relu1 = nn.ReLU()
        self.readout = nn.Linear(hidden, num_classes)
        self.unit_layers = ["relu1"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.relu1(self.fc1(x.flatten(1))))


@register_model
def mlp(width: float = 1.0, *, input_dim: int = 10, hidden: int = 128, num_classes: int = 2) -> MLP:
    """One-hidden-layer ReLU MLP; 1x = 128 hidden units (paper appendix A)."""
    check_positive_ints("mlp", input_dim=input_dim, hidden=hidden, num_classes=num_classes)
    return MLP(input_dim, scale_width(hidden, width), num_classes)
