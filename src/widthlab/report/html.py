"""report.html: the whole report in one self-contained file (figures as base64 PNG data URIs, inline CSS).

It opens offline, can be mailed or attached to a paper's supplement, and carries what reproducing the study
needs: the configuration, the package versions and the run times.
"""

from __future__ import annotations

import base64
import html
import platform
import re
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from widthlab.report.caveats import caveat_lines
from widthlab.report.figures.style import width_label
from widthlab.report.format import (
    CALIBRATION_TEXT,
    FIGURE_CAPTIONS,
    HYPOTHESIS_TEXT,
    RESAMPLES,
    VERDICT_HEADER,
    VERDICT_TEXT,
    census,
    config_text,
    number,
    results_columns,
    results_rows,
    verdict_rows,
)
from widthlab.report.verdict import calibration, done_runs, hypothesis, hypothesis_word

PACKAGES = ("widthlab", "torch", "numpy", "pandas", "matplotlib")
RUN_TIME_COLUMNS = ("variant", "width", "runs", "total_s", "mean_s", "median_s", "min_s", "max_s")
STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1150px;
       padding: 0 1rem; color: #1d232a; background: #fff; }
h1 { font-size: 1.7rem; margin-bottom: .3rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #d0d7de; }
nav a { margin-right: .9rem; } code, pre { font-family: ui-monospace, Menlo, Consolas, monospace; }
table { border-collapse: collapse; margin: .6rem 0; } th, td { padding: .25rem .6rem; border: 1px solid #d0d7de; }
th { background: #f3f5f7; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.up { background: #dff3e4; font-weight: 600; } td.down { background: #fbe1e1; font-weight: 600; }
td.flat { color: #57606a; } .caveat { color: #9a3412; }
figure { margin: 1.2rem 0; } figure img { max-width: 100%; border: 1px solid #e4e8eb; }
figcaption { color: #57606a; font-size: .92rem; }
pre { background: #f6f8fa; padding: .8rem; overflow-x: auto; font-size: .85rem; }
""".strip()


def package_versions() -> dict[str, str]:
    """Installed versions of widthlab, torch, numpy, pandas, matplotlib and Python ("not installed" if absent).

    Read from the package metadata, so torch is not imported just to be named.

    Example:
        >>> versions = package_versions()
        >>> sorted(versions), versions["numpy"] == np.__version__
        (['matplotlib', 'numpy', 'pandas', 'python', 'torch', 'widthlab'], True)
    """
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["python"] = platform.python_version()
    return versions


def run_times(runs: pd.DataFrame) -> pd.DataFrame:
    """Seconds per done run summarised per variant × width, with a last row over all done runs.

    Args:
        runs: the runs table (a `seconds` column; only status "done" rows count).

    Returns a DataFrame with columns variant, width, runs, total_s, mean_s, median_s, min_s, max_s (variant and
    width "all" in the last row); empty when no done run has a time.

    Example: two runs per width, then all four:
        >>> times = run_times(res.runs)
        >>> times[["variant", "width", "runs"]].values.tolist()
        [['default', '1/4', 2], ['default', '1/2', 2], ['all', 'all', 4]]
        >>> bool(np.isclose(times["total_s"].iloc[-1], res.runs["seconds"].sum()))
        True
    """
    done = done_runs(runs)
    if "seconds" not in done.columns:
        return pd.DataFrame(columns=list(RUN_TIME_COLUMNS))
    done = done.dropna(subset=["seconds"])

    def summary(variant: str, width: str, seconds: np.ndarray) -> dict:
        return dict(variant=variant, width=width, runs=len(seconds), total_s=seconds.sum(), mean_s=seconds.mean(),
                    median_s=float(np.median(seconds)), min_s=seconds.min(), max_s=seconds.max())

    rows = [summary(str(variant), width_label(width), group["seconds"].to_numpy(float))
            for (variant, width), group in done.groupby(["variant", "width"], sort=False)]
    if rows:
        rows.append(summary("all", "all", done["seconds"].to_numpy(float)))
    return pd.DataFrame(rows, columns=list(RUN_TIME_COLUMNS))


def _inline(text: str) -> str:
    """Escaped text with `code` spans (the Markdown the shared texts use) as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(text)))


def _markdown_inline(text: str) -> str:
    """`_inline` plus **bold** spans."""
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", _inline(text))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, table_id: str = "",
           classes: Sequence[Sequence[str]] | None = None) -> str:
    """An HTML table; `classes` gives each cell's CSS class (e.g. the trend colours, "num" for numbers)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(
            f'<td class="{classes[i][j]}">{html.escape(str(c))}</td>' if classes and classes[i][j]
            else f"<td>{html.escape(str(c))}</td>"
            for j, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(path: Path) -> str:
    caption = FIGURE_CAPTIONS.get(path.name, path.stem)
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure id="fig-{html.escape(path.stem)}"><img alt="{html.escape(caption)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}</figcaption></figure>')


def render_html(
    runs: pd.DataFrame,
    run_level_df: pd.DataFrame,
    verdict_df: pd.DataFrame,
    figures: Sequence[str | Path],
    *,
    title: str,
    config: Any = None,
    seed: int = 0,
    caveats_df: pd.DataFrame | None = None,
    sections: Sequence[Any] = (),
) -> str:
    """The self-contained HTML report: census, results by width, verdict table (with its caveats), hypothesis,
    similarity calibration, the extra `sections` (frivolous units, hyperparameter selection), embedded figures,
    run times, package versions and configuration.

    Args:
        runs: the runs table (all statuses).
        run_level_df: the output of `run_level`.
        verdict_df: the output of `verdict`.
        figures: PNG files to embed, captioned and ordered by name (FIGURE_CAPTIONS; others last).
        title: the report's heading.
        config: the study's configuration (mapping or pydantic model), shown as YAML; default None (omitted).
        seed: the verdict's bootstrap seed, named in the verdict's explanation (default 0).
        caveats_df: the output of `widthlab.report.caveats.caveats`, shown beside the verdict (default None).
        sections: `widthlab.report.sections.Section` blocks placed after the calibration (default none).

    Returns the HTML text (UTF-8, no external resources).

    Example: a page without figures (`figures`: PNG files, such as `write_figures` returns):
        >>> from widthlab.report.verdict import run_level, verdict
        >>> page = render_html(runs, run_level(runs, metrics), verdict(runs, metrics), [], title="MLP")
        >>> Path("report.html").write_text(page) == len(page), "<title>MLP</title>" in page
        (True, True)
    """
    parts = [("run", "What was run"), ("results", "Results by width"), ("verdict", "Verdict"),
             ("hypothesis", "Hypothesis"), ("calibration", "Similarity calibration"),
             *((section.key, section.title) for section in sections), ("figures", "Figures"),
             ("run-times", "Run times"), ("versions", "Package versions")]
    if config is not None:
        parts.append(("configuration", "Configuration"))
    study_caveats = caveat_lines(caveats_df) if caveats_df is not None else []
    body = {
        "run": _census_html(runs),
        "results": _results_html(run_level_df),
        "verdict": _verdict_html(verdict_df, study_caveats, seed),
        "hypothesis": _hypothesis_html(verdict_df, study_caveats, caveats_df),
        **{section.key: _section_html(section) for section in sections},
        "calibration": _calibration_html(verdict_df),
        "figures": _figures_html(figures),
        "run-times": _run_times_html(runs),
        "versions": _table(["package", "version"], list(package_versions().items()), table_id="versions-table"),
    }
    if config is not None:
        body["configuration"] = f"<pre>{html.escape(config_text(config))}</pre>"
    nav = "".join(f'<a href="#{key}">{name}</a>' for key, name in parts)
    content = "".join(f'<section id="{key}"><h2>{name}</h2>{body[key]}</section>' for key, name in parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
            f"<body><h1>{html.escape(title)}</h1><nav>{nav}</nav>{content}</body></html>\n")


def _census_html(runs: pd.DataFrame) -> str:
    """"What was run": the census lines."""
    return "<ul>" + "".join(f"<li>{_inline(line)}</li>" for line in census(runs)) + "</ul>" + (
        "<p>Only done runs enter the tables, figures and verdict.</p>")


def _results_html(run_level_df: pd.DataFrame) -> str:
    """"Results by width": mean ± std per variant × width."""
    if run_level_df.empty:
        return "<p>No run is done yet.</p>"
    header = ["variant", "width", "runs", *results_columns(run_level_df)]
    rows = results_rows(run_level_df)
    numeric = [["", "num", "num", *(["num"] * (len(header) - 3))] for _ in rows]
    return ("<p>Mean ± std (ddof 0) over the done runs of each cell; the layer quantities are "
            "averaged over the unit layers.</p>" + _table(header, rows, classes=numeric))


def _verdict_html(verdict_df: pd.DataFrame, study_caveats: Sequence[str], seed: int) -> str:
    """"Verdict": the study's caveats, how the trends are judged, and the verdict table (trends coloured)."""
    if len(verdict_df):
        rows = verdict_rows(verdict_df)
        classes = [["", "", "num", "num", row[4], "num", ""] for row in rows]
        table = _table(VERDICT_HEADER, rows, table_id="verdict-table", classes=classes)
    else:
        table = "<p>No verdict yet.</p>"
    warning = "".join(f'<p class="caveat"><strong>Caveat: {_inline(c)}.</strong></p>' for c in study_caveats)
    return f"{warning}<p>{_inline(VERDICT_TEXT.format(resamples=RESAMPLES, seed=seed))}</p>{table}"


def _hypothesis_html(verdict_df: pd.DataFrame, study_caveats: Sequence[str],
                     caveats_df: pd.DataFrame | None) -> str:
    """"Hypothesis": per variant whether it holds, why, and the study's and the variant's caveats."""
    return f"<p>{_inline(HYPOTHESIS_TEXT)}</p><ul>" + "".join(
        f"<li><code>{html.escape(str(r.variant))}</code>: <strong>{hypothesis_word(r)}"
        f"</strong> — {html.escape(r.reason)}"
        + "".join(f' <strong class="caveat">Caveat: {_inline(c)}.</strong>'
                  for c in [*study_caveats, *(caveat_lines(caveats_df, r.variant) if caveats_df is not None else [])])
        + "</li>" for r in hypothesis(verdict_df).itertuples(index=False)
    ) + "</ul>"


def _section_html(section: Any) -> str:
    """An extra `widthlab.report.sections.Section`: its text, tables and bullets."""
    return (f"<p>{_inline(section.text)}</p>"
            + "".join(_table(header, rows) for header, rows in section.tables)
            + ("<ul>" + "".join(f"<li>{_markdown_inline(line)}</li>" for line in section.bullets)
               + "</ul>" if section.bullets else ""))


def _calibration_html(verdict_df: pd.DataFrame) -> str:
    """"Similarity calibration": per variant whether the similarity trend survives it."""
    return f"<p>{_inline(CALIBRATION_TEXT)}</p><ul>" + "".join(
        f"<li><code>{html.escape(str(r.variant))}</code>: similarity trend survives calibration: "
        f"<strong>{html.escape(r.survives)}</strong> — {html.escape(r.reason)}</li>"
        for r in calibration(verdict_df).itertuples(index=False)
    ) + "</ul>"


def _figures_html(figures: Sequence[str | Path]) -> str:
    """"Figures": every PNG embedded, in the captions' order (overview first, then the paper's figure order),
    whatever order they were drawn in."""
    rank = {name: i for i, name in enumerate(FIGURE_CAPTIONS)}
    ordered = sorted((Path(path) for path in figures), key=lambda path: rank.get(path.name, len(rank)))
    return "".join(_figure(path) for path in ordered) or "<p>No figure.</p>"


def _run_times_html(runs: pd.DataFrame) -> str:
    """"Run times": `run_times` as a table."""
    times = run_times(runs)
    if times.empty:
        return "<p>No done run has a recorded time.</p>"
    rows = [[r.variant, r.width, r.runs, *(number(v) for v in r[3:])] for r in times.itertuples(index=False)]
    numeric = [["", "", "num", "num", "num", "num", "num", "num"] for _ in rows]
    return ("<p>Seconds per done run (training and measurement).</p>"
            + _table(["variant", "width", "runs", "total s", "mean s", "median s", "min s", "max s"], rows,
                     table_id="run-times-table", classes=numeric))
