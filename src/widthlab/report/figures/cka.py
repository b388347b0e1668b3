"""The layer × layer CKA heatmap of `widthlab.cka`'s table (`widthlab analyze MODEL --cka`).

Drawn from the DataFrame alone (report/ knows no models), as a `matplotlib.figure.Figure` without pyplot, like
every other widthlab figure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from widthlab import files

DPI = 150
ANNOTATE_UP_TO = 16  # layers per side whose cells get their value written in them; more would be unreadable


def cka_matrix(frame: pd.DataFrame) -> pd.DataFrame:
    """The ``cka`` column as a layer_a × layer_b matrix, both axes in the order the layers first appear."""
    rows = list(dict.fromkeys(frame["layer_a"]))
    cols = list(dict.fromkeys(frame["layer_b"]))
    return frame.pivot(index="layer_a", columns="layer_b", values="cka").loc[rows, cols]


def plot_cka(frame: pd.DataFrame, title: str | None = None) -> Figure:
    """A heatmap of CKA, 0 (dark) to 1 (bright), model A's layers down, model B's across, input side first.

    The colour scale is fixed to [0, 1] so two heatmaps can be compared by eye; a debiased value slightly below 0
    (the estimator's noise around an unrelated pair) is drawn as 0 and the colour bar's end says values lie
    below. A NaN cell (a constant layer) is left blank.

    Example: a network's layer × layer CKA:
        >>> net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
        >>> figure = plot_cka(widthlab.cka(net, None, x))
        >>> figure.savefig("cka.png")
        >>> figure.axes[0].get_title(), figure.axes[1].get_ylabel()
        ('linear CKA on 200 examples', 'CKA (debiased)')
    """
    matrix = cka_matrix(frame)
    n_rows, n_cols = matrix.shape
    side = min(12.0, 2.5 + 0.45 * max(n_rows, n_cols))
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    values = matrix.to_numpy(dtype=float)
    image = ax.imshow(np.ma.masked_invalid(values), vmin=0.0, vmax=1.0, cmap="magma", interpolation="nearest")
    estimator = ", ".join(sorted(set(frame["estimator"])))
    below = bool(np.nanmin(values) < 0) if np.isfinite(values).any() else False
    fig.colorbar(image, ax=ax, label=f"CKA ({estimator})", extend="min" if below else "neither", shrink=0.8)
    ax.set_xticks(range(n_cols), matrix.columns, rotation=90)
    ax.set_yticks(range(n_rows), matrix.index)
    same = list(matrix.index) == list(matrix.columns)
    ax.set(xlabel="layer" if same else "layer of model B", ylabel="layer" if same else "layer of model A")
    examples = int(frame["examples"].iloc[0]) if len(frame) else 0
    ax.set_title(title or f"linear CKA on {examples:,} examples")
    if max(n_rows, n_cols) <= ANNOTATE_UP_TO:
        for i in range(n_rows):
            for j in range(n_cols):
                if np.isfinite(values[i, j]):
                    ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if values[i, j] > 0.6 else "white")
    return fig


def write_cka_figure(frame: pd.DataFrame, path: str | Path) -> Path:
    """Draw `plot_cka` into `path` (PNG, written atomically; its folder created if missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = plot_cka(frame)
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    fig.clear()
    return path
