"""`analyze`: every redundancy and robustness number of a model's layers as one long-format DataFrame.

The rows of `analyze` (columns ``layer, metric, perturbation, level, sampling, value``):

- redundancy, per layer, perturbation ``""``: metrics ``n_units``, ``pcs_needed``, ``compressibility``,
  ``similarity``, ``similarity_live``, ``similar_fraction``, ``silent_fraction``, ``constant_fraction``
  (level NaN) and 50 ``abs_r_count`` rows (level = the |r| bin centre). Without `max_rows` they are computed
  once from all rows and reported as sampling 0 only (there is no sampling variation to summarise); with
  `max_rows` each sampling s draws its own rows, so mean/std over samplings show the subsampling spread.
- robustness, per perturbation and per layer, plus layer ``"all"`` (every layer at once) when more than one
  layer is analysed (with one layer it would repeat that layer): ``auc`` (level NaN) and the curve points
  ``unchanged`` and, with labels, ``accuracy`` at each level, for every sampling.
- frivolous units (`widthlab.measure.frivolous`), per unit layer: ``prunability`` x* (where the ``zero`` curve
  first falls below 0.8), ``prunable_units`` x*·C and ``non_prunable_units`` (1 − x*)·C per sampling
  (perturbation ``zero``, when it is measured), and ``redundant_units`` (compressibility·C) and
  ``non_redundant_units`` (pcs_needed) per redundancy draw (perturbation ``""``).
- class selectivity (`widthlab.measure.selectivity`), per layer, when the measured inputs have labels
  (perturbation ``""``, level NaN, sampling 0): ``selectivity`` (mean over units), ``selectivity_std`` (ddof 0)
  and ``unselective_fraction`` (share of units below 0.05), each on the measured inputs with k* from
  `train_inputs` (else from the measured inputs), and with `train_inputs` ``selectivity_train`` and
  ``selectivity_gen`` (mean of (train − test)²). Its per-class sums ride on the clean pass; `train_inputs`
  add one streaming pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from widthlab.errors import WidthlabError, check_positive_int
from widthlab.measure.calibration import NullRows, similarity_nulls
from widthlab.measure.capture import default_layers, evaluating, stream_activations
from widthlab.measure.engine import sweep
from widthlab.measure.frivolous import frivolous_rows
from widthlab.measure.graph import probe
from widthlab.measure.hooks import resolve_modules
from widthlab.measure.inputs import (DEFAULT_MASK, Batch, Inputs, Output, count_examples, first_batch,
                                     in_memory, keep_decoded, known_examples, select_scores)
from widthlab.measure.layout import unit_axes
from widthlab.measure.perturbations import MAX_SAMPLINGS, get_perturbation, level_sets
from widthlab.measure.redundancy import Moments, census, redundancy_from_moments
from widthlab.measure.rows import RowSampler, Stream, draw_rows
from widthlab.measure.selectivity import ClassSums, layer_selectivity, token_layers, unit_selectivity
from widthlab.threads import torch_blas_threads
from widthlab.vocab import (
    ANALYZE_COLUMNS,
    HISTOGRAM_METRIC,
    JOINT_SCOPE,
    NULL_METRICS,
    REDUNDANCY_METRICS,
)


def _row_stream(seed: int) -> Stream:
    """The stream of redundancy's row draws: sampling s of layer L draws from (seed, L, s, "rows")."""
    return lambda layer, sampling: (seed, layer, sampling, "rows")


def redundancy_rows(seed: int, layer: str, sampling: int, total: int, max_rows: int) -> np.ndarray:
    """Sorted indices of the min(max_rows, total) rows sampling s of `layer` keeps for redundancy."""
    return draw_rows(total, max_rows, *_row_stream(seed)(layer, sampling))


