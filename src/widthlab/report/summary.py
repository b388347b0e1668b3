"""The written report: summary.md (what ran, results by width, verdict, hypothesis, figures) and verdict.csv."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from widthlab.report.figures import OVERVIEW_METRICS, width_label, write_figures
from widthlab.report.verdict import done_runs, hypothesis, run_level, verdict

RESAMPLES = 1000
FIGURE_DIR = "figures"
FIGURE_CAPTIONS = {
    "overview.png": "Overview: (a) accuracy, (b) robustness, (c) compressibility, (d) similarity",
    "accuracy.png": "Accuracy vs width",
    "robustness.png": "Robustness vs width",
    "compressibility.png": "Compressibility vs width",
    "similarity.png": "Similarity vs width",
    "ablation_curves.png": "Ablation curves (zero ablation, mean over unit layers)",
}
# Statuses always listed in the census, even at zero; others appear only when present.
MAIN_STATUSES = ("done", "failed", "diverged")
VERDICT_HEADER = ["variant", "metric", "slope/doubling", "95% CI", "trend", "runs", "method"]


def _number(value: float, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.3g}" if signed else f"{value:.3g}"


def _interval(low: float, high: float) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return "n/a"
    return f"[{_number(low, True)}, {_number(high, True)}]"


def _verdict_rows(verdict_df: pd.DataFrame) -> list[list[str]]:
    return [
        [str(r.variant), str(r.metric), _number(r.slope, True), _interval(r.ci_low, r.ci_high), str(r.trend),
         str(r.n_runs), str(r.method)]
        for r in verdict_df.itertuples(index=False)
    ]


def format_verdict_table(verdict_df: pd.DataFrame) -> str:
    """The verdict as an aligned plain-text table for the terminal.

    Args:
        verdict_df: the output of `verdict`.

    Example: ``logging.info("\\n%s", format_verdict_table(verdict(runs, metrics)))``.
    """
    rows = [VERDICT_HEADER, *_verdict_rows(verdict_df)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(VERDICT_HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        # A "|" inside a variant name would split the cell.
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in rows)])


def _census(runs: pd.DataFrame) -> list[str]:
    """The "what was run" bullet lines (all runs, whatever their status)."""
    variants = ", ".join(f"`{v}`" for v in pd.unique(runs["variant"])) or "none"
    widths = ", ".join(width_label(w) for w in sorted(runs["width"].astype(float).unique())) or "none"
    per_cell = runs.groupby(["variant", "width"]).size()
    cell_text = "none" if per_cell.empty else (
        str(per_cell.min()) if per_cell.min() == per_cell.max() else f"{per_cell.min()}–{per_cell.max()}"
    )
    replicates = ", ".join(str(r) for r in sorted(runs["replicate"].unique()))
    counts = runs["status"].value_counts()
    statuses = [*MAIN_STATUSES, *sorted(set(counts.index) - set(MAIN_STATUSES))]
    status_text = ", ".join(f"{int(counts.get(s, 0))} {s}" for s in statuses)
    lines = [
        f"- Variants: {variants}",
        f"- Widths: {widths}",
        f"- Runs per variant × width: {cell_text} (replicates {replicates or 'none'})",
        f"- Runs: {len(runs)} in all — {status_text}",
    ]
    if "seconds" in runs.columns:
        seconds = float(done_runs(runs)["seconds"].sum())
        lines.append(f"- Run time of the done runs: {seconds:.1f} s")
    return lines


def _results_rows(levels: pd.DataFrame) -> list[list[str]]:
    """Mean ± std (ddof 0) over the done runs of each variant × width."""
    rows = []
    for variant in pd.unique(levels["variant"]):
        for width, group in levels[levels["variant"] == variant].groupby("width"):
            cells = []
            for metric in OVERVIEW_METRICS:
                values = group[metric].dropna().to_numpy(float)
                cells.append(
                    f"{_number(values.mean())} ± {_number(np.std(values, ddof=0))}" if len(values) else "n/a"
                )
            rows.append([str(variant), width_label(width), str(len(group)), *cells])
    return rows


def _config_text(config: Any) -> str:
    """A resolved config (mapping, or pydantic model) as YAML; values YAML cannot hold become strings."""
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    plain = json.loads(json.dumps(config, default=str))
    return yaml.safe_dump(plain, sort_keys=False, allow_unicode=True).rstrip()


def _summary_markdown(
    runs: pd.DataFrame,
    levels: pd.DataFrame,
    verdict_df: pd.DataFrame,
    out: Path,
    title: str,
    config: Any,
    seed: int,
) -> str:
    """The text of summary.md; figure links only for figures present in `out`."""
    parts = [f"# {title}", "", "## What was run", "", *_census(runs), "",
             "Only done runs enter the tables, figures and verdict.", "", "## Results by width", ""]
    if levels.empty:
        parts += ["No run is done yet.", ""]
    else:
        parts += [
            "Mean ± std (ddof 0) over the done runs of each cell. Accuracy is test top-1; robustness (area under "
            "the zero-ablation curve), compressibility and similarity are averaged over the unit layers.",
            "",
            _markdown_table(["variant", "width", "runs", *OVERVIEW_METRICS], _results_rows(levels)),
            "",
        ]
    parts += [
        "## Verdict",
        "",
        f"Slope of each run's value on log2(width), i.e. the change per doubling of width, with a 95% bootstrap "
        f"interval ({RESAMPLES} resamples, seed {seed}). Trend: up if the interval is above 0, down if below, "
        "flat otherwise. Method: `runs` resamples runs within each width; `layers` resamples unit layers (one "
        "replicate per width); `none` means no interval could be drawn (fewer than two widths, or one replicate "
        "and fewer than two layers), so the trend is reported flat.",
        "",
        _markdown_table(VERDICT_HEADER, _verdict_rows(verdict_df)) if len(verdict_df) else "No verdict yet.",
        "",
        "## Hypothesis",
        "",
        "The robustness-redundancy hypothesis holds for a variant when accuracy is not down and robustness, "
        "compressibility or similarity is up.",
        "",
    ]
    parts += [
        f"- `{r.variant}`: {'**holds**' if r.holds else 'does not hold'} — {r.reason}"
        for r in hypothesis(verdict_df).itertuples(index=False)
    ] or ["No variant was judged."]
    figures = [name for name in FIGURE_CAPTIONS if (out / FIGURE_DIR / name).is_file()]
    if figures:
        parts += ["", "## Figures", "", f"![{FIGURE_CAPTIONS[figures[0]]}]({FIGURE_DIR}/{figures[0]})", ""]
        parts += [f"- [{FIGURE_CAPTIONS[name]}]({FIGURE_DIR}/{name})" for name in figures]
    if config is not None:
        parts += ["", "## Configuration", "", "```yaml", _config_text(config), "```"]
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
    """Write summary.md: what ran, mean ± std per variant × width, the verdict, the hypothesis, figure links.

    Figures are linked when they are already in `out_dir` (`write_report` writes them first).

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
    text = _summary_markdown(runs, run_level(runs, metrics), verdict_df, out, title, config, seed)
    path.write_text(text, encoding="utf-8")
    return path


