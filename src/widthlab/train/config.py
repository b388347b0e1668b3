"""`TrainConfig`: every training hyperparameter in one frozen, validated object."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Optimizer = Literal["momentum", "sgd", "adam", "rmsprop"]


class TrainConfig(BaseModel):
    """Hyperparameters of one training run (unknown keys are errors).

    Args:
        optimizer: ``momentum`` (SGD with `momentum`, default 0.9), ``sgd`` (no momentum), ``adam``, ``rmsprop``.
        lr: base learning rate (default 0.01); batch_size: base batch size (default 32).
        lr_batch_factor: the paper's joint factor k: learning rate × k and batch size × k (default 1).
        epochs: passes over the training split (default 50).
        weight_decay: L2 penalty added by the optimiser (default 0).
        rmsprop_alpha / eps: RMSProp's decay and the optimisers' epsilon (None = PyTorch's default).
        early_stopping: restore the weights of the epoch with the best validation accuracy (the paper's
            AlexNets); otherwise the final weights are kept.
        seed: seeds the batch order and any dropout; device: ``cpu``, ``cuda`` or ``auto``.

    Example: ``TrainConfig(optimizer="adam", lr=1e-3, epochs=10)``
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    optimizer: Optimizer = "momentum"
    lr: float = Field(0.01, gt=0)
    batch_size: int = Field(32, ge=1)
    lr_batch_factor: float = Field(1.0, gt=0)
    epochs: int = Field(50, ge=1)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    rmsprop_alpha: float = Field(0.99, gt=0, lt=1)
    eps: float | None = Field(None, gt=0)
    early_stopping: bool = False
    eval_batch_size: int = Field(1024, ge=1)
    seed: int = 0
    device: Literal["cpu", "cuda", "auto"] = "cpu"

    @property
    def effective_lr(self) -> float:
        """Learning rate after the joint factor k."""
        return self.lr * self.lr_batch_factor

    @property
    def effective_batch_size(self) -> int:
        """Batch size after the joint factor k (rounded, at least 1)."""
        return max(1, int(self.batch_size * self.lr_batch_factor + 0.5))
