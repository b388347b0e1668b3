"""The engine's handles on a model during a sweep: forward hooks (`widthlab.measure.hooks`) and forward overrides,
removed in ``finally``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from widthlab.errors import WidthlabError
from widthlab.measure.capture import check_unit_axis, unit_rows
from widthlab.measure.graph import weighted_forward
from widthlab.measure.hooks import hooked, ran_twice
from widthlab.measure.layout import is_hf_conv1d
from widthlab.measure.jobs import Entry, Job


class Sites:
    """The engine's handles on the model during a sweep: forward hooks on the measured layers and on the modules
    whose outputs donors pass on, and forward overrides on the Conv/Linear modules it perturbs or skips zeros in.
    Used as a context manager: everything is removed in ``finally``.

    ``mode`` says what a forward pass is: ``"clean"`` (check and keep outputs), ``"perturb"`` (apply the current
    job's plans to the current copies) or ``"pass"`` (change nothing).
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], overridden: Sequence[str], captures: Sequence[str],
                 axes: dict[str, int], skip_zero_inputs: bool):
        self.modules = dict(model.named_modules())
        self.layers, self.overridden, self.captures = list(layers), list(overridden), list(captures)
        self.axes, self.skip = axes, skip_zero_inputs
        self.mask: torch.Tensor | None = None  # (B, T) real tokens of this batch
        self.mode, self.job, self.copies, self.start = "pass", None, [], 0
        self.rows: dict[str, torch.Tensor] | None = None  # clean (rows, units) chunks, when wanted
        self.keep_outputs: set[str] = set()
        self.keep_inputs: set[str] = set()
        self.outputs: dict[str, torch.Tensor] = {}  # clean outputs of `keep_outputs` layers, this batch
        self.hoisted: dict[tuple[str, ...], torch.Tensor] = {}  # those outputs after an entry's hoist, this batch
        self.inputs: dict[str, torch.Tensor] = {}  # clean inputs of `keep_inputs` modules, this batch
        self.capture_at: set[str] = set()  # modules whose outputs this evaluation passes on
        self.captured: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}  # hooked layer -> runs in this evaluation
        self.forwards: dict[str, int] = {}  # overridden module -> runs in this evaluation
        self._model = model
        self._stack = ExitStack()

    def __enter__(self) -> Sites:
        with ExitStack() as stack:
            stack.enter_context(hooked(self._model, self.layers, forward=self._hook))
            # after the layer hooks, so a captured layer output is the clean one
            stack.enter_context(hooked(self._model, self.captures, forward=self._capture))
            for name in self.overridden:
                stack.enter_context(self._override(name))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    @contextmanager
    def _override(self, name: str) -> Iterator[None]:
        """`_forward` in place of module `name`'s forward for the block; its own instance-level forward back after."""
        # An instance attribute shadows the class's forward for nn.Module.__call__, hooks included.
        module = self.modules[name]
        previous = module.__dict__.get("forward")
        module.forward = self._forward(name)
        try:
            yield
        finally:
            del module.forward
            if previous is not None:
                module.forward = previous

    def new_batch(self, keep_outputs: set[str], keep_inputs: set[str], rows: bool,
                  mask: torch.Tensor | None = None) -> None:
        """Forget the previous batch's values; the clean pass to come keeps these and (if `rows`) layer rows
        (of real tokens only, with a `mask`)."""
        self.mask = mask
        self.keep_outputs, self.keep_inputs = keep_outputs, keep_inputs
        self.rows = {} if rows else None
        self.outputs.clear()
        self.hoisted.clear()
        self.inputs.clear()

    def entry_value(self, entry: Entry) -> torch.Tensor:
        """The clean output of `entry`'s layer after its hoist modules (computed once per batch)."""
        if not entry.hoist:
            return self.outputs[entry.layer]
        key = (entry.layer, *entry.hoist)
        if key not in self.hoisted:
            h = self.outputs[entry.layer].clone()  # a hoisted module may work in place
            for name in entry.hoist:
                h = self.modules[name](h)
            self.hoisted[key] = h
        return self.hoisted[key]

    def begin(self, mode: str, job: Job | None = None, copies: Sequence[tuple[int, int]] = (),
              start: int = 0) -> None:
        """Start one forward evaluation of `mode`."""
        self.mode, self.job, self.copies, self.start = mode, job, list(copies), start
        self.calls.clear()
        self.forwards.clear()
        self.captured.clear()
        self.capture_at = set() if job is None else {r.resume.resumes_at for r in job.recipients}

    def ran_once(self, sites: tuple[set[str], set[str]]) -> bool:
        """Whether every hooked layer and overridden module of `sites` ran exactly once in this evaluation."""
        layers, modules = sites
        return (all(self.calls.get(name, 0) == 1 for name in layers)
                and all(self.forwards.get(name, 0) == 1 for name in modules))

    def check_calls(self, sites: tuple[set[str], set[str]], what: str) -> None:
        """A WidthlabError naming any of `sites` that did not run exactly once in the evaluation just done."""
        layers, modules = sites
        wrong = sorted({name for name in layers if self.calls.get(name, 0) != 1}
                       | {name for name in modules if self.forwards.get(name, 0) != 1})
        if wrong:
            raise WidthlabError(f"{', '.join(map(repr, wrong))} did not run exactly once in {what}")

    def _hook(self, name: str):
        def hook(module, args, output):
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.calls[name] > 1:
                raise WidthlabError(ran_twice(name))
            if self.mode == "clean":
                if self.rows is not None:
                    self.rows[name] = unit_rows(output, name, self.axes[name], self.mask)  # checks axis and values
                else:
                    check_unit_axis(output, name, self.axes[name])
                    if not torch.isfinite(output).all():
                        raise WidthlabError(f"layer {name!r} produced NaN or inf activations")
                if name in self.keep_outputs:
                    # Kept for the batched path after the pass; a later in-place op must not touch it.
                    self.outputs[name] = output.detach().clone()
            elif self.mode == "perturb":
                plan = self.job.plans.get(name)
                if plan is not None and not plan.weights:
                    return plan.apply(output, self.copies, self.start)
            return None
        return hook

    def _capture(self, name: str):
        def hook(module, args, output):
            if name in self.capture_at:
                self.captured[name] = output.detach().clone()  # later in-place ops must not touch it
        return hook

    def _forward(self, name: str):
        module = self.modules[name]
        plain = type(module).forward

        def forward(x: torch.Tensor) -> torch.Tensor:
            self.forwards[name] = self.forwards.get(name, 0) + 1
            if self.mode == "clean" and name in self.keep_inputs:
                self.inputs[name] = x.detach().clone()
            plan = self.job.weight_plans.get(name) if self.mode == "perturb" else None
            skip = self.skip and self.mode == "perturb" and getattr(module, "groups", 1) == 1
            if plan is None and not skip:
                return plain(module, x)
            parts = x.reshape(len(self.copies), -1, *x.shape[1:])  # (m, B, ...) one batch per copy
            outs = []
            for part, (s, i) in zip(parts, self.copies):
                weight = module.weight if plan is None or plan.identity(s, i) else plan.weight(s, i)
                outs.append(forward_skipping_zeros(module, part, weight) if skip
                            else weighted_forward(module, part, weight))
            return outs[0] if len(outs) == 1 else torch.cat(outs)
        return forward


def forward_skipping_zeros(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`weighted_forward` without the input channels of `x` that are exactly zero everywhere (nor their weights)."""
    last = isinstance(module, nn.Linear) or is_hf_conv1d(module)
    axis = x.dim() - 1 if last else 1
    # abs().amax() is several times faster than ne().any(); "!= 0" keeps a NaN channel alive.
    alive = x.abs().amax(dim=tuple(d for d in range(x.dim()) if d != axis)) != 0  # (C_in,)
    if bool(alive.all()):
        return weighted_forward(module, x, weight)
    # One channel is kept when all are zero, so the shapes stay valid (the output is then the bias).
    index = alive.nonzero()[:, 0] if bool(alive.any()) else alive.new_zeros(1, dtype=torch.int64)
    # HF's Conv1D stores its weight (in, out), the others (out, in, ...).
    return weighted_forward(module, x.index_select(axis, index), weight.index_select(0 if is_hf_conv1d(module) else 1,
                                                                                     index))
