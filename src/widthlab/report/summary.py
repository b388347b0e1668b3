"""The written report: summary.md (what ran, results by width, verdict, hypothesis, calibration, figures),
verdict.csv, run_level.csv and, on request, the self-contained report.html."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from widthlab import files
from widthlab.errors import WidthlabError
from widthlab.report.figures.write import figure_formats, legacy_pdf, start_figures
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
from widthlab.report.caveats import caveat_lines, caveats, voided
from widthlab.report.frivolous import effective_width, growth, layer_counts
from widthlab.report.html import render_html
from widthlab.report.sections import Section, frivolous_section, selection_section, selection_table
from widthlab.report.verdict import calibration, hypothesis, hypothesis_word, run_level, verdict

HTML_NAME = "report.html"
# The tables `write_report` writes as NAME.csv.
TABLE_NAMES = ("verdict", "run_level", "caveats", "growth", "unit_counts", "selection", "compression_growth")
log = logging.getLogger(__name__)


def check_report_folder(out_dir: str | Path) -> None:
    """A WidthlabError naming the first path of a report in `out_dir` that holds the wrong kind of file (a file
    named figures, a directory named summary.md): raised before anything is drawn, not met midway as an OSError
    with some files rewritten and others not."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise WidthlabError(f"{str(out)!r} is a file, not a folder to write a report into; name a folder (--out)")
    if (out / FIGURE_DIR).exists() and not (out / FIGURE_DIR).is_dir():
        raise WidthlabError(f"{str(out / FIGURE_DIR)!r} is a file where the report keeps its {FIGURE_DIR} folder; "
                            "move it away and rerun")
    for name in ("summary.md", HTML_NAME, *(f"{table}.csv" for table in TABLE_NAMES)):
        if (out / name).is_dir():
            raise WidthlabError(f"{str(out / name)!r} is a directory where the report writes its {name}; move it "
                                "away and rerun")


