"""Robustness (DESIGN.md §1): how the network's predictions survive perturbing a layer's units.

The engine (DESIGN.md §4) evaluates several curves — *jobs*, each a perturbation of a scope of layers — in one
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

import numpy as np
import torch
from torch import nn

from widthlab.errors import WidthlabError, check_positive_int
from widthlab.measure.capture import Inputs, batches, check_unit_axis, evaluating, stream_activations
from widthlab.measure.curve import Curve, robustness_auc
from widthlab.measure.graph import is_plain_producer, probe, trace
from widthlab.measure.jobs import Cuts, Entry, Job, link_donor, plan_job, unlink_donor
from widthlab.measure.perturbations import get_perturbation
from widthlab.measure.redundancy import Moments
from widthlab.measure.sites import Sites

PATHS = ("auto", "full", "batched")


def _predictions(out: object) -> torch.Tensor:
    """(N,) argmax of (N, classes) scores, or a WidthlabError for any other model output."""
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise WidthlabError(f"the model must return (N, classes) scores to measure robustness, got {got}")
    return out.argmax(1)


def _label_source(labels) -> torch.Tensor | None:
    if labels is None:
        return None
    y = torch.as_tensor(labels)
    if y.dim() != 1 or y.is_floating_point():
        raise WidthlabError(f"labels must be a 1-D integer sequence, got shape {tuple(y.shape)} of {y.dtype}")
    return y


def _clean_moments(model: nn.Module, inputs: Inputs, names: Sequence[str], unit_axis: int,
                   batch_size: int) -> dict[str, Moments]:
    """Streamed float64 moments of each layer over all evaluated rows (examples × positions)."""
    moments = {name: Moments() for name in names}
    for chunks, _ in stream_activations(model, inputs, names, unit_axis=unit_axis, batch_size=batch_size):
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


def _reproduces(job: Job, entry: Entry, sites: Sites, scores: torch.Tensor, ran: Sequence[str]) -> bool:
    """Whether the network after `entry` gives the model's `scores` for two stacked clean copies of the first rows
    of the batch, running each of the job's layers and producers after the layers `ran` exactly once."""
    rows = slice(0, 4)
    sites.begin("pass")
    got = _batched_scores(job, entry, sites, [(0, 0), (0, 0)], rows)
    expected = scores[rows].repeat(2, 1)
    tol = 1e-4 * float(expected.abs().max()) if expected.numel() else 0.0
    return (isinstance(got, torch.Tensor) and got.shape == expected.shape
            and bool(torch.allclose(got, expected, rtol=1e-4, atol=tol)) and sites.ran_once(job.sites(*ran)))


def _check_paths(work: list[Job], sites: Sites, scores: torch.Tensor, path: str) -> None:
    """On the first batch: keep the batched entries and donors that reproduce the model's scores."""
    for job in work:
        if job.entry is None or _reproduces(job, job.entry, sites, scores, job.entry.skipped):
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
                job, job.resume, sites, scores, [job.entry.layer, job.resume.layer])):
            unlink_donor(job)


