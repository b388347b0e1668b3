"""Runs of one architecture at different widths as one model: a stacked model (`widthlab.train.stacked`) per
width, computed in one forward pass.

`stack_mixed(models)` stacks each run of consecutive models whose parameters have the same shapes (one width)
with `stack_models`, and when there is more than one such part wraps them in a `MixedStack`: its input is the
members' batches concatenated in member order, as a stacked model's, and each part takes its members' rows and
gives their outputs, concatenated in the same order. A part computes exactly what it computes as a group of its
own (the same kernels on the same shapes; concatenating and splitting do no arithmetic), so every member's
numbers are those of its width's stacked model, and in float64 on the CPU those of the run trained alone. What
the parts share is everything around the layers: one loss call, one backward pass and one optimiser step per
step for all widths, instead of one of each per width (on the CPU, small models are bound by that per-step
overhead: benchmarks/vectorized_training.py).

`member_state`, `load_members`, `member_optimizer_state` and `stack_optimizer_states` read and write one
member's weights and optimiser state in its own shapes and names, for a `MixedStack` or a plain stacked model;
`member_models` gives one module per member, sharing the stacked parameters, to evaluate member by member.
"""

from __future__ import annotations

import copy
import weakref

import torch
from torch import nn

from widthlab.train import stacked as plain


def _shapes(model: nn.Module) -> tuple:
    return tuple((name, tuple(value.shape), value.dtype) for name, value in model.state_dict().items())


class MixedStack(nn.Module):
    """Stacked models of one architecture at different widths: `parts[p]` stacks members
    ``starts[p] … starts[p] + sizes[p] - 1``; input (R·B, …) → (R·B, …) as a stacked model's."""

    def __init__(self, models: list[nn.Module], *, grouped: bool = False):
        super().__init__()
        shapes = [_shapes(m) for m in models]
        starts = [0, *(r for r in range(1, len(models)) if shapes[r] != shapes[r - 1])]
        ends = [*starts[1:], len(models)]
        self.members = len(models)
        self.starts, self.sizes = starts, [end - start for start, end in zip(starts, ends)]
        self.parts = nn.ModuleList(plain.stack_models(models[start:end], grouped=grouped)
                                   for start, end in zip(starts, ends))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = len(x) // self.members
        return torch.cat([part(chunk) for part, chunk in zip(self.parts, x.split([n * rows for n in self.sizes]))])

    def locate(self, member: int) -> tuple[int, int]:
        """(part, index within that part) of member `member`."""
        part = max(p for p, start in enumerate(self.starts) if start <= member)
        return part, member - self.starts[part]


def stack_mixed(models: list[nn.Module], *, grouped: bool = False) -> nn.Module:
    """`stack_models(models)` when the models' parameters have one set of shapes, else a `MixedStack` (models of
    one shape must be consecutive to share a part: order them by width)."""
    if len({_shapes(m) for m in models}) == 1:
        return plain.stack_models(models, grouped=grouped)
    return MixedStack(models, grouped=grouped)


def member_state(stacked: nn.Module, member: int) -> dict[str, torch.Tensor]:
    """Member `member`'s state dict (CPU copies), in the names and shapes of its own model."""
    if isinstance(stacked, MixedStack):
        part, index = stacked.locate(member)
        return plain.member_state(stacked.parts[part], index)
    return plain.member_state(stacked, member)


def load_members(stacked: nn.Module, states: list[dict[str, torch.Tensor]]) -> None:
    """Set every member's weights from its own state dict."""
    if not isinstance(stacked, MixedStack):
        plain.load_members(stacked, states)
        return
    for part, start, size in zip(stacked.parts, stacked.starts, stacked.sizes):
        plain.load_members(part, states[start:start + size])


def member_optimizer_state(stacked: nn.Module, optimizer: torch.optim.Optimizer, member: int) -> dict:
    """Member `member`'s share of the state dict of an optimiser over ``stacked.parameters()``: what its own
    optimiser (over its own model's parameters) would hold."""
    state = optimizer.state_dict()
    if not isinstance(stacked, MixedStack):  # every parameter is the members' own, stacked: its slice of each
        return {"state": {key: _slice(entry, member) for key, entry in state["state"].items()},
                "param_groups": state["param_groups"]}
    params = len(list(stacked.parts[0].parameters()))
    part, index = stacked.locate(member)
    first = part * params
    (group,) = state["param_groups"]  # `make_optimizer`: one group over every parameter
    return {"state": {key - first: _slice(entry, index) for key, entry in state["state"].items()
                      if first <= key < first + params},
            "param_groups": [dict(group, params=list(range(params)))]}


def _slice(entry: dict, index: int) -> dict:
    return {name: value[index].clone() if torch.is_tensor(value) and value.dim() > 0 else value
            for name, value in entry.items()}


def _stack_entries(entries: list[dict]) -> dict:
    return {name: torch.stack([entry[name] for entry in entries]) if torch.is_tensor(value) and value.dim() > 0
            else value for name, value in entries[0].items()}


def stack_optimizer_states(stacked: nn.Module, states: list[dict]) -> dict:
    """The state dict of an optimiser over ``stacked.parameters()`` from each member's own (`states`, in member
    order): the inverse of `member_optimizer_state`."""
    if not isinstance(stacked, MixedStack):
        return {"state": {key: _stack_entries([s["state"][key] for s in states]) for key in states[0]["state"]},
                "param_groups": states[0]["param_groups"]}
    (group,) = states[0]["param_groups"]
    params = len(group["params"])
    merged = {}
    for part, (start, size) in enumerate(zip(stacked.starts, stacked.sizes)):
        members = states[start:start + size]
        for key in members[0]["state"]:
            merged[part * params + key] = _stack_entries([s["state"][key] for s in members])
    return {"state": merged, "param_groups": [dict(group, params=list(range(len(stacked.parts) * params)))]}


_MEMBER_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def member_models(stacked: nn.Module) -> list[nn.Module]:
    """One module per member of `stacked` (a `MixedStack` or a plain stacked model), in evaluation mode, that
    computes that member alone on its own batch (B, …): its stacked layers restricted to the member, holding
    views of the stacked parameters, so they follow training, `load_members` and the optimiser (all in place).
    Each runs the member's kernels on the shapes the stacked pass gives it, so the same bits; on the CPU,
    evaluating member by member keeps the activations in cache (mlp-10d's validation passes: about half the
    time). Cached per stacked model while its parameters keep their storage."""
    key = tuple(p.data_ptr() for p in stacked.parameters())
    cached = _MEMBER_MODELS.get(stacked)
    if cached is not None and cached[0] == key:
        return cached[1]
    parts = (zip(stacked.parts, stacked.sizes) if isinstance(stacked, MixedStack)
             else [(stacked, next(m.members for m in stacked.modules() if isinstance(m, _STACKED)))])
    views = [_member_view(part, index) for part, size in parts for index in range(size)]
    _MEMBER_MODELS[stacked] = (key, views)
    return views


_STACKED = (plain.StackedLinear, plain.StackedConv2d)


def _member_view(part: nn.Module, index: int) -> nn.Module:
    """Stacked model `part` restricted to member `index`: a stacked model of one member on views of its weights."""
    with torch.no_grad():
        view = copy.deepcopy(part, memo={id(p): p.detach()[index:index + 1] for p in part.parameters()})
    for module in view.modules():
        if isinstance(module, _STACKED):
            module.members = 1
    return view.eval()