class _LayerMoments:
    """Streams each layer's (rows, units) chunks into float64 moments: all rows, or `max_rows` per sampling.

    With `max_rows`, sampling s keeps rows drawn uniformly without replacement from the stream (seed, layer, s,
    "rows") by the one row sampler (`widthlab.measure.rows.RowSampler`), and `full` asks for the moments of all
    rows as well (for perturbations that need clean statistics; with `census_only`, for selectivity's flat/silent
    flags alone, only their per-unit variances).

    Example: three draws of 50 of the 200 rows of ``relu1``:
        >>> acc = _LayerMoments(["relu1"], 3, 0, 50, count_examples(x, None), full=False)
        >>> for chunks, batch in stream_activations(model, x, ["relu1"], batch_size=64):
        ...     acc.add(chunks, batch)
        >>> [moments.n for moments in acc.draws()["relu1"]]
        [50, 50, 50]
    """

    def __init__(self, names: list[str], samplings: int, seed: int, max_rows: int | None,
                 counts: tuple[int, int | None] | None, full: bool, census_only: bool = False):
        self.samplings = samplings
        self.sampler = None if max_rows is None else RowSampler(names, max_rows, counts, _row_stream(seed),
                                                                draws=samplings)
        draws = 1 if max_rows is None else samplings
        self.moments = {name: [Moments() for _ in range(draws)] for name in names}
        # {layer: moments of all rows}, for the perturbations; without max_rows that is the one draw itself.
        if max_rows is None:
            self.every = {name: ms[0] for name, ms in self.moments.items()}
        else:
            # `census_only`: all rows are needed only for per-unit flags (selectivity), not for the perturbations
            self.every = {name: Moments(diagonal=census_only) for name in names} if full else None

    def add(self, chunks: dict[str, torch.Tensor], batch: Batch) -> None:
        """Add one batch: ``{layer: (rows, units) chunk}`` of the examples of `batch`."""
        for name, rows in chunks.items():
            if self.sampler is not None and self.sampler.first(name, len(rows), batch) \
                    and self.sampler.picks[name] is None:
                self._share(name)
            if self.every is not None:
                self.every[name].update(rows)
            if self.sampler is None:
                continue
            parts = self.sampler.pick(name, rows, batch)
            if parts is None:  # every sampling keeps every row, in order: one shared accumulation
                if self.every is None or self.moments[name][0] is not self.every[name]:
                    self.moments[name][0].update(rows)
                continue
            for s, part in enumerate(parts):
                if len(part):
                    self.moments[name][s].update(part)

    def _share(self, name: str) -> None:
        """Drawing every row of `name` gives every sampling the same matrix, so they share one `Moments` (the one
        of all rows, when kept in full) and `analyze` computes its spectrum once."""
        every = None if self.every is None or self.every[name].diagonal else self.every[name]
        self.moments[name] = [every or Moments()] * self.samplings

    def draws(self) -> dict[str, list[Moments]]:
        """``{layer: [moments per draw]}`` once every batch is added."""
        if self.sampler is not None and not self.sampler.complete():
            raise WidthlabError("max_rows needs the same number of rows per example in every batch and inputs whose "
                                "length matches what they yield")
        return self.moments


