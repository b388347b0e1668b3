"""The written report: summary.md (what ran, results by width, verdict, hypothesis, calibration, figures),
verdict.csv, run_level.csv and, on request, the self-contained report.html."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from widthlab import files
from widthlab.report.figures import write_figures
from widthlab.report.format import (
    CALIBRATION_TEXT,
    FIGURE_CAPTIONS,
    FIGURE_DIR,
    HYPOTHESIS_TEXT,
    RESAMPLES,
    VERDICT_HEADER,
    VERDICT_TEXT,
    census,
    config_text,
    results_columns,
    results_rows,
    verdict_rows,
)
from widthlab.report.html import render_html
from widthlab.report.verdict import calibration, hypothesis, run_level, verdict

HTML_NAME = "report.html"


def format_verdict_table(verdict_df: pd.DataFrame) -> str:
    """The verdict as an aligned plain-text table for the terminal.

    Args:
        verdict_df: the output of `verdict`.

    Example: ``logging.info("\\n%s", format_verdict_table(verdict(runs, metrics)))``.
    """
    rows = [VERDICT_HEADER, *verdict_rows(verdict_df)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(VERDICT_HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        # A "|" inside a variant name would split the cell.
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in rows)])


def _summary_markdown(
    runs: pd.DataFrame,
    levels: pd.DataFrame,
    verdict_df: pd.DataFrame,
    figures: Sequence[Path],
    title: str,
    config: Any,
    seed: int,
    notes: Sequence[str] = (),
) -> str:
    """The text of summary.md; `figures` are the PNGs to link (paths inside the report's figures folder)."""
    parts = [f"# {title}", "", "## What was run", "", *(f"- {line}" for line in [*census(runs), *notes]), "",
             "Only done runs enter the tables, figures and verdict.", "", "## Results by width", ""]
    if levels.empty:
        parts += ["No run is done yet.", ""]
    else:
        parts += [
            "Mean ± std (ddof 0) over the done runs of each cell. Accuracy is test top-1; the other quantities "
            "(robustness = area under the zero-ablation curve) are averaged over the unit layers.",
            "",
            _markdown_table(["variant", "width", "runs", *results_columns(levels)], results_rows(levels)),
            "",
        ]
    parts += [
        "## Verdict",
        "",
        VERDICT_TEXT.format(resamples=RESAMPLES, seed=seed),
        "",
        _markdown_table(VERDICT_HEADER, verdict_rows(verdict_df)) if len(verdict_df) else "No verdict yet.",
        "",
        "## Hypothesis",
        "",
        HYPOTHESIS_TEXT,
        "",
    ]
    parts += [
        f"- `{r.variant}`: {'**holds**' if r.holds else 'does not hold'} — {r.reason}"
        for r in hypothesis(verdict_df).itertuples(index=False)
    ] or ["No variant was judged."]
    parts += ["", "## Similarity calibration", "", CALIBRATION_TEXT, ""]
    parts += [
        f"- `{r.variant}`: similarity trend survives calibration: **{r.survives}** — {r.reason}"
        for r in calibration(verdict_df).itertuples(index=False)
    ] or ["No variant was judged."]
    names = [name for name in FIGURE_CAPTIONS if name in {Path(f).name for f in figures}]
    if names:
        parts += ["", "## Figures", "", f"![{FIGURE_CAPTIONS[names[0]]}]({FIGURE_DIR}/{names[0]})", ""]
        parts += [f"- [{FIGURE_CAPTIONS[name]}]({FIGURE_DIR}/{name})" for name in names]
    if config is not None:
        parts += ["", "## Configuration", "", "```yaml", config_text(config), "```"]
    return "\n".join(parts) + "\n"


def write_summary(
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    out_dir: str | Path,
    *,
    title: str,
    config: Any = None,
    seed: int = 0,
) -> Path:
    """Write summary.md: what ran, mean ± std per variant × width, the verdict, the hypothesis, the similarity
    calibration and links to the figures already in `out_dir`/figures (`write_report` writes them first).

    Args:
        runs: the runs table (all statuses; only done runs enter results and verdict).
        metrics: the metrics table.
        out_dir: the folder to write into (created if missing).
        title: the report's heading.
        config: the study's resolved config (mapping or pydantic model), appended as YAML; default None (omitted).
        seed: the verdict's bootstrap seed (default 0).

    Returns the path of summary.md.

    Example: ``write_summary(results.runs, results.metrics, "study/report", title="MLP σ sweep")``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    verdict_df = verdict(runs, metrics, resamples=RESAMPLES, seed=seed)
    path = out / "summary.md"
    figures = sorted((out / FIGURE_DIR).glob("*.png"))
    files.write_text(path, _summary_markdown(runs, run_level(runs, metrics), verdict_df, figures, title, config,
                                             seed))
    return path


def write_report(
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    out_dir: str | Path,
    *,
    title: str,
    config: Any = None,
    seed: int = 0,
    snapshots: pd.DataFrame | None = None,
    history: pd.DataFrame | None = None,
    params: pd.DataFrame | None = None,
    html: bool = False,
    pdf: bool = True,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """Write the whole report: figures/*.png (+ .pdf), summary.md, verdict.csv, run_level.csv, optionally report.html.

    Args:
        runs: the runs table (all statuses; only done runs enter figures and verdict).
        metrics: the metrics table (rows with an `epoch`, if it has that column, count as snapshots).
        out_dir: the folder to write into (created if missing).
        title: the report's heading.
        config: the study's resolved config, appended to summary.md and report.html; default None.
        seed: the verdict's bootstrap seed (default 0).
        snapshots: measurements along training (metrics columns plus `epoch`) for the epochs figure (paper
            C3); default None (the epoch rows of `metrics`, if any).
        history: per-epoch training records (run_id, epoch, val_acc, ...) for the epochs figure; default None.
        params: model/width/params rows for the parameter figure (paper A1); default None (not drawn).
        html: also write the self-contained report.html (default False).
        pdf: also write each figure as PDF (default True).
        notes: lines added under "What was run" in summary.md (e.g. stored runs left out of this grid).

    Returns a dict with keys figures (list of PNG paths), summary, verdict_csv, run_level_csv, html (path or
    None), verdict, hypothesis and calibration (DataFrames).

    Example: ``write_report(results.runs, results.metrics, "study/report", title="MLP", html=True)["html"]``.
    """
    out = Path(out_dir)
    figures = write_figures(runs, metrics, out / FIGURE_DIR, snapshots=snapshots, history=history, params=params,
                            pdf=pdf)
    levels = run_level(runs, metrics)
    verdict_df = verdict(runs, metrics, resamples=RESAMPLES, seed=seed)
    summary = out / "summary.md"
    files.write_text(summary, _summary_markdown(runs, levels, verdict_df, figures, title, config, seed, notes))
    verdict_csv = out / "verdict.csv"
    with files.atomic_path(verdict_csv) as tmp:
        verdict_df.to_csv(tmp, index=False)
    run_level_csv = out / "run_level.csv"
    with files.atomic_path(run_level_csv) as tmp:
        levels.to_csv(tmp, index=False)
    html_path = None
    if html:
        html_path = out / HTML_NAME
        text = render_html(runs, levels, verdict_df, figures, title=title, config=config, seed=seed)
        files.write_text(html_path, text)
    return {
        "figures": figures,
        "summary": summary,
        "verdict_csv": verdict_csv,
        "run_level_csv": run_level_csv,
        "html": html_path,
        "verdict": verdict_df,
        "hypothesis": hypothesis(verdict_df),
        "calibration": calibration(verdict_df),
    }
