"""The paper's figures from the study tables.

Metric vs width (Figures 1, 3–5, C4–C6, C11–C14), ablation curves (Figure 2), |r| distributions (Figure B2),
metrics along training epochs (Figure C3), layerwise curves (Figures C7–C10), parameter counts (Figure A1) and
frivolous units, plus the similarity calibration (share of similar pairs, permutation null, excess).

Every error bar and band is ± std (ddof 0) over replicates, and the legend says so with the number of replicates
per point (`spread_note`). Legends never sit on data: an axes-level plot puts its legend right of its axes, a
figure with several panels puts one legend right of all of them, or below them where the panels are few and narrow
(`outside_legend`, `figure_legend`; `widthlab analyze`'s layer figures).
Accuracy against width gets a y axis zoomed to its data, as in paper Figure 1, and its label says so with the
range shown (`zoom_axis`): its changes with width are hundredths. Other shares (along training, ablation curves,
the similar fraction) get a y axis from 0 to 1.02 (`share_limits`), so a 0.001 difference never looks like a
collapse.

Figures are built as `matplotlib.figure.Figure` objects, not through pyplot, so no display or global backend
is involved (files are written by the Agg and PDF renderers) and nothing stays registered once they are saved.

Modules: `style` (what every figure shares: labels, the width axis, share axes, error-bar notes, legends),
`width` (metrics vs width, calibration, overview, layerwise, params), `curves` (ablation curves), `abs_r`
(|r| histograms), `epochs` (along training), `frivolous` (frivolous units) and `write` (which figures the data
allows, their formats, and the worker processes that draw them).
"""

from widthlab.report.figures.abs_r import abs_r_table, plot_abs_r
from widthlab.report.figures.curves import ablation_curve_table, plot_ablation_curves
from widthlab.report.figures.epochs import plot_vs_epoch
from widthlab.report.figures.frivolous import plot_frivolous
from widthlab.report.figures.style import share_limits, spread_note, width_label
from widthlab.report.figures.width import (
    plot_layerwise,
    plot_overview,
    plot_params,
    plot_similarity_calibration,
    plot_vs_width,
)
from widthlab.report.figures.write import (
    FORMATS,
    drawing_workers,
    figure_formats,
    start_figures,
    write_figures,
)

__all__ = [
    "FORMATS",
    "ablation_curve_table",
    "abs_r_table",
    "drawing_workers",
    "figure_formats",
    "plot_ablation_curves",
    "plot_abs_r",
    "plot_frivolous",
    "plot_layerwise",
    "plot_overview",
    "plot_params",
    "plot_similarity_calibration",
    "plot_vs_epoch",
    "plot_vs_width",
    "share_limits",
    "spread_note",
    "start_figures",
    "width_label",
    "write_figures",
]