@torch_blas_threads
def analyze(model: nn.Module, inputs: Inputs, layers: Sequence[str] | None = None, *, labels=None,
            perturbations: Sequence[str] = ("zero",),
            levels: int | Sequence[float] | Mapping[str, int | Sequence[float]] | None = None, samplings: int = 3,
            seed: int = 0, max_rows: int | None = None, energy: float = 0.95, threshold: float = 0.5,
            unit_axis: int | None = None, batch_size: int = 256, ablations_per_eval: int = 1, path: str = "auto",
            skip_zero_inputs: bool = False, null_rows: int | None = 20_000, output: Output = None,
            mask: str | int | None = DEFAULT_MASK, progress=None, train_inputs: Inputs | None = None,
            train_labels=None) -> pd.DataFrame:
    """Measure redundancy and robustness of each layer; one row per number.

    Rows: see the module doc (columns ``layer, metric, perturbation, level, sampling, value``).

    Every curve is measured in one sweep over the data (`sweep`), sharing each batch's clean forward pass among all
    perturbations and scopes; that pass also streams the redundancy moments. A perturbation that needs clean
    statistics first (``mean``, ``targeted``, ``act_noise``) adds one pass that streams them before the sweep.

    Args:
        model: returns (N, classes) or (N, T, V) scores, directly or inside its output (see `output`); runs on its
            device in eval mode (training flags restored).
        inputs: a tensor, a tuple of tensors (positional inputs), a mapping of tensors (keyword inputs, e.g. a HF
            ``BatchEncoding``), or a Dataset / DataLoader yielding these; labels as the rule of
            `widthlab.measure.inputs` says (``(x, y)``, a ``"labels"`` key).
        layers: module names (default: ``model.unit_layers``, else the model's activation outputs; see
            `default_layers`).
        labels: (N,) class labels (default: the inputs' own labels, if they yield any).
        train_inputs: the training split, in any input form, from which selectivity takes each unit's class k*
            (default None: k* from the measured inputs, no ``selectivity_train``/``selectivity_gen`` rows); the
            measured inputs must then have labels too (else a WidthlabError).
        train_labels: (N_train,) labels of `train_inputs` (default None: their own); a training split without
            labels is an error.
        perturbations: names from ``PERTURBATIONS`` (default ``("zero",)``).
        levels: the levels of every perturbation (a list, or a count n: n evenly spaced over each perturbation's
            range), or a mapping perturbation → its levels (`level_sets`; default: each
            perturbation's own: shares 0, 0.1, ..., 1.0, or σ multiples 0, 0.2, ..., 2.0 for ``act_noise`` and
            ``weight_noise``; a mapping's missing perturbations get theirs too).
        samplings: S random unit orders / row draws (default 3); seed: their seed (default 0).
        max_rows: rows drawn per layer and sampling for redundancy (default None: all rows, streamed).
        null_rows: rows sampled per layer for the similarity permutation null (rows ``similarity_null``,
            ``similar_fraction_null``, ``similarity_excess``; default 20,000); None skips it.
        energy: variance share for ``pcs_needed`` (default 0.95); threshold: |r| for similarity (default 0.5).
        unit_axis: the unit axis of every layer output (default None: decided per layer by the module that produced
            it, `widthlab.measure.layout`: axis 1 after Conv/BatchNorm, the last axis after Linear/LayerNorm and
            the activations following them); batch_size: examples per batch (default 256).
        output: picks the scores from the model's output: a key, an attribute or a callable (default: the output
            itself, its ``logits``, or its first tensor).
        mask: the attention mask's keyword (default ``"attention_mask"``) or positional index; with a mask only
            rows of real tokens enter every statistic, and (N, T, V) scores compare real tokens only. None ignores
            masks.
        progress: a tqdm-like bar, or None: its total is set to `planned_evaluations` (when the inputs' length is
            known), it advances in example evaluations through every pass and ends at that total, and its
            description names the phase running (reading the data, clean statistics, measuring, redundancy,
            similarity null, selectivity).
        ablations_per_eval, path, skip_zero_inputs: the engine's options (defaults 1, ``"auto"``, False; see
            `perturbation_curve`).

    Example: the mlp's ``relu1`` on 200 inputs, with two random unit orders:
        >>> frame = analyze(model, x, samplings=2)
        >>> frame.columns.tolist()
        ['layer', 'metric', 'perturbation', 'level', 'sampling', 'value']
        >>> frame.query("metric == 'auc'")["value"].round(2).tolist()
        [0.74, 0.75]
    """
    perturbations = [perturbations] if isinstance(perturbations, str) else list(perturbations)
    levels = level_sets(levels, perturbations)
    meter = _Meter(progress)
    samplings = check_positive_int("samplings", samplings, maximum=MAX_SAMPLINGS)
    if max_rows is not None:
        check_positive_int("max_rows", max_rows)
    check_positive_int("null_rows", null_rows, optional=True)
    if layers is not None:  # named layers are checked before a Dataset is decoded
        resolve_modules(model, list(layers))
    # A Dataset (decoded per item) is read once for every pass below, and counted without a pass of its own.
    meter.phase("reading the data")
    inputs, counts = keep_decoded(model, inputs, batch_size, mask)
    names = default_layers(model, inputs, batch_size=batch_size, mask=mask) if layers is None else list(layers)
    resolve_modules(model, names)
    if counts is None and (max_rows is not None or null_rows is not None):
        counts = count_examples(inputs, mask)

    measured, jobs = _jobs(names, perturbations, levels)
    copies = [samplings * (len(job_levels) - 1) for _, _, job_levels in jobs]
    meter.plan(copies, counts[0] if counts is not None else known_examples(inputs), statistics_passes(perturbations))
    options = {"samplings": samplings, "seed": seed, "labels": labels, "unit_axis": unit_axis,
               "batch_size": batch_size, "path": path, "ablations_per_eval": ablations_per_eval,
               "skip_zero_inputs": skip_zero_inputs, "output": output, "mask": mask, "on_step": meter.step}
    needs_moments = any(get_perturbation(perturbation).needs_moments for perturbation in perturbations)
    if train_inputs is not None:
        meter.phase("selectivity: the training split")
    classes, train = _class_sums(model, inputs, names, labels, train_inputs, train_labels, unit_axis, batch_size,
                                 mask)
    # Selectivity's census needs the moments of all rows, which max_rows alone does not keep.
    streams = _LayerMoments(names, samplings, seed, max_rows,
                            None if max_rows is None else counts,
                            full=needs_moments or classes is not None, census_only=not needs_moments)
    # The similarity null's rows are drawn from the same clean pass, not from a pass of their own.
    null_sampler = None if null_rows is None else NullRows(names, null_rows, seed, counts)
    curves = _measure(model, inputs, names, jobs, _CleanPass(streams, classes, null_sampler), meter,
                      first_pass=needs_moments or not jobs, **options)

    meter.phase("redundancy")
    records = _redundancy_records(streams.draws(), energy, threshold)
    if null_sampler is not None:
        # Calibration of similarity: its permutation null on at most `null_rows` rows sampled in the clean pass.
        meter.phase("similarity null")
        nulls = similarity_nulls(null_sampler.rows(), threshold=threshold, max_rows=null_rows, seed=seed)
        records += [(name, metric, "", np.nan, 0, float(nulls[name][metric]))
                    for name in names for metric in NULL_METRICS]
    if classes is not None and classes.labelled:
        meter.phase("selectivity")
        records += _selectivity_records(names, streams.every, classes, train)
    meter.statistics_done()
    records += _curve_records(measured, curves, samplings)
    return _frame(records)


