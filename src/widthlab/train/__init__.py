"""Training: `fit(model, splits, TrainConfig)` → `FitResult` (history, accuracies, status); `fit_group` trains
several runs of one architecture as one stacked model, with the same results."""

from widthlab.train.config import TrainConfig
from widthlab.train.loop import accuracy, fit, make_optimizer, resolve_device
from widthlab.train.progress import FitResult
from widthlab.train.vectorized import NotStackable, fit_group

__all__ = ["FitResult", "NotStackable", "TrainConfig", "accuracy", "fit", "fit_group", "make_optimizer",
           "resolve_device"]
