"""The report: figures, the statistical verdict and summary.md, from the study's runs and metrics tables.

Works on plain pandas DataFrames (the study store's `runs` and `metrics`); imports nothing of study, train or
measure.
"""

from widthlab.report.figures import (
    ablation_curve_table,
    plot_ablation_curves,
    plot_vs_width,
    width_label,
    write_figures,
)
from widthlab.report.summary import format_verdict_table, write_report, write_summary
from widthlab.report.verdict import done_runs, hypothesis, layer_level, run_level, verdict

__all__ = [
    "ablation_curve_table",
    "done_runs",
    "format_verdict_table",
    "hypothesis",
    "layer_level",
    "plot_ablation_curves",
    "plot_vs_width",
    "run_level",
    "verdict",
    "width_label",
    "write_figures",
    "write_report",
    "write_summary",
]