def sweep(model: nn.Module, inputs: Inputs, jobs: Sequence[tuple[str, Sequence[str], np.ndarray]], *,
          samplings: int, seed: int, labels=None, unit_axis: int = 1, batch_size: int = 256, path: str = "auto",
          ablations_per_eval: int = 1, moments: Mapping[str, Moments] | None = None,
          skip_zero_inputs: bool = False,
          on_clean: Callable[[dict[str, torch.Tensor], int], None] | None = None) -> list[Curve]:
    """Measure several curves in one pass over the data: one `Curve` per ``(perturbation, scope, levels)`` job.

    A job of several layers whose first layer is also measured alone continues that job's evaluation from its
    second layer (see `Job`), as ``analyze``'s ``"all"`` scope does.

    Args:
        jobs: ``(perturbation name, scope layers, checked levels)`` per curve; layers are validated module names.
        moments: streamed clean moments of the layers (computed here when a perturbation needs them and a layer
            is missing).
        on_clean: called after each batch's clean pass with what `stream_activations` yields for the jobs'
            layers, ``({layer: (rows, units) chunk}, examples in the batch)``, so statistics can be streamed in
            the same pass.
        Everything else as in `perturbation_curve`.

    Example: ``sweep(model, x, [("zero", ["relu1"], SHARE_LEVELS)], samplings=3, seed=0)[0].auc``
    """
    if path not in PATHS:
        raise WidthlabError(f"unknown path {path!r}; valid: {', '.join(PATHS)}")
    check_positive_int("ablations_per_eval", ablations_per_eval)
    work = [Job(get_perturbation(name), list(scope), levels) for name, scope, levels in jobs]
    layers = list(dict.fromkeys(name for job in work for name in job.scope))
    weight_layers = list(dict.fromkeys(name for job in work if job.perturbation.weights for name in job.scope))
    moment_layers = [name for job in work if job.perturbation.needs_moments for name in job.scope]
    moments = dict(moments or {})
    missing = list(dict.fromkeys(name for name in moment_layers if name not in moments))
    if missing:
        moments.update(_clean_moments(model, inputs, missing, unit_axis, batch_size))
    labels = _label_source(labels)
    modules = dict(model.named_modules())

    with evaluating(model), torch.no_grad():
        source = batches(model, inputs, batch_size)
        first = next(source, None)
        if first is None:
            raise WidthlabError("inputs yielded no examples")
        found = probe(model, first[0][:2], layers, weight_layers)
        units = {name: output.shape[check_unit_axis(output, name, unit_axis)]
                 for name, output in found.outputs.items()}
        for job in work:
            plan_job(job, units, found.chains, modules, moments, samplings, seed, unit_axis)
        if path != "full":
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
        overridden = {name for job in work for name in job.weight_plans}
        if skip_zero_inputs:
            overridden |= {name for name, module in modules.items()
                           if is_plain_producer(module) and getattr(module, "groups", 1) == 1}
        captures = sorted({job.resume.resumes_at for job in work if job.resume is not None})
        with Sites(model, layers, sorted(overridden), captures, unit_axis, skip_zero_inputs) as sites:
            n = _run(model, work, sites, itertools.chain([first], source), labels, path, ablations_per_eval,
                     on_clean)
    if labels is not None and n != len(labels):
        raise WidthlabError(f"labels has {len(labels)} entries but the inputs yielded {n} examples")
    curves = []
    for job in work:
        unchanged = job.agree.cpu().numpy() / n
        accuracy = None if job.correct is None else job.correct.cpu().numpy() / n
        curves.append(Curve(levels=job.levels, unchanged=unchanged, accuracy=accuracy,
                            auc=np.array([robustness_auc(job.levels, row) for row in unchanged]),
                            path="full" if job.entry is None else "batched"))
    return curves


def _run(model, work: list[Job], sites: Sites, source, labels, path: str, per_eval: int, on_clean) -> int:
    """Evaluate every job on every batch of `source`; fill the jobs' counts and return the number of examples."""
    n, labelled, first = 0, True, True
    for x, batch_y in source:
        sites.new_batch(
            keep_outputs={job.entry.layer for job in work if job.entry and job.entry.chain is None}
            | {job.resume.layer for job in work if job.resume is not None},
            keep_inputs={job.entry.chain[0] for job in work if job.entry and job.entry.chain is not None},
            rows=on_clean is not None)
        sites.begin("clean")
        scores = model(x)
        base = _predictions(scores)  # (B,)
        sites.check_calls((set(sites.layers), set()), "the clean forward pass")
        if not torch.isfinite(scores).all():
            raise WidthlabError("the model returned NaN or inf scores")
        if on_clean is not None:
            on_clean(sites.rows, len(x))
        if labels is not None:
            if n + len(x) > len(labels):
                raise WidthlabError(f"labels has {len(labels)} entries but the inputs yield more examples")
            y = labels[n:n + len(x)].to(base.device)
        else:
            y = batch_y
            labelled = labelled and y is not None
        if first:
            _check_paths(work, sites, scores, path)
            for job in work:
                job.agree = torch.zeros(job.identical.shape, dtype=torch.int64, device=base.device)
                job.correct = torch.zeros_like(job.agree)
            first = False
        for job in work:
            _evaluate_batch(model, job, sites, x, base, y, n, per_eval)
        n += len(x)
    if not (labels is not None or labelled):
        for job in work:
            job.correct = None
    return n


