"""The report: figures, the statistical verdict, the similarity calibration, summary.md and report.html, from
the study's runs and metrics tables.

Works on plain pandas DataFrames (the study store's `runs` and `metrics`); imports nothing of study or train.
Of measure it reads one thing, the perturbation registry (`widthlab.measure.perturbations.PERTURBATIONS`), and
only in `figures.style` (`is_noise`, `perturbs_weights`): whether a perturbation's levels are σ multiples or
shares, and whether it perturbs weights, decide a curve's x axis, and a second list here would miss a newly
registered perturbation. measure imports nothing of report.
"""

from widthlab.report.caveats import caveats, chance_runs
from widthlab.report.combine import combine, combine_frames
from widthlab.report.figures import (
    FORMATS,
    ablation_curve_table,
    abs_r_table,
    figure_formats,
    plot_ablation_curves,
    plot_abs_r,
    plot_frivolous,
    plot_layerwise,
    plot_params,
    plot_similarity_calibration,
    plot_vs_epoch,
    plot_vs_width,
    start_figures,
    width_label,
    write_figures,
)
from widthlab.report.frivolous import effective_width, growth, layer_counts, run_counts
from widthlab.report.html import package_versions, render_html, run_times
from widthlab.report.sections import selection_table
from widthlab.report.summary import check_report_folder, format_verdict_table, write_report, write_summary
from widthlab.report.verdict import (
    calibration,
    done_runs,
    epoch_level,
    final_rows,
    hypothesis,
    hypothesis_word,
    layer_level,
    run_level,
    verdict,
)

__all__ = [
    "FORMATS",
    "ablation_curve_table",
    "abs_r_table",
    "calibration",
    "caveats",
    "chance_runs",
    "check_report_folder",
    "combine",
    "combine_frames",
    "done_runs",
    "effective_width",
    "epoch_level",
    "figure_formats",
    "final_rows",
    "format_verdict_table",
    "growth",
    "hypothesis",
    "hypothesis_word",
    "layer_counts",
    "layer_level",
    "package_versions",
    "plot_ablation_curves",
    "plot_abs_r",
    "plot_frivolous",
    "plot_layerwise",
    "plot_params",
    "plot_similarity_calibration",
    "plot_vs_epoch",
    "plot_vs_width",
    "render_html",
    "run_counts",
    "run_level",
    "run_times",
    "selection_table",
    "start_figures",
    "verdict",
    "width_label",
    "write_figures",
    "write_report",
    "write_summary",
]
