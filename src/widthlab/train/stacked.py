"""Several models of one architecture as one: the batch of member r is rows r·B … (r+1)·B of every activation.

`stack_models(models)` deep-copies the first model and replaces each `nn.Linear` / `nn.Conv2d` by a stacked
layer holding every member's weights along a new leading dimension (the parameter names stay the model's, so
``stacked.state_dict()[k][r]`` is member r's ``state_dict()[k]``). Activations keep the model's own layout,
batch first, with the members' batches concatenated: every other module (activations, pooling, LRN, flatten,
a residual sum, a user's ``forward``) works per example and therefore unchanged.

- A stacked linear layer is one batched ``baddbmm`` per call: on the CPU it gives, member by member, the same
  float64 results as ``nn.Linear`` (``addmm``), bit for bit, in one kernel instead of R.
- A stacked convolution runs each member's convolution on its share of the batch (``grouped=False``, the CPU
  default: bit-identical) or one grouped convolution for all (``grouped=True``, the CUDA default: one launch).

Layers that mix examples (batch norm) or draw random numbers (dropout with p > 0) cannot be stacked this way;
`stackable` names the first such module, and `check_stacked` compares the stacked forward pass with the
members' own on real inputs, so a model whose ``forward`` mixes the examples of a batch is never trained
stacked by mistake. On CUDA, cuDNN runs float32 convolutions in TF32 (10 mantissa bits) by default, so the
check there promises what TF32 keeps, not float32's 1e-5; the CPU standing in for CUDA emulates that rounding
(`widthlab.train.standin`).
"""

from __future__ import annotations

import copy

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from widthlab.train.standin import emulate_tf32, uses_tf32

# How far a member's outputs may be from its own model's, relative to their largest magnitude: float32 keeps
# 24 bits (the stacked and the lone kernels sum in other orders: 1e-5); TF32 rounds every convolution's and
# matrix product's operands to 11, so an activation that lands on the other side of a rounding step moves by
# 2^-11 (5e-4) of itself, and the layers after it carry that on (an AlexNet's outputs differ by up to 8e-4
# under emulated TF32). 1e-2 is still far below what computing a member with the wrong weights gives (order 1).
FLOAT32_TOLERANCE = 1e-5
TF32_TOLERANCE = 1e-2


class _BatchedLinear(torch.autograd.Function):
    """``baddbmm`` with the backward products `nn.Linear`'s ``addmm`` takes (grad_W = Gᵀ·X, not (Xᵀ·G)ᵀ): the
    same BLAS calls per member, hence the same float64 bits."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        if bias is None:
            return torch.bmm(x, weight.transpose(1, 2))
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(grad.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(1) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


class StackedLinear(nn.Module):
    """`members` linear layers of one shape; input (R·B, …, in) → (R·B, …, out)."""

    def __init__(self, layers: list[nn.Linear]):
        super().__init__()
        self.members = len(layers)
        self.weight = nn.Parameter(torch.stack([layer.weight.detach() for layer in layers]))
        biases = [layer.bias for layer in layers]
        self.bias = None if biases[0] is None else nn.Parameter(torch.stack([b.detach() for b in biases]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(self.members, -1, x.shape[-1])
        if torch.is_autocast_enabled(x.device.type):  # mixed precision: autograd's own backward casts correctly
            weight = self.weight.transpose(1, 2)
            out = torch.bmm(rows, weight) if self.bias is None else torch.baddbmm(self.bias.unsqueeze(1), rows, weight)
        else:
            out = _BatchedLinear.apply(rows, self.weight, self.bias)
        return out.reshape(*x.shape[:-1], out.shape[-1])


class StackedConv2d(nn.Module):
    """`members` 2-d convolutions of one configuration (zero padding); input (R·B, C, H, W)."""

    def __init__(self, layers: list[nn.Conv2d], grouped: bool):
        super().__init__()
        first = layers[0]
        self.members, self.grouped = len(layers), grouped
        self.stride, self.padding = first.stride, first.padding
        self.dilation, self.groups = first.dilation, first.groups
        self.weight = nn.Parameter(torch.stack([layer.weight.detach() for layer in layers]))
        biases = [layer.bias for layer in layers]
        self.bias = None if biases[0] is None else nn.Parameter(torch.stack([b.detach() for b in biases]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.members
        if not self.grouped:
            biases = [None] * r if self.bias is None else self.bias.unbind(0)
            return torch.cat([F.conv2d(part, w, b, self.stride, self.padding, self.dilation, self.groups)
                              for part, w, b in zip(x.chunk(r), self.weight.unbind(0), biases)])
        batch = x.shape[0] // r
        side = x.reshape(r, batch, *x.shape[1:]).transpose(0, 1).reshape(batch, r * x.shape[1], *x.shape[2:])
        bias = None if self.bias is None else self.bias.flatten()
        out = F.conv2d(side, self.weight.flatten(0, 1), bias, self.stride, self.padding, self.dilation,
                       self.groups * r)
        return out.reshape(batch, r, -1, *out.shape[2:]).transpose(0, 1).reshape(r * batch, -1, *out.shape[2:])


def stackable(model: nn.Module) -> str | None:
    """None when `model` can be stacked, else why not (the first module in the way)."""
    modules = list(model.named_modules(remove_duplicate=False))
    if len({id(m) for _, m in modules}) < len(modules):
        return "a module is used twice (shared weights)"
    for name, module in modules:
        where = name or "the model itself"
        hooks = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks)
        if any(hooks):
            return f"{where} has hooks"
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            if {n for n, _ in module.named_parameters(recurse=False)} - {"weight", "bias"}:
                return f"{where} has parameters besides its weight and bias"
            if type(module) not in (nn.Linear, nn.Conv2d):
                return f"{where} is a {type(module).__name__} (a subclass may change forward)"
            if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
                return f"{where} pads with {module.padding_mode!r}"
            if list(module.buffers(recurse=False)):
                return f"{where} has buffers"
            continue
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return f"{where} draws dropout masks (p={module.p:g})"
        if list(module.parameters(recurse=False)) or list(module.buffers(recurse=False)):
            return f"{where} ({type(module).__name__}) has parameters or buffers that cannot be stacked"
    return None


def stack_models(models: list[nn.Module], *, grouped: bool = False) -> nn.Module:
    """One module computing every member of `models` (same architecture; see the module docstring)."""
    why = stackable(models[0])
    if why is not None:
        raise ValueError(f"cannot stack {type(models[0]).__name__}: {why}")
    stacked = copy.deepcopy(models[0])
    per_member = [dict(m.named_modules()) for m in models]
    for name, module in list(stacked.named_modules()):
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        layers = [modules[name] for modules in per_member]
        if any(type(layer) is not type(module) or layer.weight.shape != module.weight.shape for layer in layers):
            raise ValueError(f"cannot stack: layer {name!r} differs between the models")
        replacement = StackedLinear(layers) if isinstance(module, nn.Linear) else StackedConv2d(layers, grouped)
        parent, _, child = name.rpartition(".")
        setattr(stacked.get_submodule(parent) if parent else stacked, child, replacement)
    return stacked


def member_state(stacked: nn.Module, member: int) -> dict[str, torch.Tensor]:
    """Member `member`'s state dict (CPU copies), in the names of the original model."""
    return {k: v.detach()[member].to("cpu", copy=True) for k, v in stacked.state_dict().items()}


