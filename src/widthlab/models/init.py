"""`initialize`: every model of the zoo starts from one of the schemes of `widthlab.init_schemes`.

Conv/Linear weights follow the scheme; biases start at zero; normalisation layers at weight 1, bias 0.
"""

from __future__ import annotations

import torch
from torch import nn

from widthlab.init_schemes import check_init, init_tensor_


@torch.no_grad()
def initialize(model: nn.Module, init: str = "glorot_normal", sigma: float | None = None,
               seed: int | None = None) -> nn.Module:
    """Initialise every Conv/Linear weight of `model` by `init`; zero biases; norm layers at (1, 0).

    Args:
        init: one of `widthlab.init_schemes.INIT_SCHEMES`.
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
