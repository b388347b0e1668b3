"""Writing the figures: which ones the data allows (`figure_jobs`), their file formats, and the forked worker
processes that draw them while the caller computes the verdict (`Drawing`)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from widthlab import files
from widthlab.errors import WidthlabError
from widthlab.report.figures.abs_r import plot_abs_r
from widthlab.report.figures.curves import plot_ablation_curves
from widthlab.report.figures.epochs import plot_vs_epoch
from widthlab.report.figures.frivolous import plot_frivolous
from widthlab.report.figures.style import DPI, has_data
from widthlab.report.figures.width import (
    LAYERWISE_METRICS,
    OVERVIEW_METRICS,
    plot_layerwise,
    plot_overview,
    plot_params,
    plot_similarity_calibration,
    plot_vs_width,
)
from widthlab.report.verdict import epoch_level, final_rows, layer_level, run_level
from widthlab.vocab import JOINT_SCOPE

log = logging.getLogger(__name__)

FORMATS = ("png", "pdf")
DEFAULT_FORMATS = ("png", "pdf")
# Drawing processes at most: a report has about 20 figures, and each forked worker shares the caller's memory
# only until it writes to it.
MAX_WORKERS = 4


def figure_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    """The figure file formats named by `formats`, in order, without repeats.

    Args:
        formats: a comma-separated string ("png,pdf") or a sequence of names from FORMATS; case and spaces are
            ignored.

    A name outside FORMATS, or no name at all, is a WidthlabError naming the value and the valid formats.

    Example:
        >>> figure_formats("PNG, pdf"), figure_formats(["png", "png"])
        (('png', 'pdf'), ('png',))
        >>> figure_formats("jpg")
        Traceback (most recent call last):
        ...
        widthlab.errors.WidthlabError: unknown figure format 'jpg' in 'jpg'; valid: png, pdf ...
    """
    names = formats.split(",") if isinstance(formats, str) else list(formats)
    chosen = list(dict.fromkeys(str(name).strip().lower() for name in names))
    shown = formats if isinstance(formats, str) else ",".join(map(str, formats))
    bad = [name for name in chosen if name not in FORMATS]
    if bad and bad != [""]:
        raise WidthlabError(f"unknown figure format {bad[0]!r} in {shown!r}; valid: {', '.join(FORMATS)} "
                            f"(comma-separated, e.g. {','.join(DEFAULT_FORMATS)})")
    if bad or not chosen:
        raise WidthlabError(f"no figure format in {shown!r}; give a comma-separated list of {', '.join(FORMATS)} "
                            f"(e.g. {','.join(DEFAULT_FORMATS)})")
    return tuple(chosen)


def _save(fig: Figure, stem: Path, formats: Sequence[str]) -> Path:
    """Write `fig` as stem.FORMAT for each format; returns the first file's path."""
    # Each format lays the figure out again with its own renderer's text metrics: a PDF laid out by the PNG's
    # (measured: axes up to 8 pt wider) could push its outside legend off the page.
    paths = [stem.with_name(f"{stem.name}.{fmt}") for fmt in formats]
    for path in paths:
        with files.atomic_path(path) as tmp:
            fig.savefig(tmp, **({"dpi": DPI} if path.suffix == ".png" else {}))
    # Figures made here are not registered with pyplot; clearing frees their artists at once.
    fig.clear()
    return paths[0]


def _width_figure(run_level_df: pd.DataFrame, metric: str) -> Figure:
    return plot_vs_width(run_level_df, metric).figure


def _params_figure(params: pd.DataFrame) -> Figure:
    return plot_params(params).figure


def _epochs_figure(runs: pd.DataFrame, snapshots: pd.DataFrame, history: pd.DataFrame | None) -> Figure:
    return plot_vs_epoch(epoch_level(runs, snapshots, history))


