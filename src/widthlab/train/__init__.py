"""Training: `fit(model, splits, TrainConfig)` → `FitResult` (history, accuracies, status)."""

from widthlab.train.config import TrainConfig
from widthlab.train.loop import FitResult, accuracy, fit, make_optimizer, resolve_device

__all__ = ["FitResult", "TrainConfig", "accuracy", "fit", "make_optimizer", "resolve_device"]
