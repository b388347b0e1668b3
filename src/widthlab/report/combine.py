"""Several studies on one axis (e.g. Glorot vs LeCun vs He from three studies): their tables merged."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from widthlab.errors import WidthlabError


def prefixed(label: str, variant: object) -> str:
    """The variant name of a combined report: the study label, then the study's own variant.

    Args:
        label: the study's label; variant: its variant name.

    Example:
        >>> prefixed("he", "sigma=0.01")
        'he: sigma=0.01'
    """
    return f"{label}: {variant}"


def combine_frames(frames: Sequence[pd.DataFrame], labels: Sequence[str]) -> pd.DataFrame:
    """Stack one table per study (runs, metrics, history, snapshots …), prefixing run_id and variant by label.

    run_id becomes "LABEL/run_id" so runs of different studies never collide; variant (where the table has
    one) becomes "LABEL: variant" (`prefixed`).

    Args:
        frames: one DataFrame per study, each with a run_id column.
        labels: one distinct, non-empty label per study, in the same order.

    Example: the training histories of two studies (here the same one twice):
        >>> history = combine_frames([res.history, res.history], ["glorot", "he"])
        >>> len(history) == 2 * len(res.history), history["run_id"].iloc[0], history["run_id"].iloc[-1]
        (True, 'glorot/default-w0.25-r0', 'he/default-w0.5-r1')
    """
    labels = [str(label) for label in labels]
    if len(labels) != len(frames):
        raise WidthlabError(f"combining needs one label per study: {len(frames)} studies, {len(labels)} labels")
    if not frames:
        raise WidthlabError("combining needs at least one study")
    if any(not label for label in labels) or len(set(labels)) != len(labels):
        raise WidthlabError(f"study labels must be distinct and non-empty; got {labels}")
    parts = []
    for label, frame in zip(labels, frames):
        frame = frame.copy()
        for column in ("run_id", "run_a", "run_b"):  # run_a, run_b: the two runs of a CKA pair
            if column in frame.columns:
                frame[column] = label + "/" + frame[column].astype(str)
        if "variant" in frame.columns:
            frame["variant"] = [prefixed(label, v) for v in frame["variant"]]
        parts.append(frame)
    return pd.concat(parts, ignore_index=True)


def combine(results_list: Sequence, labels: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Merge the runs and metrics of several studies; each variant becomes "LABEL: variant".

    run_id is prefixed too ("LABEL/run_id"), so runs of different studies never collide. Works with anything
    that has `.runs` and `.metrics` DataFrames (the study store's `Results`); `combine_frames` merges its
    other tables (history, snapshots) the same way.

    Args:
        results_list: one results object per study.
        labels: one distinct, non-empty label per study, in the same order.

    Returns (runs, metrics) ready for `write_report`, `verdict` or the figures.

    Example: three studies (here the same one three times) as the variants of one report:
        >>> dirs = ["widthlab-runs/mlp-10d"] * 3
        >>> both_runs, both_metrics = combine([load_results(d) for d in dirs], ["glorot", "lecun", "he"])
        >>> both_runs["variant"].unique().tolist(), len(both_metrics) == 3 * len(res.metrics)
        (['glorot: default', 'lecun: default', 'he: default'], True)
    """
    return (combine_frames([r.runs for r in results_list], labels),
            combine_frames([r.metrics for r in results_list], labels))