def figure_jobs(runs: pd.DataFrame, metrics: pd.DataFrame, *, snapshots: pd.DataFrame | None = None,
                history: pd.DataFrame | None = None, params: pd.DataFrame | None = None,
                growth_df: pd.DataFrame | None = None) -> list[tuple[str, Callable[[], Figure]]]:
    """(name, builder) of every figure `write_figures` tries, in its order; each builder returns a Figure or raises
    WidthlabError when its data is missing. Builders are picklable (partials of module functions), so worker
    processes can run them.

    Args: as `write_figures`; `growth_df` (default None: computed when drawn) gives the frivolous figure its g.
    """
    run_level_df = run_level(runs, metrics)
    single = [*OVERVIEW_METRICS, "similar_fraction"]
    if has_data(run_level_df, "similarity_excess"):
        single.append("similarity_excess")
    jobs = [(metric, partial(_width_figure, run_level_df, metric)) for metric in single]
    jobs += [("similarity_calibration", partial(plot_similarity_calibration, run_level_df)),
             ("overview", partial(plot_overview, run_level_df))]
    order = [name for name in pd.unique(final_rows(metrics)["layer"]) if name != JOINT_SCOPE]
    jobs += [("ablation_curves", partial(plot_ablation_curves, metrics, runs)),
             ("abs_r_distributions", partial(plot_abs_r, runs, metrics, layers=order)),
             ("epochs", partial(_epochs_figure, runs, metrics if snapshots is None else snapshots, history)),
             ("frivolous", partial(plot_frivolous, runs, metrics, growth_df))]
    per_layer = layer_level(runs, metrics)
    if per_layer["layer"].nunique() >= 2:
        jobs += [(f"layerwise_{metric}", partial(plot_layerwise, per_layer, metric, order))
                 for metric in LAYERWISE_METRICS]
    else:
        log.info("layerwise figures not written: fewer than two unit layers were measured")
    if params is not None:
        jobs.append(("params", partial(_params_figure, params)))
    return jobs


def _draw(name: str, build: Callable[[], Figure], out: Path, formats: Sequence[str]) -> Path | str:
    """One figure written (its first file's path), or why it was not (its data is missing)."""
    try:
        fig = build()
    except WidthlabError as error:
        return f"{name}.{formats[0]} not written: {error}"
    return _save(fig, out / name, formats)


def drawing_workers(jobs: int) -> int:
    """How many processes draw `jobs` figures: one per idle CPU this process may use (its CPUs less the 1-minute
    load average of the others), at most MAX_WORKERS and `jobs`; 1 (draw here) where none is idle or processes
    cannot be forked (forking is what makes a worker cheap: it starts with matplotlib and the tables loaded).

    Measured on a 2-CPU machine kept busy by other jobs (load 3): two workers took as long as one process and
    40% more CPU time, so only idle CPUs get a worker. The files are the same whichever number draws them.
    """
    if sys.platform != "linux" or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    cpus = len(os.sched_getaffinity(0))
    idle = cpus - max(0.0, os.getloadavg()[0] - 1.0)  # this process, busy until now, is part of the load
    return max(1, min(jobs, MAX_WORKERS, int(idle)))


# Figures of many panels take several times as long to draw as one metric against width (measured on mlp-10d:
# overview, abs_r_distributions, frivolous ~0.8 s each in PNG and PDF, a single metric ~0.3 s).
_LONG = ("overview", "abs_r_distributions", "frivolous", "epochs", "ablation_curves", "similarity_calibration",
         "layerwise_", "params")


def drawing_rank(name: str) -> int:
    """Where figure `name` goes in the workers' queue: the longest (many panels) first, one-metric figures last."""
    return next((rank for rank, prefix in enumerate(_LONG) if name.startswith(prefix)), len(_LONG))


