"""widthlab: how wide networks stay accurate, measured: robustness and redundancy versus width.

Public API (docs/api.md): models (`create_model`, `list_models`), data (`load_data`), measurement
(`capture`, `cka`, `pcs_needed`, `compressibility`, `similarity`, `redundancy`, `perturbation_curve`,
`ablation_curve`, `robustness_auc`, `analyze`, `unit_table`), compression (`compress` → `Compressed`,
`load_compressed`, `compress_study`) and studies (`run_study` → `StudyOutcome`, `load_results`).
"""

from widthlab.compress import Compressed, compress, compress_study, load_compressed
from widthlab.data import Splits, load_data
from widthlab.errors import WidthlabError
from widthlab.measure import (
    Curve,
    ablation_curve,
    analyze,
    capture,
    cka,
    compressibility,
    pcs_needed,
    perturbation_curve,
    redundancy,
    robustness_auc,
    similarity,
    unit_table,
)
from widthlab.models import create_model, list_models
from widthlab.study import Results, StudyOutcome, load_results, run_study
from widthlab.train import TrainConfig, fit, fit_group
from widthlab.version import __version__ as __version__

__all__ = [
    "Compressed", "Curve", "Results", "Splits", "StudyOutcome", "TrainConfig", "WidthlabError", "ablation_curve", "analyze",
    "capture", "cka", "compress", "compress_study", "compressibility", "create_model", "fit", "fit_group", "list_models", "load_compressed", "load_data", "load_results",
    "pcs_needed", "perturbation_curve", "redundancy", "robustness_auc", "run_study", "similarity", "unit_table",
]