def format_verdict_table(verdict_df: pd.DataFrame) -> str:
    """The verdict as an aligned plain-text table for the terminal.

    Args:
        verdict_df: the output of `verdict`.

    Example: ``logging.info("\\n%s", format_verdict_table(verdict(runs, metrics)))``; the tiny study's:
        >>> print(format_verdict_table(verdict(runs, metrics)))
        variant  metric             slope/doubling  95% CI              trend  runs  method
        -------  -----------------  --------------  ------------------  -----  ----  ------
        default  accuracy           +0.0312         [+0, +0.0625]       flat   4     runs
        default  robustness         -0.109          [-0.156, -0.0625]   down   4     runs
        default  compressibility    +0.0234         [-0.0156, +0.0625]  flat   4     runs
        default  similarity         +20.2           [+11.8, +28.6]      up     4     runs
        default  similar_fraction   +0.0601         [-0.0849, +0.205]   flat   4     runs
        default  similarity_excess  +20             [+11.6, +28.5]      up     4     runs
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


def _section_markdown(section: Section) -> list[str]:
    parts = [f"## {section.title}", "", section.text, ""]
    for header, rows in section.tables:
        parts += [_markdown_table(header, rows), ""]
    parts += [f"- {line}" for line in section.bullets]
    return [*parts, ""] if section.bullets else parts


def hypothesis_lines(verdict_df: pd.DataFrame, caveats_df: pd.DataFrame | None = None) -> list[str]:
    """One line per variant: whether the hypothesis holds, why, and the caveats that qualify it."""
    lines = []
    for r in hypothesis(verdict_df).itertuples(index=False):
        own = caveat_lines(caveats_df, r.variant) if caveats_df is not None else []
        study = caveat_lines(caveats_df) if caveats_df is not None else []
        warn = "".join(f" **Caveat: {c}.**" for c in [*study, *own])
        meaningless = " (not meaningful)" if caveats_df is not None and voided(caveats_df, r.variant) else ""
        lines.append(f"`{r.variant}`: {'**holds**' if r.holds else hypothesis_word(r)}{meaningless} — {r.reason}{warn}")
    return lines


def _summary_markdown(
    runs: pd.DataFrame,
    run_level_df: pd.DataFrame,
    verdict_df: pd.DataFrame,
    figures: Sequence[Path],
    title: str,
    config: Any,
    seed: int,
    notes: Sequence[str] = (),
    caveats_df: pd.DataFrame | None = None,
    sections: Sequence[Section] = (),
) -> str:
    """The text of summary.md; `figures` are the figure files to link (paths inside the report's figures folder)."""
    parts = [f"# {title}", "", "## What was run", "", *(f"- {line}" for line in [*census(runs), *notes]), "",
             "Only done runs enter the tables, figures and verdict.", "", "## Results by width", ""]
    if run_level_df.empty:
        parts += ["No run is done yet.", ""]
    else:
        parts += [
            "Mean ± std (ddof 0) over the done runs of each cell. Accuracy is test top-1; the other quantities "
            "(robustness = area under the zero-ablation curve) are averaged over the unit layers.",
            "",
            _markdown_table(["variant", "width", "runs", *results_columns(run_level_df)], results_rows(run_level_df)),
            "",
        ]
    study_caveats = caveat_lines(caveats_df) if caveats_df is not None else []
    parts += [
        "## Verdict",
        "",
        *([f"**Caveat: {c}.**" for c in study_caveats] + [""] if study_caveats else []),
        VERDICT_TEXT.format(resamples=RESAMPLES, seed=seed),
        "",
        _markdown_table(VERDICT_HEADER, verdict_rows(verdict_df)) if len(verdict_df) else "No verdict yet.",
        "",
        "## Hypothesis",
        "",
        HYPOTHESIS_TEXT,
        "",
    ]
    parts += [f"- {line}" for line in hypothesis_lines(verdict_df, caveats_df)] or ["No variant was judged."]
    parts += ["", "## Similarity calibration", "", CALIBRATION_TEXT, ""]
    parts += [
        f"- `{r.variant}`: similarity trend survives calibration: **{r.survives}** — {r.reason}"
        for r in calibration(verdict_df).itertuples(index=False)
    ] or ["No variant was judged."]
    for section in sections:
        parts += ["", *_section_markdown(section)]
    # Captions are keyed by the PNG's name; a report drawn without PNGs links its figures in their first format.
    files_by_stem = {Path(f).stem: Path(f).name for f in figures}
    names = [(caption, files_by_stem[Path(key).stem]) for key, caption in FIGURE_CAPTIONS.items()
             if Path(key).stem in files_by_stem]
    if names:
        caption, name = names[0]
        first = f"![{caption}]({FIGURE_DIR}/{name})" if name.endswith(".png") else f"[{caption}]({FIGURE_DIR}/{name})"
        parts += ["", "## Figures", "", first, ""]
        parts += [f"- [{caption}]({FIGURE_DIR}/{name})" for caption, name in names]
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

    Example:
        >>> path = write_summary(res.runs, res.metrics, "study/report", title="MLP σ sweep")
        >>> path, path.read_text().splitlines()[0]
        (PosixPath('study/report/summary.md'), '# MLP σ sweep')
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
    formats: str | Sequence[str] = ("png", "pdf"),
    notes: Sequence[str] = (),
    workers: int | None = None,
    pdf: bool | None = None,
    compression: pd.DataFrame | None = None,
    cka: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Write the whole report: figures/*.png and .pdf, summary.md, verdict.csv, run_level.csv, optionally report.html.

    The figures are drawn by worker processes (where CPUs are idle) while the verdict and tables are computed here.

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
        html: also write the self-contained report.html (default False); it embeds PNGs, so `formats` must hold png.
        formats: figure file formats, "png,pdf" or a sequence (default ("png", "pdf"); see `figure_formats`);
            summary.md links each figure in the first of them.
        notes: lines added under "What was run" in summary.md (e.g. stored runs left out of this grid).
        workers: figure-drawing processes (default None: one per idle CPU, at most 4; 1 draws in this process).
        pdf: deprecated; False is formats=("png",), True is ("png", "pdf").
        compression: `Results.compression` (`widthlab compress STUDY_DIR`); when it has rows the report adds the
            "Compression across widths" section, figures/compression.* and compression_growth.csv.
        cka: `Results.cka` (``measure.cka``, `widthlab cka STUDY_DIR`); when it has rows the report adds the
            "Representations across widths (CKA)" section and figures/cka_layers.*, figures/cka_width.*.

    Also writes, when they apply: caveats.csv (why a verdict may mean nothing), growth.csv (growth per doubling of
    the frivolous-unit counts), unit_counts.csv (per run and layer) and selection.csv (grid.select's choices).

    Returns a dict with keys figures (each figure's path in the first format), summary, verdict_csv,
    run_level_csv, html (path or None), verdict, hypothesis, calibration, caveats, growth and effective_width
    (DataFrames).

    Example: the report of the tiny study, its figures as PNG only:
        >>> written = write_report(res.runs, res.metrics, "study/report", title="MLP", html=True, formats="png")
        >>> written["html"], written["summary"], written["figures"][0]
        (PosixPath('study/report/report.html'), PosixPath('study/report/summary.md'),
         PosixPath('study/report/figures/accuracy.png'))
    """
    formats = figure_formats(legacy_pdf(formats, pdf))
    if html and "png" not in formats:
        raise WidthlabError(f"report.html embeds PNG figures: add png to the figure formats {','.join(formats)!r}, "
                            "or leave out --html")
    out = Path(out_dir)
    files.refuse_links(out)
    check_report_folder(out)
    # Temporary files of a report that was killed (its figures, summary, tables) are its own to clean up.
    for stale in (*files.remove_stale_temps(out), *files.remove_stale_temps(out / FIGURE_DIR)):
        log.info("removed %s, left by a process that died while writing it", stale)
    counts = layer_counts(runs, metrics)
    growth_df = growth(runs, metrics, resamples=RESAMPLES, seed=seed, counts=counts)
    drawing = start_figures(runs, metrics, out / FIGURE_DIR, snapshots=snapshots, history=history, params=params,
                            formats=formats, workers=workers, growth_df=growth_df)
    try:
        judged = _judge(runs, metrics, config, seed, growth_df, counts)
    finally:
        figures = drawing.paths()
    from widthlab.report.figures.compression import draw_compression

    section, compression_g, figure = draw_compression(runs, metrics, compression, out / FIGURE_DIR, formats, seed=seed)
    if section is not None:
        judged.sections.append(section)
        figures = [*figures, figure]
    from widthlab.report.figures.cka_study import draw_cka

    cka_part, cka_figures = draw_cka(runs, cka, out / FIGURE_DIR, formats)
    if cka_part is not None:
        judged.sections.append(cka_part)
        figures = [*figures, *cka_figures]
    summary = out / "summary.md"
    files.write_text(summary, _summary_markdown(runs, judged.run_level_df, judged.verdict_df, figures, title, config,
                                                seed, notes, judged.caveats_df, judged.sections))
    _write_tables(out, {"verdict": judged.verdict_df, "run_level": judged.run_level_df,
                        "caveats": judged.caveats_df, "growth": growth_df, "unit_counts": counts,
                        "selection": selection_table(runs), "compression_growth": compression_g})
    html_path = _write_html(out, runs, judged, figures, title, config, seed) if html else None
    return dict(figures=figures, summary=summary, verdict_csv=out / "verdict.csv",
                run_level_csv=out / "run_level.csv", html=html_path, verdict=judged.verdict_df,
                hypothesis=hypothesis(judged.verdict_df), calibration=calibration(judged.verdict_df),
                caveats=judged.caveats_df, growth=growth_df, effective_width=effective_width(growth_df))


@dataclass(frozen=True)
class _Judged:
    """What `write_report` computes while the figures are drawn."""

    run_level_df: pd.DataFrame
    verdict_df: pd.DataFrame
    caveats_df: pd.DataFrame
    sections: list[Section]


def _judge(runs: pd.DataFrame, metrics: pd.DataFrame, config: Any, seed: int, growth_df: pd.DataFrame,
           counts: pd.DataFrame) -> _Judged:
    """The run-level table, the verdict, the caveats and the extra sections of a report."""
    run_level_df = run_level(runs, metrics)
    verdict_df = verdict(runs, metrics, resamples=RESAMPLES, seed=seed)
    caveats_df = caveats(runs, config)
    sections = [s for s in (selection_section(runs), frivolous_section(runs, metrics, growth_df, counts))
                if s is not None]
    return _Judged(run_level_df, verdict_df, caveats_df, sections)


def _write_tables(out: Path, tables: dict[str, pd.DataFrame]) -> None:
    """Write each table as NAME.csv; verdict and run_level always, the others only when they have rows."""
    for name, table in tables.items():
        if name in ("verdict", "run_level") or len(table):
            with files.atomic_path(out / f"{name}.csv") as tmp:
                table.to_csv(tmp, index=False)
        else:
            (out / f"{name}.csv").unlink(missing_ok=True)  # a table of an earlier report that no longer applies


def _write_html(out: Path, runs: pd.DataFrame, judged: _Judged, figures: Sequence[Path], title: str, config: Any,
                seed: int) -> Path:
    """Write report.html, embedding the PNG of each figure; returns its path."""
    path = out / HTML_NAME
    pngs = [figure.with_suffix(".png") for figure in figures]
    files.write_text(path, render_html(runs, judged.run_level_df, judged.verdict_df, pngs, title=title, config=config,
                                       seed=seed, caveats_df=judged.caveats_df, sections=judged.sections))
    return path
