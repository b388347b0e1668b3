"""Robustness (docs/metrics.md): how the network's predictions survive perturbing a layer's units.

The engine (docs/architecture.md, The measurement engine) evaluates several curves — *jobs*, each a perturbation of a scope of layers — in one
sweep over the data. Per batch one clean forward pass gives the unperturbed predictions and the measured layers'
outputs; each job's perturbed copies (one per sampling and level) then run on one of two paths, which give
bit-identical curves for float64 models:

- ``batched``: the first layer of the scope (in execution order) is a proven cut (`widthlab.measure.graph`), so
  only the network after it runs, on copies of its clean output stacked along the batch, `ablations_per_eval`
  copies per evaluation; further layers of an ``"all"`` scope are perturbed copy by copy inside the stack;
- ``full``: one whole forward pass per copy, the perturbation applied by a forward hook (or, for weights, by the
  producing module's forward).

Copies that perturb nothing (level 0, k = 0) are not evaluated: they predict as the clean pass; copies that
perturb identically (level 1 ablates every unit whatever the sampling) are evaluated once. On the batched path a
zero ablation is applied after the modules that commute with it (`widthlab.measure.graph.zero_commuting_chain`:
ReLU, pooling, ... following the cut), which then run once per batch instead of once per copy. On the first
batch the batched path also checks that the network after the cut reproduces the model's scores on two stacked
copies (an operation mixing a batch's examples fails this); with ``path="auto"`` an fx-proven cut that fails it
falls back to full passes. The batched path assumes examples are independent through the network in eval mode.

Opt-in ``skip_zero_inputs``: in perturbed evaluations every plain Conv/Linear (one group) drops the input
channels that are exactly zero across a copy's batch, and their weights, so ablated units cost no arithmetic
downstream. This is mathematically the same sum in a different order: equal to round-off, not bit-identical.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from widthlab.errors import WidthlabError, check_positive_int
from widthlab.measure.capture import evaluating, stream_activations
from widthlab.measure.curve import Curve, robustness_auc
from widthlab.measure.graph import Probe, is_plain_producer, probe, trace
from widthlab.measure.inputs import (DEFAULT_MASK, Batch, Inputs, Kept, Output, batches, known_examples,
                                     predictions, select_scores, valid_positions)
from widthlab.measure.jobs import Cuts, Entry, Job, link_donor, plan_job, unlink_donor
from widthlab.measure.layout import unit_axes
from widthlab.measure.perturbations import Perturbation, get_perturbation
from widthlab.measure.redundancy import Moments
from widthlab.measure.sites import Sites

PATHS = ("auto", "full", "batched")
# on_scores(job index, evaluated copies, their scores (m·B, ...), the clean Evaluation of the batch)
ScoresHook = Callable[[int, list[tuple[int, int]], torch.Tensor, "Evaluation"], None]
# on_step(job index or None for the clean pass, examples in the batch, copies evaluated; 0: the job's batch is done)
StepHook = Callable[[int | None, int, int], None]


@dataclass
class Evaluation:
    """One batch's clean pass: what perturbed copies are compared with.

    Attributes:
        batch: the inputs; start: the index of its first example among all inputs.
        scores: (B, classes) or (B, T, V) clean scores; base: their argmax (B,) or (B, T).
        valid: (B, T) bool of the compared token positions, or None for (B, classes) scores.
        y: labels shaped like `base`, or None.
        output: how scores are picked from the model's output.
    """

    batch: Batch
    start: int
    scores: torch.Tensor
    base: torch.Tensor
    valid: torch.Tensor | None
    y: torch.Tensor | None
    output: Output

    @property
    def count(self) -> int:
        """Compared predictions: B examples, or the real tokens."""
        return len(self.batch) if self.valid is None else int(self.valid.sum())

    def hits(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(m,) compared predictions of m copies, pred (m, B[, T]), that equal `target` (B[, T])."""
        same = pred == target
        if self.valid is not None:
            same = same & self.valid
        return same.flatten(1).sum(1)


def check_labels(labels) -> torch.Tensor | None:
    """`labels` as a tensor: (N,) integer classes, or (N, T) tokens without ignored (negative) positions."""
    if labels is None:
        return None
    y = torch.as_tensor(labels)
    if y.dim() not in (1, 2) or y.is_floating_point() or y.dtype == torch.bool:
        raise WidthlabError(f"labels must be (N,) integer classes (or (N, T) tokens aligned with token scores), got "
                            f"shape {tuple(y.shape)} of {y.dtype}")
    if y.dim() == 2 and bool((y < 0).any()):
        raise WidthlabError("token labels hold negative entries (HF's ignore index -100?); widthlab compares labels "
                            "with the scores position by position: give aligned labels without ignored positions")
    return y