def _evaluate_batch(model, job: Job, sites: Sites, x: torch.Tensor, base: torch.Tensor, y: torch.Tensor | None,
                    start: int, per_eval: int) -> None:
    """Add one batch to `job`'s counts: clean predictions for copies that perturb nothing, evaluations otherwise
    (a job with a donor evaluates here only the copies its donor does not; the rest follow the donor's)."""
    identical = job.identical.to(base.device)
    job.agree += identical * len(x)
    if y is not None:
        job.correct += identical * (base == y).sum()
    if job.donor is not None:
        own = [copy for copy in job.copies if copy not in job.donated]
        for lo in range(0, len(own), per_eval):
            copies = own[lo:lo + per_eval]
            sites.begin("perturb", job, copies, start)
            scores = _batched_scores(job, job.resume, sites, copies)
            sites.check_calls(job.sites(job.entry.layer, job.resume.layer), f"the network after {job.resume.layer!r}")
            _tally(job, copies, scores, base, y)
        return
    batched = job.entry is not None
    step = per_eval if batched else 1
    for lo in range(0, len(job.copies), step):
        copies = job.copies[lo:lo + step]
        sites.begin("perturb", job, copies, start)
        if batched:
            scores = _batched_scores(job, job.entry, sites, copies)
            ran, what = job.entry.skipped, f"the network after {job.entry.layer!r}"
        else:
            scores, ran, what = model(x), [], "a perturbed forward pass"
        sites.check_calls(job.sites(*ran), what)
        captured = dict(sites.captured)
        _tally(job, copies, scores, base, y)
        for recipient in job.recipients:
            _continue(recipient, copies, captured, sites, base, y, start)


def _continue(job: Job, donor_copies: list[tuple[int, int]], captured: dict[str, torch.Tensor], sites: Sites,
              base: torch.Tensor, y: torch.Tensor | None, start: int) -> None:
    """Evaluate the copies of `job` that continue `donor_copies`, from the values the donor's evaluation passed on
    at ``job.resume.resumes_at``."""
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
    sites.begin("perturb", job, copies, start)
    scores = job.resume.suffix(job.plans[job.resume.layer].apply(h, copies, start, fresh=True))
    sites.check_calls(job.sites(job.entry.layer, job.resume.layer), f"the network after {job.resume.layer!r}")
    _tally(job, copies, scores, base, y)


def _tally(job: Job, copies: list[tuple[int, int]], scores: object, base: torch.Tensor,
           y: torch.Tensor | None) -> None:
    """Add the predictions of m evaluated copies, scores (m·B, classes), to the counts of them and their twins."""
    pred = _predictions(scores).reshape(len(copies), len(base))  # (m, B)
    targets = [(j, twin) for j, copy in enumerate(copies) for twin in (copy, *job.twins.get(copy, ()))]
    rows = torch.tensor([j for j, _ in targets], device=pred.device)
    index = torch.tensor([twin for _, twin in targets], device=pred.device)
    job.agree[index[:, 0], index[:, 1]] += (pred == base).sum(1)[rows]
    if y is not None:
        job.correct[index[:, 0], index[:, 1]] += (pred == y).sum(1)[rows]