def load_members(stacked: nn.Module, states: list[dict[str, torch.Tensor]]) -> None:
    """Set every member's weights from its own state dict (in the original model's names)."""
    with torch.no_grad():
        for key, value in stacked.state_dict().items():
            value.copy_(torch.stack([state[key] for state in states]))


@torch.no_grad()
def check_stacked(stacked: nn.Module, models: list[nn.Module], x: torch.Tensor) -> str | None:
    """None when `stacked` computes each member's output on its own share of `x` (the examples are dealt out in
    order, at least one each: different inputs per member, so a forward that mixes the examples of a batch
    shows), float64 on the CPU bit for bit, else to what the device's float32 promises (`FLOAT32_TOLERANCE`,
    or `TF32_TOLERANCE` where convolutions or matrix products run in TF32: `uses_tf32`; on the CPU standing in
    for CUDA with TF32's rounding emulated), in training and in evaluation mode; else how it differs. Global
    RNG state is left untouched."""
    count = len(models)
    if len(x) < count:
        x = x.repeat((count + len(x) - 1) // len(x), *[1] * (x.dim() - 1))
    x = x[:len(x) // count * count]
    tf32 = uses_tf32(x.device)
    tolerance = TF32_TOLERANCE if tf32 else FLOAT32_TOLERANCE
    rounding = emulate_tf32() if tf32 and x.device.type == "cpu" else contextlib.nullcontext()
    with torch.random.fork_rng(devices=[]), rounding:
        for training in (True, False):
            for m in (stacked, *models):
                m.train(training)
            for r, (model, part, out) in enumerate(zip(models, x.chunk(count), stacked(x).chunk(count))):
                own = model(part)
                if own.shape != out.shape:
                    return f"member {r}: output shape {tuple(out.shape)} instead of {tuple(own.shape)}"
                exact = own.dtype == torch.float64 and own.device.type == "cpu"
                finite = own[own.isfinite()].abs()
                scale = float(finite.max()) if finite.numel() else 1.0
                same = torch.allclose(own.float(), out.float(), rtol=0 if exact else tolerance,
                                      atol=0 if exact else tolerance * max(scale, 1e-12), equal_nan=True)
                if not same:
                    mode = "training" if training else "evaluation"
                    return f"member {r} differs from the model trained alone ({mode} mode)"
    for m in (stacked, *models):
        m.train()
    return None
