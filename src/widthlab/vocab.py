"""The names every layer of widthlab agrees on: metric names, table columns and the joint scope.

`measure/` writes rows with these names, `study/` stores them and `report/` reads them back; keeping them in one
module (which imports nothing) means a renamed metric cannot drift between the writer and its readers.
"""

# The layer name of the scope that perturbs every analysed layer at once (and of the whole-model rows).
JOINT_SCOPE = "all"

# `analyze`'s long-format columns; the store adds the epoch a row was measured at.
ANALYZE_COLUMNS = ("layer", "metric", "perturbation", "level", "sampling", "value")
STORED_METRIC_COLUMNS = (*ANALYZE_COLUMNS, "epoch")

# Redundancy (docs/metrics.md), one row each per layer and sampling.
REDUNDANCY_METRICS = ("n_units", "pcs_needed", "compressibility", "similarity", "similarity_live",
                      "similar_fraction", "silent_fraction", "constant_fraction")
# The histogram of |r| over unit pairs: one row per bin, the bin's centre in `level` (0.01, 0.03, ... for 50 bins).
HISTOGRAM_METRIC = "abs_r_count"
# Similarity calibration (sampling 0): the permutation null and observed − null on the same sampled rows.
NULL_METRICS = ("similarity_null", "similar_fraction_null", "similarity_excess")
# Class selectivity (sampling 0, with labels); the last two only with a training split.
SELECTIVITY_METRICS = ("selectivity", "selectivity_std", "unselective_fraction", "selectivity_train",
                       "selectivity_gen")
# Robustness: the area under a perturbation curve, and the curve's points (one row per level).
AUC_METRIC = "auc"
CURVE_METRICS = ("unchanged", "accuracy")
# Casper et al.'s frivolous units: prunable (from the ablation curves) and redundant (from the activations).
PRUNABILITY_METRICS = ("prunability", "prunable_units", "non_prunable_units")
REDUNDANT_METRICS = ("redundant_units", "non_redundant_units")
FRIVOLOUS_METRICS = (*PRUNABILITY_METRICS, *REDUNDANT_METRICS)