def statistics_passes(perturbations: Sequence[str]) -> int:
    """Example evaluations per example that `analyze` plans besides the clean pass and the perturbed copies: one
    for the statistics computed after the sweep (redundancy, the similarity null, selectivity), plus one for the
    pass streaming clean moments when a perturbation needs them (``mean``, ``targeted``, ``act_noise``)."""
    return 1 + any(get_perturbation(name).needs_moments for name in perturbations)


def planned_evaluations(examples: int, copies: Sequence[int], extra_passes: int) -> int:
    """The example evaluations (one example through the network once) `analyze` plans: per example one clean pass,
    `extra_passes` (`statistics_passes`) and ``copies[j]`` perturbed copies of job j (samplings × (levels − 1)).

    An upper bound on the work (copies that perturb nothing or duplicate another are not evaluated, and the batched
    path runs only the network after the layer), counted from the command alone, so `widthlab analyze` fits it into
    --max-evaluations the same on any machine; `analyze`'s progress bar counts in the same units and ends at it.

    Example: 300 examples, two jobs of 30 copies each, one statistics pass:
        >>> planned_evaluations(300, [30, 30], 1) == 300 * (1 + 1 + 60)
        True
    """
    return examples * (1 + extra_passes + sum(copies))


class _Meter:
    """Advances `analyze`'s progress bar in planned example evaluations (`planned_evaluations`), so that it ends
    exactly at the plan `widthlab analyze` prints, and names each phase the user waits for in its description.

    Work the plan counts but the engine skips (copies that perturb nothing or duplicate another) is credited when
    the job finishes its batch; the statistics pass is credited once redundancy, the null and selectivity are done.
    """

    def __init__(self, bar):
        self.bar = bar
        self.copies: list[int] = []
        self.examples: int | None = None
        self.extra = 0
        self.done: dict[int, int] = {}  # job index -> evaluations credited in the current batch

    def phase(self, name: str) -> None:
        if self.bar is not None and hasattr(self.bar, "set_description"):
            self.bar.set_description(name)

    def plan(self, copies: list[int], examples: int | None, extra: int) -> None:
        self.copies, self.examples, self.extra = copies, examples, extra
        if self.bar is not None and examples is not None:
            self.bar.total = planned_evaluations(examples, copies, extra)
            if hasattr(self.bar, "refresh"):
                self.bar.refresh()

    def update(self, n: int) -> None:
        if self.bar is not None and n > 0:
            self.bar.update(n)

    def pass_batch(self, examples: int) -> None:
        """One batch of a pass over the inputs (the clean moments, or the clean pass itself)."""
        self.update(examples)

    def step(self, job: int | None, examples: int, copies: int) -> None:
        """The engine's `on_step`: a clean pass, m evaluated copies, or (copies 0) a job's batch done."""
        if job is None:
            self.update(examples)
            return
        planned = self.copies[job] * examples
        left = planned - self.done.get(job, 0)
        advance = left if copies == 0 else min(copies * examples, left)
        self.update(advance)
        self.done[job] = 0 if copies == 0 else self.done.get(job, 0) + advance

    def statistics_done(self) -> None:
        if self.examples is not None:
            self.update(self.examples)  # the one statistics pass of `statistics_passes`


