"""Weight-initialisation schemes: how one weight tensor is drawn, for the model zoo and the synthetic teacher.

Standard definitions (fan_in / fan_out count input / output channels times the kernel's receptive field):

=================  ==============================================
``normal``          N(0, sigma²)                       (default sigma 0.01)
``truncated_normal`` N(0, sigma²) redrawn outside ±2·sigma (TensorFlow's convention)
``glorot_normal``   N(0, 2 / (fan_in + fan_out))
``glorot_uniform``  U(±sqrt(6 / (fan_in + fan_out)))
``lecun_normal``    N(0, 1 / fan_in)
``lecun_uniform``   U(±sqrt(3 / fan_in))
``he_normal``       N(0, 2 / fan_in)
``he_uniform``      U(±sqrt(6 / fan_in))
=================  ==============================================

The paper prints LeCun's variance as sqrt(3)/fan_in, which matches neither LeCun's normal nor his uniform
rule; we use LeCun et al. (1998): variance 1/fan_in (uniform: limit sqrt(3/fan_in), the same variance).
The Glorot/LeCun/He normals are untruncated, as in PyTorch's `torch.nn.init`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from widthlab.errors import WidthlabError

INIT_SCHEMES = (
    "normal",
    "truncated_normal",
    "glorot_normal",
    "glorot_uniform",
    "lecun_normal",
    "lecun_uniform",
    "he_normal",
    "he_uniform",
)
DEFAULT_SIGMA = 0.01


def _fans(weight: torch.Tensor) -> tuple[int, int]:
    receptive = math.prod(weight.shape[2:]) if weight.dim() > 2 else 1
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def init_tensor_(weight: torch.Tensor, scheme: str, sigma: float | None, generator: torch.Generator | None) -> None:
    """Fill one weight tensor in place according to `scheme`."""
    fan_in, fan_out = _fans(weight)
    family, _, dist = scheme.rpartition("_")
    if scheme in ("normal", "truncated_normal"):
        std = DEFAULT_SIGMA if sigma is None else sigma
        if scheme == "normal":
            nn.init.normal_(weight, 0.0, std, generator=generator)
        else:
            nn.init.trunc_normal_(weight, 0.0, std, -2 * std, 2 * std, generator=generator)
        return
    gain_var = {"glorot": 2.0 / (fan_in + fan_out), "lecun": 1.0 / fan_in, "he": 2.0 / fan_in}[family]
    if dist == "normal":
        nn.init.normal_(weight, 0.0, math.sqrt(gain_var), generator=generator)
    else:  # uniform on ±a has variance a²/3
        bound = math.sqrt(3.0 * gain_var)
        nn.init.uniform_(weight, -bound, bound, generator=generator)


def check_init(init: str, sigma: float | None) -> None:
    """Raise a clear error for an unknown scheme or a sigma that the scheme cannot use."""
    if init not in INIT_SCHEMES:
        raise WidthlabError(f"unknown init {init!r}; valid: {', '.join(INIT_SCHEMES)}")
    if sigma is not None:
        if init not in ("normal", "truncated_normal"):
            raise WidthlabError(f"sigma={sigma!r} only applies to init 'normal' or 'truncated_normal', not {init!r}")
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
            raise WidthlabError(f"sigma must be a positive number, got {sigma!r}")
