"""The CUDA path without a GPU: what CI runs in place of every branch that only a GPU would take.

A GPU changes two kinds of things: *decisions* (the ``auto`` switches of `Speed`, grouped convolutions for
stacked runs, stacking convolutional models at all, the tolerance of the stacked check) and *numerics* (cuDNN's
TF32 convolutions). With ``WIDTHLAB_CUDA_STANDIN=1`` in the environment (a test hook, not a user setting) every
decision is taken on the CPU as it is on CUDA while the tensors stay on the CPU, and `emulate_tf32` rounds the
operands of every convolution and matrix product to TF32's 10 mantissa bits, so the tests exercise each
CUDA-only branch on a machine without one.
"""

from __future__ import annotations

import os

import torch
from torch.utils._python_dispatch import TorchDispatchMode

STANDIN_ENV = "WIDTHLAB_CUDA_STANDIN"


def cuda_standin() -> bool:
    """Whether the CPU stands in for CUDA (``WIDTHLAB_CUDA_STANDIN=1``; a test hook)."""
    return os.environ.get(STANDIN_ENV, "") == "1"


def cuda_like(device: torch.device) -> bool:
    """Whether training on `device` takes CUDA's decisions: on CUDA, or on the CPU standing in for it."""
    return device.type == "cuda" or (device.type == "cpu" and cuda_standin())


def uses_tf32(device: torch.device) -> bool:
    """Whether float32 convolutions or matrix products on `device` may run in TF32 (10 mantissa bits): on CUDA
    as torch is set (cuDNN's convolutions by default, matrix products when ``allow_tf32`` or a float32 matmul
    precision below ``highest`` says so); on the CPU standing in for CUDA, always (`emulate_tf32`)."""
    if device.type == "cuda":
        return bool(torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32
                    or torch.get_float32_matmul_precision() != "highest")
    return cuda_like(device)


def round_tf32(x: torch.Tensor) -> torch.Tensor:
    """`x` (float32) rounded to TF32: 10 mantissa bits, to nearest, ties to even (infinities and NaNs kept)."""
    bits = x.contiguous().view(torch.int32)
    bits = (bits + 0x0FFF + ((bits >> 13) & 1)) & ~0x1FFF
    rounded = bits.view(torch.float32).reshape(x.shape)
    return torch.where(x.isfinite(), rounded, x)


# The multiplied operands of each product (a bias added by addmm / baddbmm is not rounded: TF32 only changes
# the multiplication's inputs, the accumulation stays float32).
_OPERANDS = {"convolution": (0, 1), "mm": (0, 1), "bmm": (0, 1), "addmm": (1, 2), "baddbmm": (1, 2)}


class emulate_tf32(TorchDispatchMode):
    """While active, every float32 convolution and matrix product rounds its inputs and weights to TF32 first,
    as an Ampere-or-later GPU does by default for convolutions: the CPU's numbers then show the rounding a GPU
    adds (an input that lands on the other side of a rounding step moves by 2⁻¹¹ of itself)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        operands = _OPERANDS.get(func._overloadpacket.__name__)
        if operands is not None:
            args = list(args)
            for i in operands:
                if isinstance(args[i], torch.Tensor) and args[i].dtype == torch.float32:
                    args[i] = round_tf32(args[i])
        return func(*args, **kwargs)
