"""What every figure shares: axis labels and titles, the log2 width axis and its colours, share axes, the
± std notes of error bars and bands, and legends right of the data (see the package docstring)."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from widthlab.measure.perturbations import PERTURBATIONS

AXIS_LABELS = {
    "accuracy": "Test accuracy (top-1)",
    "robustness": "Robustness (area under ablation curve)",
    "compressibility": "Compressibility (1 − PCs for 95% variance / units)",
    "similarity": "Similarity (similar units per unit, |r| ≥ 0.5)",
    "similar_fraction": "Similar fraction (similarity / (units − 1))",
    "similarity_null": "Similarity of the permutation null",
    "similar_fraction_null": "Similar fraction of the permutation null",
    "similarity_excess": "Similarity excess (observed − permutation null)",
    "val_acc": "Validation accuracy (top-1)",
    "test_acc": "Test accuracy (top-1)",
}
TITLES = {
    "accuracy": "Accuracy",
    "robustness": "Robustness",
    "compressibility": "Compressibility",
    "similarity": "Similarity",
    "similar_fraction": "Similar fraction",
    "similarity_null": "Similarity null",
    "similar_fraction_null": "Similar fraction null",
    "similarity_excess": "Similarity excess",
    "val_acc": "Accuracy",
    "test_acc": "Accuracy",
}
# The permutation null drawn (dashed) beside each similarity quantity.
NULLS = {"similarity": "similarity_null", "similar_fraction": "similar_fraction_null"}
WIDTH_LABEL = "Model size factor (width)"
DPI = 150
# Quantities in [0, 1] (accuracies, shares of pairs) drawn on a share axis (`share_limits`).
SHARE_METRICS = frozenset({"accuracy", "val_acc", "test_acc", "similar_fraction", "similar_fraction_null"})
SHARE_RANGE = (0.0, 1.02)
# Data whose highest point is below this would be a flat line along the bottom of (0, 1.02): zoom in.
SQUASHED_BELOW = 0.25
SHARE_PAD = 0.05
# Accuracy against width is drawn on an axis zoomed to the data (`zoomed_limits`), as paper Figure 1 does: the
# verdict's "accuracy up" is a change of ~0.01–0.02, a flat line on (0, 1.02). ZOOM_MARGIN is the padding as a
# share of the data's range; ZOOM_MIN_SPAN keeps a 0.001 difference from filling the axis.
ZOOMED_METRICS = frozenset({"accuracy"})
ZOOM_MARGIN = 0.1
ZOOM_MIN_SPAN = 0.01


def width_label(width: float) -> str:
    """The paper's name for a width factor: 0.25 → "1/4", 0.75 → "3/4", 2 → "2"; others as a short decimal.

    Fractions are used only for power-of-two denominators (the paper's halvings), so 0.3 stays "0.3".

    Args:
        width: a width factor > 0.

    Example:
        >>> width_label(0.5), width_label(0.75), width_label(2), width_label(0.3)
        ('1/2', '3/4', '2', '0.3')
    """
    fraction = Fraction(float(width)).limit_denominator(64)
    power_of_two = fraction.denominator & (fraction.denominator - 1) == 0
    if not (power_of_two and np.isclose(float(fraction), width, rtol=1e-9, atol=0)):
        return f"{width:g}"
    return str(fraction.numerator) if fraction.denominator == 1 else f"{fraction.numerator}/{fraction.denominator}"


# The one place report reads measure (see widthlab.report's docstring): its registry says how to label a curve.
def is_noise(perturbation: str) -> bool:
    """Whether the perturbation's levels are σ multiples (registered as noise), not shares in [0, 1]."""
    spec = PERTURBATIONS.get(perturbation)
    return spec is not None and spec.noise


def perturbs_weights(perturbation: str) -> bool:
    """Whether the perturbation perturbs the weights of the module producing a layer, not its units."""
    spec = PERTURBATIONS.get(perturbation)
    return spec is not None and spec.weights


def width_axis(ax: Axes, widths) -> None:
    """A log2 width axis with a tick (labelled "1/4", "1/2", "1", …) at each measured width."""
    ax.set_xscale("log", base=2)
    ticks = sorted(set(float(w) for w in widths))
    if ticks:
        ax.set_xticks(ticks, [width_label(w) for w in ticks])
        ax.minorticks_off()
    ax.set_xlabel(WIDTH_LABEL)


def width_colours(widths) -> dict[float, tuple]:
    """A viridis colour per width, spaced on log2(width) so halvings look evenly apart."""
    widths = sorted(set(float(w) for w in widths))
    low, high = np.log2(widths[0]), np.log2(widths[-1])
    norm = Normalize(low, high if high > low else low + 1)
    # viridis ends in a pale yellow that vanishes on white; stop at its green.
    return {w: colormaps["viridis"](0.85 * norm(np.log2(w))) for w in widths}


def share_limits(values) -> tuple[float, float]:
    """The y range of an accuracy or share axis: (0, 1.02), or where every value is below 0.25 (it would be a
    flat line along the bottom) the data's range padded by 0.05 and clipped to (0, 1.02).

    The padding is in units of the share, not of the data's range, so a 0.001 difference stays small.

    Args:
        values: the plotted values (means ± std); NaNs are ignored.

    Example:
        >>> share_limits([0.9, 0.95]), share_limits([0.02, 0.04])
        ((0.0, 1.02), (0.0, 0.09))
    """
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if not len(values) or values.max() >= SQUASHED_BELOW:
        return SHARE_RANGE
    low, high = SHARE_RANGE
    return max(low, float(values.min()) - SHARE_PAD), min(high, float(values.max()) + SHARE_PAD)


def share_axis(*axes: Axes) -> None:
    """An accuracy or share y axis: `share_limits` of the y data drawn on `axes` (lines, error bars, bands),
    set on each of them."""
    limits = share_limits(_drawn_y(axes))
    for ax in axes:
        ax.set_ylim(*limits)


def zoomed_limits(values) -> tuple[float, float]:
    """The y range of an axis zoomed to its data: the data's range padded by ZOOM_MARGIN of it on each side,
    widened about its centre to at least ZOOM_MIN_SPAN, clipped to SHARE_RANGE when the data lies within it.

    Why zoom: accuracy changes with width by hundredths (paper Figure 1 spans the data's range); on a 0–1 axis
    the trend the verdict reports cannot be seen. The minimum span keeps noise of a thousandth from looking like
    a trend; `zoom_axis` says on the axis that it is zoomed.

    Args:
        values: the plotted values (means ± std); NaNs are ignored.

    Example:
        >>> zoomed_limits([0.91, 0.93]), zoomed_limits([0.5])
        ((0.908, 0.932), (0.495, 0.505))
    """
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if not len(values):
        return SHARE_RANGE
    low, high = float(values.min()), float(values.max())
    pad = max(ZOOM_MARGIN * (high - low), (ZOOM_MIN_SPAN - (high - low)) / 2)
    low, high = low - pad, high + pad
    if SHARE_RANGE[0] <= values.min() and values.max() <= SHARE_RANGE[1]:
        low, high = max(low, SHARE_RANGE[0]), min(high, SHARE_RANGE[1])
    return low, high


def _drawn_y(axes) -> np.ndarray:
    """Every y value drawn on `axes`: lines, error bars and bands."""
    values = [np.ravel(line.get_ydata()) for ax in axes for line in ax.get_lines()]
    values += [path.vertices[:, 1] for ax in axes for drawn in ax.collections for path in drawn.get_paths()]
    return np.concatenate(values).astype(float) if values else np.array([])


def zoom_axis(ax: Axes) -> None:
    """Zoom the y axis to the data drawn on `ax` (`zoomed_limits`) and add to its label that it is zoomed, with
    the range shown, so nobody reads the lowest tick as 0. Without data it is a plain share axis, unlabelled."""
    values = _drawn_y([ax])
    low, high = zoomed_limits(values)
    ax.set_ylim(low, high)
    if not np.isfinite(values).any():
        return
    ax.set_ylabel(f"{ax.get_ylabel()}\nzoomed to the data: {low:.3f}–{high:.3f}")


def spread_note(counts, over: str = "replicates", mark: str = "error bar") -> str:
    """What the error bars (or bands) are: "error bars: ± std over replicates (n = 3)".

    n is the number of values behind each point: "n = 2–3" when it differs between points, and
    "n = 1, no error bar" when every point has one.

    Args:
        counts: the number of values behind each plotted point.
        over: what the std is over (default "replicates"; "samplings" for one analysed model).
        mark: "error bar" (default) or "band".

    Example:
        >>> spread_note([3, 3, 2], mark="band")
        'bands: ± std over replicates (n = 2–3)'
        >>> spread_note([1, 1])
        'error bars: ± std over replicates (n = 1, no error bar)'
    """
    counts = sorted({int(c) for c in counts if c > 0})
    if not counts:
        return ""
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    single = f", no {mark}" if counts == [1] else ""
    return f"{mark}s: ± std over {over} (n = {n}{single})"


def note_entry(note: str, mark: str = "error bar") -> tuple:
    """A grey legend entry (handle, label) explaining the error bars (a bar glyph) or bands (a pale patch)."""
    if mark == "band":
        return Patch(facecolor="grey", alpha=0.15), note
    return Line2D([], [], color="grey", marker="|", markersize=12, markeredgewidth=1.5, linestyle="none"), note


def point_counts(data: pd.DataFrame, by: list[str], columns) -> list[int]:
    """The number of non-NaN values of each column per group of `by`: the n behind each plotted point."""
    return [int(n) for column in columns if column in data.columns
            for n in data.dropna(subset=[column]).groupby(by)[column].size()]


def has_data(frame: pd.DataFrame, column: str) -> bool:
    return column in frame.columns and bool(np.isfinite(frame[column].to_numpy(float)).any())


def mean_std(values: pd.DataFrame, by: str, column: str) -> pd.DataFrame:
    """Mean, std (ddof 0) and count n of `column` per value of `by`, sorted by it."""
    return (values.dropna(subset=[column]).groupby(by)[column]
            .agg(mean="mean", std=lambda v: float(np.std(v, ddof=0)), n="size").sort_index())


def _entries(axes, with_null: bool, notes: Sequence[tuple]) -> tuple[list, list[str]]:
    """The legend entries of `axes` (one per label), then "permutation null" and the notes (`note_entry`)."""
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if with_null:
        # One grey entry explains every dashed line instead of doubling the variant entries.
        entries["permutation null"] = Line2D([], [], color="grey", linestyle="--", marker="x")
    for handle, label in notes:
        if label:
            entries[label] = handle
    return list(entries.values()), list(entries)


def outside_legend(ax: Axes, title: str, with_null: bool = False, notes: Sequence[tuple] = ()) -> None:
    """The legend of an axes-level plot, right of its axes (constrained layout makes room), never on its data."""
    handles, labels = _entries([ax], with_null, notes)
    ax.legend(handles, labels, title=title, fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1),
              borderaxespad=0)


def figure_legend(fig: Figure, axes, title: str, with_null: bool = False, notes: Sequence[tuple] = (), *,
                  ncols: int | None = None) -> None:
    """One legend for all panels of `fig`, right of them (the figure must use constrained layout).

    Args:
        ncols: put the legend below the panels in this many columns instead (default None: right of them); a
            figure of one or two narrow panels would otherwise spend its width on a legend column.
    """
    handles, labels = _entries(axes, with_null, notes)
    if not handles:
        return
    if ncols is None:
        fig.legend(handles, labels, title=title, fontsize="small", loc="outside right upper")
    else:
        fig.legend(handles, labels, title=title, fontsize="small", loc="outside lower center", ncols=ncols)
