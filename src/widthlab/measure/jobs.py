"""How the engine plans a sweep: its jobs (one curve each), their batched entries on proven cuts, and donors.

See `widthlab.measure.engine` for the evaluation itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from widthlab.errors import WidthlabError
from widthlab.measure.graph import declared_suffix, suffix_module, zero_commuting_chain
from widthlab.measure.perturbations import LayerSpec, ParameterPlan, Perturbation, Plan
from widthlab.measure.redundancy import Moments


@dataclass
class Entry:
    """A point a batched evaluation starts from: the clean output of cut `layer`, or, for weight perturbations,
    the clean input of the `chain` (producer, ..., layer) that recomputes it. A zero ablation at `layer` is applied
    after its `hoist` modules (`zero_commuting_chain`), which run once per batch; `suffix` runs the network from
    the last of them."""

    layer: str
    suffix: Callable[[torch.Tensor], object]
    proof: str  # "declared" or "fx"
    chain: list[str] | None = None
    hoist: list[str] = field(default_factory=list)

    @property
    def resumes_at(self) -> str:
        """The module whose output `suffix` takes."""
        return self.hoist[-1] if self.hoist else self.layer

    @property
    def skipped(self) -> list[str]:
        """The measured layer an evaluation from here does not run (a weight chain may run it again)."""
        return [] if self.chain and self.layer in self.chain else [self.layer]


@dataclass(eq=False)
class Job:
    """One curve being measured: a perturbation of a scope, its plans, how it is evaluated, and its counts.

    A job of several layers may continue a *donor*, the job of its first layer alone: up to its second layer,
    each of its perturbed copies computes exactly what the donor's copy of the same sampling and level does. It
    then takes the donor's value there (captured at ``resume.resumes_at``) and runs only the network after it.
    """

    perturbation: Perturbation
    scope: list[str]
    levels: np.ndarray
    index: int = 0  # its position among the sweep's jobs
    plans: dict[str, Plan] = field(default_factory=dict)  # layer -> plan
    weight_plans: dict[str, ParameterPlan] = field(default_factory=dict)  # producer module name -> plan
    identical: torch.Tensor | None = None  # (S, L) bool: the copy perturbs nothing
    copies: list[tuple[int, int]] = field(default_factory=list)  # the (sampling, level index) pairs to evaluate
    twins: dict = field(default_factory=dict)  # evaluated copy -> other copies that perturb identically
    entry: Entry | None = None  # None: full forward passes
    donor: Job | None = None
    resume: Entry | None = None  # where a job with a donor continues: its second layer
    donated: dict = field(default_factory=dict)  # own copy -> the donor's evaluated copy it continues
    recipients: list[Job] = field(default_factory=list)  # jobs continuing this one
    agree: torch.Tensor | None = None  # (S, L) examples whose prediction is unchanged
    correct: torch.Tensor | None = None  # (S, L) examples predicted correctly

    def sites(self, *ran: str) -> tuple[set[str], set[str]]:
        """``(hooked layers, producer modules)`` that must run exactly once in an evaluation that starts after
        the layers `ran` (their outputs come from elsewhere)."""
        return set(self.scope) - set(ran), set(self.weight_plans)


class Cuts:
    """The proven cuts of a model (declared, else by its fx graph) and batched entries on them, cached."""

    def __init__(self, model: nn.Module, graph, measured: set[str]):
        self.model, self.graph, self.measured = model, graph, measured
        self._suffixes: dict[str, tuple | None] = {}

    def suffix(self, layer: str) -> tuple[Callable, str] | None:
        """``(h -> scores from layer's output, proof)``, or None when `layer` is not a proven cut."""
        if layer not in self._suffixes:
            declared = declared_suffix(self.model, layer)
            traced = None if declared is not None or self.graph is None else suffix_module(self.model, self.graph,
                                                                                            layer)
            self._suffixes[layer] = ((declared, "declared") if declared is not None else
                                     None if traced is None else (traced, "fx"))
        return self._suffixes[layer]

    def entry(self, layer: str, plan, chain: list[str] | None = None) -> Entry | None:
        """An entry at cut `layer` for `plan`, a zero ablation hoisted as far as it goes; None if not a cut."""
        if self.suffix(layer) is None:
            return None
        if getattr(plan, "zero_fill", False) and self.graph is not None:
            hoist = zero_commuting_chain(self.model, self.graph, layer, self.measured)
            for end in range(len(hoist), 0, -1):
                if self.suffix(hoist[end - 1]) is not None:
                    # The hoist rests on the fx graph, so a failed check may fall back as for fx proofs.
                    return Entry(layer, self.suffix(hoist[end - 1])[0], "fx", hoist=hoist[:end])
        return Entry(layer, *self.suffix(layer), chain=chain)


def link_donor(job: Job, work: list[Job], order: list[str], cuts: Cuts) -> None:
    """Let a batched job of several layers continue the job of its first layer alone, if the sweep has one."""
    if job.entry is None or job.perturbation.weights or len(job.scope) < 2:
        return
    first = job.entry.layer
    donor = next((other for other in work if other is not job and other.scope == [first] and other.entry
                  and other.perturbation is job.perturbation and np.array_equal(other.levels, job.levels)), None)
    second = next(name for name in order if name in job.scope and name != first)
    resume = None if donor is None else cuts.entry(second, job.plans[second])
    if resume is None:
        return
    job.donor, job.resume = donor, resume
    donor.recipients.append(job)
    evaluated = {copy: copy for copy in donor.copies}
    evaluated.update({twin: copy for copy, twins in donor.twins.items() for twin in twins})
    # A copy whose first layer the donor leaves unperturbed (k = 0 there) starts from the clean value instead.
    job.donated = {copy: evaluated[copy] for copy in job.copies if copy in evaluated}


def unlink_donor(job: Job) -> None:
    job.donor.recipients.remove(job)
    job.donor, job.resume, job.donated = None, None, {}



def plan_job(job: Job, units: dict[str, int], chains: dict[str, list[str]], modules: dict[str, nn.Module],
          moments: Mapping[str, Moments], samplings: int, seed: int, axes: dict[str, int]) -> None:
    """Build `job`'s plans and the copies that need evaluating."""
    spec = job.perturbation
    for name in job.scope:
        producer = chains[name][0] if spec.weights else None
        if producer is not None and producer in job.weight_plans:
            raise WidthlabError(f"layers {job.scope} share the producing module {producer!r}; perturb its weights "
                                "through one of them")
        if spec.needs_moments and moments[name].n_units != units[name]:
            raise WidthlabError(f"moments of layer {name!r} have {moments[name].n_units} units, the layer has "
                                f"{units[name]}")
        plan = spec.build(LayerSpec(name, units[name], axes[name], job.levels, samplings, seed,
                                 moments.get(name), modules.get(producer)))
        job.plans[name] = plan
        if producer is not None:
            job.weight_plans[producer] = plan
    job.identical = torch.tensor([[all(plan.identity(s, i) for plan in job.plans.values())
                                   for i in range(len(job.levels))] for s in range(samplings)])
    groups: dict[tuple, list[tuple[int, int]]] = {}  # copies that perturb identically are evaluated once
    for s in range(samplings):
        for i in range(len(job.levels)):
            if not job.identical[s, i]:
                groups.setdefault(tuple(plan.signature(s, i) for plan in job.plans.values()), []).append((s, i))
    job.copies = [members[0] for members in groups.values()]
    job.twins = {members[0]: members[1:] for members in groups.values() if len(members) > 1}

