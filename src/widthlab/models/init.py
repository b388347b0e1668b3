"""Weight-initialisation schemes shared by every model of the zoo.

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
Biases start at zero; normalisation layers at weight 1, bias 0.
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


@torch.no_grad()
def initialize(model: nn.Module, init: str = "glorot_normal", sigma: float | None = None,
               seed: int | None = None) -> nn.Module:
    """Initialise every Conv/Linear weight of `model` by `init`; zero biases; norm layers at (1, 0).

    Args:
        init: one of `INIT_SCHEMES`.
        sigma: standard deviation for ``normal`` / ``truncated_normal`` (default 0.01).
        seed: if given, the draws come from a private generator, so the result ignores global RNG state.
    """
    check_init(init, sigma)
    generator = None if seed is None else torch.Generator().manual_seed(int(seed))
    if all(p.is_meta for p in model.parameters()):
        return model  # shapes only (parameter counts, memory checks): nothing to draw; a first draw costs ~2 s
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            init_tensor_(module.weight, init, sigma, generator)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
            if getattr(module, "weight", None) is not None:
                module.weight.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
    return model