def _jobs(names: list[str], perturbations: list[str],
          levels: dict[str, np.ndarray]) -> tuple[list[tuple[str, str]], list[tuple]]:
    """``(perturbation, scope)`` of each curve and its `sweep` job: every layer alone, then ``"all"`` (every layer
    at once) when there are several."""
    scopes = [*names, JOINT_SCOPE] if len(names) > 1 else names
    measured = [(perturbation, scope) for perturbation in perturbations for scope in scopes]
    jobs = [(perturbation, names if scope == JOINT_SCOPE else [scope], levels[perturbation])
            for perturbation, scope in measured]
    return measured, jobs


def _class_sums(model: nn.Module, inputs: Inputs, names: list[str], labels, train_inputs: Inputs | None,
                train_labels, unit_axis: int | None, batch_size: int,
                mask: str | int | None) -> tuple[ClassSums | None, ClassSums | None]:
    """Selectivity's per-class sums: ``(of the measured inputs, to be filled by the clean pass; of `train_inputs`,
    filled here)``, each None when not measured (no labels; no training split)."""
    head = first_batch(model, inputs, 2, mask)
    if train_inputs is not None and labels is None and head.labels is None:
        raise WidthlabError("train_inputs were given for selectivity, but the measured inputs have no labels: give "
                            "labels= (or inputs that carry them), or leave train_inputs out")
    if labels is None and head.labels is None:
        return None, None
    token = token_layers(model, head, names)
    classes, train = ClassSums(token, labels), None
    if train_inputs is not None:  # before the sweep, so a training split without labels fails fast
        train = ClassSums(token, train_labels, what="train_labels", required=True)
        arrays = in_memory(train_inputs)  # sliced, not stacked item by item
        train_inputs = train_inputs if arrays is None else arrays
        for chunks, batch in stream_activations(model, train_inputs, names, unit_axis=unit_axis,
                                                batch_size=batch_size, mask=mask):
            train.add(chunks, batch)
    return classes, train


def _measure(model: nn.Module, inputs: Inputs, names: list[str], jobs: list, clean: _CleanPass, meter: _Meter, *,
             first_pass: bool, **options) -> list:
    """The curves of `jobs` (`sweep`), `clean` fed every batch's clean layer rows on the way: in a pass of its own
    first when `first_pass` (a perturbation needs the clean moments before the sweep, or there are no curves),
    else in the sweep's own clean passes."""
    if not first_pass:
        meter.phase("measuring")
        return sweep(model, inputs, jobs, on_clean=clean, **options)
    meter.phase("clean statistics")
    for chunks, batch in stream_activations(model, inputs, names, unit_axis=options["unit_axis"],
                                            batch_size=options["batch_size"], mask=options["mask"]):
        clean(chunks, batch)
        meter.pass_batch(len(batch))
    meter.phase("measuring")
    return sweep(model, inputs, jobs, moments=clean.streams.every, **options) if jobs else []


class _CleanPass:
    """What `analyze` streams from each batch's clean pass: redundancy moments, class sums, the null's rows."""

    def __init__(self, streams: _LayerMoments, classes: ClassSums | None, null_sampler: NullRows | None):
        self.streams, self.classes, self.null_sampler = streams, classes, null_sampler

    def __call__(self, chunks: dict[str, torch.Tensor], batch: Batch) -> None:
        self.streams.add(chunks, batch)
        if self.classes is not None:
            self.classes.add(chunks, batch)
        if self.null_sampler is not None:
            self.null_sampler.add(chunks, batch)