def _clean_moments(model: nn.Module, inputs: Inputs, names: Sequence[str], unit_axis: int | None,
                   batch_size: int, mask: str | int | None) -> dict[str, Moments]:
    """Streamed float64 moments of each layer over all evaluated rows (examples × positions, real tokens)."""
    moments = {name: Moments() for name in names}
    for chunks, _ in stream_activations(model, inputs, names, unit_axis=unit_axis, batch_size=batch_size,
                                        mask=mask):
        for name, rows in chunks.items():
            moments[name].update(rows)
    return moments


def _batched_scores(job: Job, entry: Entry, sites: Sites, copies: Sequence[tuple[int, int]],
                    rows: slice = slice(None)) -> object:
    """Scores of m stacked copies (m·B, classes) run from `entry` on the batch's clean values in `sites` (rows
    `rows` of them). The caller sets the sites' mode."""
    m = len(copies)
    if entry.chain is None:
        h = sites.entry_value(entry)[rows]
        h = h.repeat(m, *[1] * (h.dim() - 1))  # (m·B, ...) m stacked copies of the batch
        if sites.mode == "perturb":
            h = job.plans[entry.layer].apply(h, copies, sites.start, fresh=True)
    else:
        h = sites.inputs[entry.chain[0]][rows]
        h = h.repeat(m, *[1] * (h.dim() - 1))
        for name in entry.chain:  # the producer applies each copy's weights (its forward override)
            h = sites.modules[name](h)
    return entry.suffix(h)


def _reproduces(job: Job, entry: Entry, sites: Sites, scores: torch.Tensor, ran: Sequence[str],
                output: Output) -> bool:
    """Whether the network after `entry` gives the model's `scores` for two stacked clean copies of the first rows
    of the batch, running each of the job's layers and producers after the layers `ran` exactly once."""
    rows = slice(0, 4)
    sites.begin("pass")
    got = select_scores(_batched_scores(job, entry, sites, [(0, 0), (0, 0)], rows), output)
    expected = scores[rows].repeat(2, *[1] * (scores.dim() - 1))
    tol = 1e-4 * float(expected.abs().max()) if expected.numel() else 0.0
    return (isinstance(got, torch.Tensor) and got.shape == expected.shape
            and bool(torch.allclose(got, expected, rtol=1e-4, atol=tol)) and sites.ran_once(job.sites(*ran)))


def _check_paths(work: list[Job], sites: Sites, scores: torch.Tensor, path: str, output: Output) -> None:
    """On the first batch: keep the batched entries and donors that reproduce the model's scores."""
    for job in work:
        if job.entry is None or _reproduces(job, job.entry, sites, scores, job.entry.skipped, output):
            continue
        if job.entry.proof == "fx" and path == "auto":
            job.entry = None
            for recipient in list(job.recipients):
                unlink_donor(recipient)
            continue
        raise WidthlabError(f"the network after cut {job.entry.layer!r} ({job.entry.proof}) does not reproduce the "
                            "model's scores on stacked copies of a batch (does forward_from run the rest of the "
                            "network and its layers, and does no operation mix the examples of a batch?); pass "
                            "path='full'")
    for job in work:
        if job.donor is not None and (job.entry is None or not _reproduces(
                job, job.resume, sites, scores, [job.entry.layer, job.resume.layer], output)):
            unlink_donor(job)