class Drawing:
    """Figures being written, by worker processes while the caller does other work; `paths()` waits for them.

    With one worker (or one figure) nothing starts until `paths()`, which draws them here.
    """

    def __init__(self, jobs: list[tuple[str, Callable[[], Figure]]], out: Path, formats: Sequence[str],
                 workers: int | None = None):
        self._jobs, self._out, self._formats = jobs, out, tuple(formats)
        workers = drawing_workers(len(jobs)) if workers is None else max(1, min(int(workers), len(jobs) or 1))
        self._pool = None
        self._futures = []
        if workers > 1:
            self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
            with warnings.catch_warnings():
                # Python ≥ 3.12 warns that forking a threaded process (torch's thread pools) may deadlock a child
                # that uses those threads; the children only draw with matplotlib and exit.
                warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
                # The longest figures first: drawn last, one of them would keep a worker busy while the others
                # idle. Results are collected in the jobs' own order.
                first = sorted(range(len(jobs)), key=lambda i: drawing_rank(jobs[i][0]))
                futures = {i: self._pool.submit(_draw, *jobs[i], out, self._formats) for i in first}
                self._futures = [futures[i] for i in range(len(jobs))]

    def paths(self) -> list[Path]:
        """Wait for every figure; returns each written figure's path in its first format (PNG by default)."""
        try:
            if self._pool is None:
                results = [_draw(name, build, self._out, self._formats) for name, build in self._jobs]
            else:
                results = [future.result() for future in self._futures]
        finally:
            self.close()
        for result in results:
            if isinstance(result, str):
                log.info("%s", result)
        return [result for result in results if isinstance(result, Path)]

    def close(self) -> None:
        """Stop the workers (figures not started yet are not drawn); safe to call twice."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def start_figures(runs: pd.DataFrame, metrics: pd.DataFrame, out_dir: str | Path, *,
                  snapshots: pd.DataFrame | None = None, history: pd.DataFrame | None = None,
                  params: pd.DataFrame | None = None, formats: str | Sequence[str] = DEFAULT_FORMATS,
                  workers: int | None = None, growth_df: pd.DataFrame | None = None) -> Drawing:
    """Start writing the figures of `write_figures` in worker processes and return at once; ``.paths()`` waits.

    Args: as `write_figures`.

    Example: the verdict is computed while the figures are drawn:
        >>> from widthlab.report.verdict import verdict
        >>> drawing = start_figures(runs, metrics, "out/figures", formats="png")
        >>> v = verdict(runs, metrics)
        >>> [path.name for path in drawing.paths()][:3]
        ['accuracy.png', 'robustness.png', 'compressibility.png']
    """
    formats = figure_formats(formats)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = figure_jobs(runs, metrics, snapshots=snapshots, history=history, params=params, growth_df=growth_df)
    return Drawing(jobs, out, formats, workers)


def write_figures(runs: pd.DataFrame, metrics: pd.DataFrame, out_dir: str | Path, *,
                  snapshots: pd.DataFrame | None = None, history: pd.DataFrame | None = None,
                  params: pd.DataFrame | None = None, formats: str | Sequence[str] = DEFAULT_FORMATS,
                  workers: int | None = None, pdf: bool | None = None) -> list[Path]:
    """Write every figure the data allows, as NAME.png and NAME.pdf (or the given `formats`); returns the path of
    each figure in its first format (the PNGs by default).

    Always: accuracy, robustness, compressibility, similarity, similar_fraction, similarity_calibration and
    overview (the four metric panels as (a)–(d), like paper Figure C5). When the data holds them:
    similarity_excess (permutation null measured), ablation_curves ("zero" curves), layerwise_{robustness,
    compressibility, similarity} (two or more unit layers), abs_r_distributions (|r| histograms), epochs
    (snapshot measurements), frivolous (frivolous-unit counts vs width) and params (a params table given). A figure
    without data is skipped with a log message.

    Figures are drawn in parallel by forked worker processes where CPUs are idle (`drawing_workers`); the files are
    the same as drawn one by one here.

    Args:
        runs: the runs table; only status "done" rows count.
        metrics: the metrics table; rows with an `epoch` (if it has that column) count as snapshots.
        out_dir: the folder to write into (created if missing).
        snapshots: measurements along training, the metrics columns plus `epoch` (default None: the epoch rows
            of `metrics`, if any).
        history: per-epoch training records for the accuracy panel of epochs.png (default None).
        params: model/width/params rows for params.png (default None: not drawn).
        formats: file formats, "png,pdf" or a sequence of FORMATS (default ("png", "pdf")); a bad one is a
            WidthlabError naming it.
        workers: drawing processes (default None: `drawing_workers`, one per idle CPU; 1 draws in this process).
        pdf: deprecated; False is formats=("png",), True is ("png", "pdf").

    Example: the tiny study's figures (one unit layer: no layerwise figures):
        >>> [path.name for path in write_figures(res.runs, res.metrics, "study/figures", formats="png")]
        ['accuracy.png', 'robustness.png', 'compressibility.png', 'similarity.png', 'similar_fraction.png',
         'similarity_excess.png', 'similarity_calibration.png', 'overview.png', 'ablation_curves.png',
         'abs_r_distributions.png', 'frivolous.png']
    """
    formats = legacy_pdf(formats, pdf)
    return start_figures(runs, metrics, out_dir, snapshots=snapshots, history=history, params=params,
                         formats=formats, workers=workers).paths()


def legacy_pdf(formats: str | Sequence[str], pdf: bool | None) -> str | Sequence[str]:
    """The formats the deprecated `pdf=` flag names when it is given (it replaces `formats`), else `formats`."""
    if pdf is None:
        return formats
    warnings.warn("pdf= is deprecated; use formats=('png', 'pdf') or formats=('png',)", DeprecationWarning,
                  stacklevel=3)
    return ("png", "pdf") if pdf else ("png",)