def write_report(
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    out_dir: str | Path,
    *,
    title: str,
    config: Any = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Write the whole report: figures/*.png, summary.md, verdict.csv and run_level.csv.

    Args:
        runs: the runs table (all statuses; only done runs enter figures and verdict).
        metrics: the metrics table.
        out_dir: the folder to write into (created if missing).
        title: the report's heading.
        config: the study's resolved config, appended to summary.md; default None.
        seed: the verdict's bootstrap seed (default 0).

    Returns a dict with keys figures (list of paths), summary, verdict_csv, run_level_csv (paths),
    verdict and hypothesis (DataFrames).

    Example: ``write_report(results.runs, results.metrics, "study/report", title="MLP")["verdict"]``.
    """
    out = Path(out_dir)
    figures = write_figures(runs, metrics, out / FIGURE_DIR)
    levels = run_level(runs, metrics)
    verdict_df = verdict(runs, metrics, resamples=RESAMPLES, seed=seed)
    summary = out / "summary.md"
    summary.write_text(_summary_markdown(runs, levels, verdict_df, out, title, config, seed), encoding="utf-8")
    verdict_csv = out / "verdict.csv"
    verdict_df.to_csv(verdict_csv, index=False)
    run_level_csv = out / "run_level.csv"
    levels.to_csv(run_level_csv, index=False)
    return {
        "figures": figures,
        "summary": summary,
        "verdict_csv": verdict_csv,
        "run_level_csv": run_level_csv,
        "verdict": verdict_df,
        "hypothesis": hypothesis(verdict_df),
    }