def sweep(model: nn.Module, inputs: Inputs, jobs: Sequence[tuple[str | Perturbation, Sequence[str], np.ndarray]], *,
          samplings: int, seed: int, labels=None, unit_axis: int | None = None, batch_size: int = 256,
          path: str = "auto", ablations_per_eval: int = 1, moments: Mapping[str, Moments] | None = None,
          skip_zero_inputs: bool = False, output: Output = None, mask: str | int | None = DEFAULT_MASK,
          on_clean: Callable[[dict[str, torch.Tensor], Batch], None] | None = None,
          on_scores: ScoresHook | None = None, progress=None, on_step: StepHook | None = None) -> list[Curve]:
    """Measure several curves in one pass over the data: one `Curve` per ``(perturbation, scope, levels)`` job.

    A job of several layers whose first layer is also measured alone continues that job's evaluation from its
    second layer (see `Job`), as ``analyze``'s ``"all"`` scope does.

    Args:
        jobs: ``(perturbation name or `Perturbation`, scope layers, checked levels)`` per curve; layers are
            validated module names.
        moments: streamed clean moments of the layers (computed here when a perturbation needs them and a layer
            is missing).
        on_clean: called after each batch's clean pass with what `stream_activations` yields for the jobs'
            layers, ``({layer: (rows, units) chunk}, the Batch)``, so statistics can be streamed in the same pass.
        on_scores: called with ``(job index, copies, scores, Evaluation)`` for every evaluation of perturbed
            copies (copies that perturb nothing, or a twin's, are not evaluated), for measures beyond the curve.
        progress: a tqdm-like bar: its ``total`` is set to the evaluations to come and ``update(1)`` follows each.
        on_step: called ``(job index or None, examples of the batch, copies)`` after each evaluation: the clean
            pass (None, B, 1), m perturbed copies of a job (index, B, m), and (index, B, 0) once a job has
            evaluated all its copies of the batch, so a caller (`analyze`) can advance a bar in its own planned
            units and end exactly at its plan.
        Everything else as in `perturbation_curve`.

    Example: one job, the zero ablation of ``relu1`` at shares 0, 0.1, ..., 1; with half the units ablated, 72-75%
    of the 200 predictions stay the same:
        >>> from widthlab.measure.perturbations import SHARE_LEVELS
        >>> curves = sweep(model, x, [("zero", ["relu1"], SHARE_LEVELS)], samplings=3, seed=0)
        >>> curves[0].unchanged.shape, curves[0].unchanged[:, 5].tolist()
        ((3, 11), [0.72, 0.745, 0.745])
    """
    if path not in PATHS:
        raise WidthlabError(f"unknown path {path!r}; valid: {', '.join(PATHS)}")
    check_positive_int("ablations_per_eval", ablations_per_eval)
    work = [Job(p if isinstance(p, Perturbation) else get_perturbation(p), list(scope), levels)
            for p, scope, levels in jobs]
    layers = list(dict.fromkeys(name for job in work for name in job.scope))
    weight_layers = list(dict.fromkeys(name for job in work if job.perturbation.weights for name in job.scope))
    moment_layers = [name for job in work if job.perturbation.needs_moments for name in job.scope]
    moments = dict(moments or {})
    missing = list(dict.fromkeys(name for name in moment_layers if name not in moments))
    if missing:
        moments.update(_clean_moments(model, inputs, missing, unit_axis, batch_size, mask))
    labels = check_labels(labels)
    modules = dict(model.named_modules())

    with evaluating(model), torch.no_grad():
        source = batches(model, inputs, batch_size, mask=mask)
        first = next(source, None)
        if first is None or len(first) == 0:
            raise WidthlabError("inputs yielded no examples")
        few = first.head(2)
        found = probe(model, few, layers, weight_layers)
        axes = unit_axes(model, lambda: few.run(model), layers, unit_axis)
        units = {name: found.outputs[name].shape[axes[name]] for name in layers}
        for job in work:
            plan_job(job, units, found.chains, modules, moments, samplings, seed, axes)
        if path != "full":
            _link_cuts(model, work, layers, found, path)
        overridden = {name for job in work for name in job.weight_plans}
        if skip_zero_inputs:
            overridden |= {name for name, module in modules.items()
                           if is_plain_producer(module) and getattr(module, "groups", 1) == 1}
        captures = sorted({job.resume.resumes_at for job in work if job.resume is not None})
        if progress is not None:
            per_batch = 1 + sum(len(job.copies) if job.entry is None else -(-len(job.copies) // ablations_per_eval)
                                for job in work)
            progress.total = per_batch * _batch_count(inputs, batch_size)
            progress.refresh()
        with Sites(model, layers, sorted(overridden), captures, axes, skip_zero_inputs) as sites:
            run = _Run(model, work, sites, labels, path, ablations_per_eval, output, on_scores, progress, on_step)
            examples, compared = run.all(itertools.chain([first], source), on_clean)
    if labels is not None and examples != len(labels):
        raise WidthlabError(f"labels has {len(labels)} entries but the inputs yielded {examples} examples")
    return [_curve(job, compared, samplings) for job in work]


def _link_cuts(model: nn.Module, work: list[Job], layers: list[str], found: Probe, path: str) -> None:
    """Give each job its entry at the first layer of its scope when the graph proves that layer a cut, then link
    donors; with ``path="batched"`` a scope whose first layer is no cut is an error."""
    cuts = Cuts(model, trace(model, {*layers, *(name for chain in found.chains.values() for name in chain)}),
                set(layers))
    for job in work:
        head = next(name for name in found.order if name in job.scope)
        job.entry = cuts.entry(head, job.plans[head], found.chains[head] if job.perturbation.weights else None)
        if job.entry is None and path == "batched":
            raise WidthlabError(f"path='batched' needs the first layer of the scope to be a cut of the graph "
                                f"(proven by torch.fx, or in model.cut_layers with model.forward_from); "
                                f"{head!r} is not")
    for job in work:
        link_donor(job, work, found.order, cuts)


def _curve(job: Job, compared: int, samplings: int) -> Curve:
    """The `Curve` of a job once every batch is evaluated: shares of `compared` predictions."""
    unchanged = job.agree.cpu().numpy() / compared
    accuracy = None if job.correct is None else job.correct.cpu().numpy() / compared
    auc = (np.array([robustness_auc(job.levels, row) for row in unchanged]) if len(job.levels) >= 2
           else np.full(samplings, np.nan))
    return Curve(levels=job.levels, unchanged=unchanged, accuracy=accuracy, auc=auc,
                 path="full" if job.entry is None else "batched")


def _batch_count(inputs: Inputs, batch_size: int) -> int:
    """Batches `batches` will yield, for progress totals (1 when it cannot be told)."""
    if isinstance(inputs, Kept):
        return max(1, len(inputs.parts))
    if isinstance(inputs, torch.utils.data.DataLoader):
        try:
            return len(inputs)
        except TypeError:  # an iterable-style dataset
            return 1
    n = known_examples(inputs)
    return 1 if n is None else max(1, -(-n // batch_size))


class _Run:
    """Evaluate every job on every batch; fill the jobs' counts."""

    def __init__(self, model, work: list[Job], sites: Sites, labels, path: str, per_eval: int, output: Output,
                 on_scores: ScoresHook | None, progress, on_step: StepHook | None = None):
        self.model, self.work, self.sites, self.labels, self.path = model, work, sites, labels, path
        self.per_eval, self.output, self.on_scores, self.progress = per_eval, output, on_scores, progress
        self.on_step = on_step
        self.targets: dict[tuple, tuple[torch.Tensor, ...]] = {}  # `_targets`
        for index, job in enumerate(work):
            job.index = index

    def all(self, source, on_clean) -> tuple[int, int]:
        """``(examples, compared predictions)`` after evaluating every batch of `source`."""
        n, compared, labelled, first = 0, 0, True, True
        work, sites = self.work, self.sites
        for batch in source:
            sites.new_batch(
                keep_outputs={job.entry.layer for job in work if job.entry and job.entry.chain is None}
                | {job.resume.layer for job in work if job.resume is not None},
                keep_inputs={job.entry.chain[0] for job in work if job.entry and job.entry.chain is not None},
                rows=on_clean is not None, mask=batch.mask)
            sites.begin("clean")
            scores = select_scores(batch.run(self.model), self.output)
            self._step(None, len(batch), 1)
            sites.check_calls((set(sites.layers), set()), "the clean forward pass")
            if not torch.isfinite(scores).all():
                raise WidthlabError("the model returned NaN or inf scores")
            if on_clean is not None:
                on_clean(sites.rows, batch)
            base = predictions(scores)  # (B,) or (B, T)
            ev = Evaluation(batch, n, scores, base, valid_positions(scores, batch), None, self.output)
            if self.labels is not None:
                if n + len(batch) > len(self.labels):
                    raise WidthlabError(f"labels has {len(self.labels)} entries but the inputs yield more examples")
                ev.y = self.labels[n:n + len(batch)].to(base.device)
            elif batch.labels is not None and base.dim() == 1:
                ev.y = batch.labels
            else:
                labelled = False
            if ev.y is not None and ev.y.shape != base.shape:
                raise WidthlabError(f"labels of shape {tuple(ev.y.shape)} per batch do not match the model's "
                                    f"predictions of shape {tuple(base.shape)} (scores {tuple(scores.shape)})")
            if ev.y is not None and bool(((ev.y < 0) | (ev.y >= scores.shape[-1])).any()):
                raise WidthlabError(f"labels must be classes 0 … {scores.shape[-1] - 1} of the model's scores, got "
                                    f"values {int(ev.y.min())} … {int(ev.y.max())}")
            if first:
                _check_paths(work, sites, scores, self.path, self.output)
                for job in work:
                    job.agree = torch.zeros(job.identical.shape, dtype=torch.int64, device=base.device)
                    job.correct = torch.zeros_like(job.agree)
                first = False
            for job in work:
                self._evaluate_batch(job, ev)
                if self.on_step is not None:  # its copies of this batch, and those continuing its donor's, are done
                    self.on_step(job.index, len(batch), 0)
            n += len(batch)
            compared += ev.count
        if not (self.labels is not None or labelled):
            for job in work:
                job.correct = None
        return n, compared

    def _step(self, job: int | None, examples: int, copies: int) -> None:
        if self.progress is not None:
            self.progress.update(1)
        if self.on_step is not None:
            self.on_step(job, examples, copies)

    def _evaluate_batch(self, job: Job, ev: Evaluation) -> None:
        """Add one batch to `job`'s counts: clean predictions for copies that perturb nothing, evaluations otherwise
        (a job with a donor evaluates here only the copies its donor does not; the rest follow the donor's)."""
        sites = self.sites
        identical = job.identical.to(ev.base.device)
        job.agree += identical * ev.count
        if ev.y is not None:
            job.correct += identical * ev.hits(ev.base[None], ev.y)[0]
        if job.donor is not None:
            own = [copy for copy in job.copies if copy not in job.donated]
            for lo in range(0, len(own), self.per_eval):
                copies = own[lo:lo + self.per_eval]
                sites.begin("perturb", job, copies, ev.start)
                scores = _batched_scores(job, job.resume, sites, copies)
                sites.check_calls(job.sites(job.entry.layer, job.resume.layer),
                                  f"the network after {job.resume.layer!r}")
                self._tally(job, copies, scores, ev)
            return
        batched = job.entry is not None
        step = self.per_eval if batched else 1
        for lo in range(0, len(job.copies), step):
            copies = job.copies[lo:lo + step]
            sites.begin("perturb", job, copies, ev.start)
            if batched:
                scores = _batched_scores(job, job.entry, sites, copies)
                ran, what = job.entry.skipped, f"the network after {job.entry.layer!r}"
            else:
                scores, ran, what = ev.batch.run(self.model), [], "a perturbed forward pass"
            sites.check_calls(job.sites(*ran), what)
            captured = dict(sites.captured)
            self._tally(job, copies, scores, ev)
            for recipient in job.recipients:
                self._continue(recipient, copies, captured, ev)

    def _continue(self, job: Job, donor_copies: list[tuple[int, int]], captured: dict[str, torch.Tensor],
                  ev: Evaluation) -> None:
        """Evaluate the copies of `job` that continue `donor_copies`, from the values the donor's evaluation passed
        on at ``job.resume.resumes_at``."""
        sites = self.sites
        position = {copy: j for j, copy in enumerate(donor_copies)}
        mine = [(copy, position[donated]) for copy, donated in job.donated.items() if donated in position]
        if not mine:
            return
        at = job.resume.resumes_at
        if at not in captured:
            raise WidthlabError(f"{at!r} did not run in the network after {job.entry.layer!r}")
        values = captured[at].view(len(donor_copies), -1, *captured[at].shape[1:])  # (m, B, ...)
        copies = [copy for copy, _ in mine]
        h = torch.cat([values[j] for _, j in mine])  # (m'·B, ...) a fresh tensor
        sites.begin("perturb", job, copies, ev.start)
        scores = job.resume.suffix(job.plans[job.resume.layer].apply(h, copies, ev.start, fresh=True))
        sites.check_calls(job.sites(job.entry.layer, job.resume.layer), f"the network after {job.resume.layer!r}")
        self._tally(job, copies, scores, ev)

    def _tally(self, job: Job, copies: list[tuple[int, int]], out: object, ev: Evaluation) -> None:
        """Add the predictions of m evaluated copies (scores (m·B, ...)) to the counts of them and their twins."""
        self._step(job.index, len(ev.batch), len(copies))
        scores = select_scores(out, self.output)
        if self.on_scores is not None:
            self.on_scores(job.index, copies, scores, ev)
        pred = predictions(scores).reshape(len(copies), *ev.base.shape)  # (m, B[, T])
        rows, first, second = self._targets(job, copies, pred.device)
        job.agree[first, second] += ev.hits(pred, ev.base)[rows]
        if ev.y is not None:
            job.correct[first, second] += ev.hits(pred, ev.y)[rows]

    def _targets(self, job: Job, copies: list[tuple[int, int]], device: torch.device) -> tuple[torch.Tensor, ...]:
        """``(evaluated copy j, sampling, level)`` index tensors of each copy and its twins, made once per job and
        group of copies (every batch evaluates the same groups) instead of once per evaluation."""
        key = (job.index, tuple(copies))
        found = self.targets.get(key)
        if found is None:
            targets = [(j, twin) for j, copy in enumerate(copies) for twin in (copy, *job.twins.get(copy, ()))]
            rows = torch.tensor([j for j, _ in targets], device=device)
            index = torch.tensor([twin for _, twin in targets], device=device)
            found = self.targets[key] = (rows, index[:, 0], index[:, 1])
        return found
