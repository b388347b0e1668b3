"""Measurement of any PyTorch model: layer activations, redundancy, robustness and `analyze` (docs/metrics.md).

This package imports nothing of widthlab's training, study or report layers.
"""

from widthlab.measure.analyze import analyze, check_measurable
from widthlab.measure.capture import capture, default_layers, stream_activations
from widthlab.measure.cka import cka
from widthlab.measure.redundancy import (Moments, compressibility, pcs_needed, redundancy, redundancy_from_moments,
                                         similarity)
from widthlab.measure.curve import Curve, robustness_auc
from widthlab.measure.frivolous import frivolous_rows, prunability
from widthlab.measure.robustness import ablation_curve, perturbation_curve
from widthlab.measure.units import unit_table

__all__ = ["Curve", "Moments", "ablation_curve", "analyze", "capture", "check_measurable", "cka", "compressibility",
           "default_layers", "frivolous_rows", "pcs_needed", "prunability", "perturbation_curve", "redundancy", "redundancy_from_moments",
           "robustness_auc", "similarity", "stream_activations", "unit_table"]