def _redundancy_records(moments: dict[str, list[Moments]], energy: float, threshold: float) -> list[tuple]:
    """The redundancy rows of each layer and draw, with the 50 |r| histogram counts at their bin centres."""
    records = []
    for name, draws in moments.items():
        spectra: dict[int, dict] = {}  # id(moments) -> its numbers: samplings sharing their rows share one spectrum
        for s, m in enumerate(draws):
            if id(m) not in spectra:
                spectra[id(m)] = redundancy_from_moments(m, energy=energy, threshold=threshold)
            numbers = spectra[id(m)]
            records += [(name, metric, "", np.nan, s, float(numbers[metric])) for metric in REDUNDANCY_METRICS]
            edges = numbers["abs_r_edges"]
            centres = (edges[:-1] + edges[1:]) / 2
            records += [(name, HISTOGRAM_METRIC, "", float(c), s, float(count))
                        for c, count in zip(centres, numbers["abs_r_counts"])]
    return records


def _selectivity_records(names: list[str], every: dict[str, Moments], classes: ClassSums,
                         train: ClassSums | None) -> list[tuple]:
    """Each layer's selectivity rows, its flat and silent units told by the moments of all its rows."""
    records = []
    for name in names:
        facts = census(every[name])  # flat and silent units of the measured inputs
        per_unit = unit_selectivity(classes[name], facts.flat | facts.silent, None if train is None else train[name])
        records += [(name, metric, "", np.nan, 0, value) for metric, value in layer_selectivity(per_unit).items()]
    return records


def _curve_records(measured: list[tuple[str, str]], curves: list, samplings: int) -> list[tuple]:
    """The ``auc`` row and the curve points (``unchanged``, and ``accuracy`` with labels) of each curve."""
    records = []
    for (perturbation, scope), curve in zip(measured, curves):
        for s in range(samplings):
            records.append((scope, "auc", perturbation, np.nan, s, float(curve.auc[s])))
            series = [("unchanged", curve.unchanged)]
            if curve.accuracy is not None:
                series.append(("accuracy", curve.accuracy))
            for metric, values in series:
                records += [(scope, metric, perturbation, float(level), s, float(v))
                            for level, v in zip(curve.levels, values[s])]
    return records


def _frame(records: list[tuple]) -> pd.DataFrame:
    """The long-format DataFrame of `records`, typed, with the frivolous-unit rows derived from them appended."""
    frame = pd.DataFrame.from_records(records, columns=list(ANALYZE_COLUMNS))
    frame = frame.astype({"layer": str, "metric": str, "perturbation": str, "level": float, "sampling": int,
                          "value": float})
    return pd.concat([frame, frivolous_rows(frame)], ignore_index=True)  # unit counts, from the rows above


@torch.no_grad()
def check_measurable(model: nn.Module, inputs: Inputs, layers: Sequence[str] | None = None, *,
                     perturbations: Sequence[str] = ("zero",), examples: int = 2, unit_axis: int | None = None,
                     output: Output = None, mask: str | int | None = DEFAULT_MASK) -> list[str]:
    """Fail fast: the layers `analyze` would measure, checked on the first `examples` inputs.

    Resolves the default layers (or the named ones), their unit axes and the model's scores and, when a weight
    perturbation is asked for, finds the Conv/Linear module producing each layer's units; anything `analyze` would
    refuse (an unknown perturbation, a layer that does not run once, an undecidable unit axis, outputs without
    scores, a residual sum or concatenation where weights are to be perturbed) raises the same `WidthlabError`
    now. A study calls this before training, so a config that cannot be measured stops before any compute is
    spent. The model runs in eval mode (its training flags are restored).

    Example:
        >>> check_measurable(create_model("mlp", 1, input_dim=10), torch.randn(4, 10))
        ['relu1']
        >>> check_measurable(model, x, ["fc2"])
        Traceback (most recent call last):
        ...
        widthlab.errors.WidthlabError: unknown layer(s) 'fc2'; valid module names: fc1, relu1, readout
    """
    specs = [get_perturbation(name) for name in ([perturbations] if isinstance(perturbations, str)
                                                 else perturbations)]
    batch = first_batch(model, inputs, examples, mask)
    with evaluating(model):
        names = default_layers(model, batch, mask=None) if layers is None else list(layers)
        resolve_modules(model, names)
        weighted = names if any(spec.weights for spec in specs) else []
        probe(model, batch, names, producers_of=weighted)
        unit_axes(model, lambda: batch.run(model), names, unit_axis)
        select_scores(batch.run(model), output)
    return names
