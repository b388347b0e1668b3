"""Figure C3: metrics along training epochs, from the snapshot measurements and the training history."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from widthlab.errors import WidthlabError
from widthlab.report.figures.style import (
    AXIS_LABELS,
    TITLES,
    figure_legend,
    has_data,
    mean_std,
    note_entry,
    share_axis,
    spread_note,
    width_colours,
    width_label,
)

EPOCH_METRICS = ("robustness", "compressibility", "similarity")


def plot_vs_epoch(epoch_level_df: pd.DataFrame) -> Figure:
    """Figure C3: metrics along training epochs, one line per width (mean ± std over replicates).

    Rows are variants; columns are the quantities with data: accuracy (test_acc, else val_acc, from the
    training history, on a share axis), robustness, compressibility, similarity. Bands are ± std over
    replicates; the legend right of the panels says so with n per point (`spread_note`).

    Args:
        epoch_level_df: the output of `epoch_level` (run_id, variant, width, epoch and the quantities).

    Returns the figure.

    Example: the tiny study's snapshot after epoch 1, with the validation accuracy of its history:
        >>> from widthlab.report.verdict import epoch_level
        >>> figure = plot_vs_epoch(epoch_level(runs, res.snapshots, res.history))
        >>> figure.savefig("epochs.png")
        >>> [ax.get_title() for ax in figure.axes]
        ['(a) Accuracy', '(b) Robustness', '(c) Compressibility', '(d) Similarity']
    """
    if epoch_level_df.empty:
        raise WidthlabError("no snapshot measurements (metrics rows with an epoch) of a done run")
    accuracy = next((c for c in ("test_acc", "val_acc") if has_data(epoch_level_df, c)), None)
    quantities = [q for q in (accuracy, *EPOCH_METRICS) if q is not None and has_data(epoch_level_df, q)]
    if not quantities:
        raise WidthlabError(f"the snapshots hold none of {['accuracy', *EPOCH_METRICS]}")
    variants = list(pd.unique(epoch_level_df["variant"]))
    colours = width_colours(epoch_level_df["width"])
    fig = Figure(figsize=(4.2 * len(quantities) + 2.2, 3.4 * len(variants) + 0.4), layout="constrained")
    axes = fig.subplots(len(variants), len(quantities), sharex=True, squeeze=False)
    counts = []
    for i, variant in enumerate(variants):
        for j, quantity in enumerate(quantities):
            ax = axes[i, j]
            for width, colour in colours.items():
                rows = epoch_level_df[(epoch_level_df["variant"] == variant) & (epoch_level_df["width"] == width)]
                stats = mean_std(rows, "epoch", quantity)
                if stats.empty:
                    continue
                counts += list(stats["n"])
                ax.plot(stats.index, stats["mean"], marker=".", color=colour, label=width_label(width))
                ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"],
                                color=colour, alpha=0.15, linewidth=0)
            ax.set_title(f"({'abcd'[j]}) {TITLES[quantity]}" + (f" — {variant}" if len(variants) > 1 else ""))
            # The full labels of the width figures overflow a grid of panels; accuracy says which split it is.
            ax.set_ylabel(AXIS_LABELS[quantity] if quantity == accuracy else TITLES[quantity])
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if quantity == accuracy:
                share_axis(ax)
            if i == len(variants) - 1:
                ax.set_xlabel("Epoch")
    figure_legend(fig, axes.ravel(), "width", notes=[note_entry(spread_note(counts, mark="band"), "band")])
    return fig
