"""Inception-v3 (Szegedy et al. 2016) for ImageNet, width-scaled, written from scratch.

The block structure and names are those of TF-slim's ``inception_v3`` and torchvision's ``Inception3``:

    Conv2d_1a_3x3 → Conv2d_2a_3x3 → Conv2d_2b_3x3 → maxpool1 → Conv2d_3b_1x1 → Conv2d_4a_3x3 → maxpool2
    → Mixed_5b, 5c, 5d (35×35×288) → Mixed_6a … 6e (17×17×768) → Mixed_7a, 7b, 7c (8×8×2048)
    → avgpool → dropout → flatten → fc

(sizes for the default 299×299 input; 75×75 is the smallest that passes). Every convolution is a `BasicConv2d`:
conv without bias → BN (eps 0.001, momentum 0.0003 = TensorFlow's decay 0.9997, the paper's) → ReLU. The width
factor multiplies the filters of every branch of every block; a block's input follows the previous output.
Unit layers (the reference code's): the last block of each resolution, ``Mixed_5d``, ``Mixed_6e``, ``Mixed_7c``.
Every top-level child is a cut of the graph. No auxiliary classifier.

Choices following TF-slim (the paper's code) where torchvision differs: the 3×3 average pools of the blocks
exclude the padding from the mean (TensorFlow's 'SAME'), and dropout before the classifier is 0.2 (TF-slim's
keep probability 0.8; torchvision uses 0.5). BN keeps its learned scale, as in torchvision (TF-slim has none),
so the 1x model has torchvision's 23,834,568 parameters without aux logits.

`inception_v3_mixed5d` is the paper's single-layer variant: only ``Mixed_5d`` is scaled. Because Mixed_6a passes
its input through a max-pool branch, Mixed_6a's output and hence Mixed_6b's input grow with Mixed_5d too: the
weights that change are Mixed_5d's and those reading the wider input in Mixed_6a and Mixed_6b.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from widthlab.errors import WidthlabError
from widthlab.models.registry import check_positive_ints, check_probabilities, register_model, scale_width
from widthlab.models.sequential import CutSequential


class BasicConv2d(nn.Sequential):
    """conv (no bias) → BN (eps 0.001, momentum 0.0003) → ReLU.

    Args:
        in_channels, out_channels: channels; kernel_size, stride (default 1), padding (default 0): the conv's.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0):
        super().__init__(OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False),
            bn=nn.BatchNorm2d(out_channels, eps=0.001, momentum=0.0003),
            relu=nn.ReLU(),
        ))
        self.out_channels = out_channels


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    """3×3/1 average pool that keeps the size and, like TensorFlow's 'SAME', averages real pixels only."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35×35 block: 1×1 | 1×1 → 5×5 | 1×1 → 3×3 → 3×3 | avg-pool → 1×1; 1x out = 224 + pool_features."""

    def __init__(self, in_channels: int, pool_features: int, width: float):
        super().__init__()
        c = partial(scale_width, width=width)
        self.branch1x1 = BasicConv2d(in_channels, c(64), 1)
        self.branch5x5_1 = BasicConv2d(in_channels, c(48), 1)
        self.branch5x5_2 = BasicConv2d(c(48), c(64), 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, c(64), 1)
        self.branch3x3dbl_2 = BasicConv2d(c(64), c(96), 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c(96), c(96), 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, c(pool_features), 1)
        self.out_channels = c(64) + c(64) + c(96) + c(pool_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool(x)),
        ], dim=1)


class InceptionB(nn.Module):
    """35×35 → 17×17 reduction: 3×3/2 | 1×1 → 3×3 → 3×3/2 | max-pool/2 (passes the input's channels through)."""

    def __init__(self, in_channels: int, width: float):
        super().__init__()
        c = partial(scale_width, width=width)
        self.branch3x3 = BasicConv2d(in_channels, c(384), 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, c(64), 1)
        self.branch3x3dbl_2 = BasicConv2d(c(64), c(96), 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c(96), c(96), 3, stride=2)
        self.out_channels = c(384) + c(96) + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], dim=1)


class InceptionC(nn.Module):
    """17×17 block with factorised 7×7 convs of `channels_7x7` filters; 1x out = 4 · 192 = 768."""

    def __init__(self, in_channels: int, channels_7x7: int, width: float):
        super().__init__()
        c = partial(scale_width, width=width)
        c7 = c(channels_7x7)
        self.branch1x1 = BasicConv2d(in_channels, c(192), 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, c(192), (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, c(192), (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, c(192), 1)
        self.out_channels = 4 * c(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(self.branch7x7dbl_2(self.branch7x7dbl_1(x))))),
            self.branch_pool(_avg_pool(x)),
        ], dim=1)


class InceptionD(nn.Module):
    """17×17 → 8×8 reduction: 1×1 → 3×3/2 | 1×1 → 1×7 → 7×1 → 3×3/2 | max-pool/2 (input passed through)."""

    def __init__(self, in_channels: int, width: float):
        super().__init__()
        c = partial(scale_width, width=width)
        self.branch3x3_1 = BasicConv2d(in_channels, c(192), 1)
        self.branch3x3_2 = BasicConv2d(c(192), c(320), 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, c(192), 1)
        self.branch7x7x3_2 = BasicConv2d(c(192), c(192), (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(c(192), c(192), (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(c(192), c(192), 3, stride=2)
        self.out_channels = c(320) + c(192) + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3_2(self.branch3x3_1(x)),
            self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x)))),
            F.max_pool2d(x, 3, stride=2),
        ], dim=1)


class InceptionE(nn.Module):
    """8×8 block whose 3×3 branches split into parallel 1×3 and 3×1 convs; 1x out = 320 + 768 + 768 + 192."""

    def __init__(self, in_channels: int, width: float):
        super().__init__()
        c = partial(scale_width, width=width)
        self.branch1x1 = BasicConv2d(in_channels, c(320), 1)
        self.branch3x3_1 = BasicConv2d(in_channels, c(384), 1)
        self.branch3x3_2a = BasicConv2d(c(384), c(384), (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(c(384), c(384), (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, c(448), 1)
        self.branch3x3dbl_2 = BasicConv2d(c(448), c(384), 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(c(384), c(384), (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(c(384), c(384), (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, c(192), 1)
        self.out_channels = c(320) + 4 * c(384) + c(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h3 = self.branch3x3_1(x)  # (B, 384, 8, 8) at 1x, read by both halves of the split
        hdbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(h3), self.branch3x3_2b(h3),
            self.branch3x3dbl_3a(hdbl), self.branch3x3dbl_3b(hdbl),
            self.branch_pool(_avg_pool(x)),
        ], dim=1)


# Layers the width factor applies to, in order; `scale_only` names one of them.
SCALABLE = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
            "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
            "Mixed_7a", "Mixed_7b", "Mixed_7c")


class InceptionV3(CutSequential):
    """Inception-v3 without auxiliary classifier; see the module docstring.

    Args:
        num_classes: size of the final layer.
        width: multiplies the filters of every conv of the scaled layers (default 1.0).
        scale_only: apply `width` to this one layer of `SCALABLE` only (default None: to all of them).
        dropout: drop probability before the classifier (default 0.2).
    """

    def __init__(self, num_classes: int, width: float = 1.0, scale_only: str | None = None, dropout: float = 0.2):
        if scale_only is not None and scale_only not in SCALABLE:
            raise WidthlabError(f"scale_only must be one of {', '.join(SCALABLE)}, got {scale_only!r}")

        def w(name: str) -> float:
            return width if scale_only in (None, name) else 1.0

        # Shapes for a 299×299 input at 1x.
        conv_1a = BasicConv2d(3, scale_width(32, w("Conv2d_1a_3x3")), 3, stride=2)  # (B, 32, 149, 149)
        conv_2a = BasicConv2d(conv_1a.out_channels, scale_width(32, w("Conv2d_2a_3x3")), 3)  # (B, 32, 147, 147)
        conv_2b = BasicConv2d(conv_2a.out_channels, scale_width(64, w("Conv2d_2b_3x3")), 3, padding=1)
        conv_3b = BasicConv2d(conv_2b.out_channels, scale_width(80, w("Conv2d_3b_1x1")), 1)  # (B, 80, 73, 73)
        conv_4a = BasicConv2d(conv_3b.out_channels, scale_width(192, w("Conv2d_4a_3x3")), 3)  # (B, 192, 71, 71)
        mixed_5b = InceptionA(conv_4a.out_channels, 32, w("Mixed_5b"))  # (B, 256, 35, 35)
        mixed_5c = InceptionA(mixed_5b.out_channels, 64, w("Mixed_5c"))  # (B, 288, 35, 35)
        mixed_5d = InceptionA(mixed_5c.out_channels, 64, w("Mixed_5d"))  # (B, 288, 35, 35)
        mixed_6a = InceptionB(mixed_5d.out_channels, w("Mixed_6a"))  # (B, 768, 17, 17)
        mixed_6b = InceptionC(mixed_6a.out_channels, 128, w("Mixed_6b"))
        mixed_6c = InceptionC(mixed_6b.out_channels, 160, w("Mixed_6c"))
        mixed_6d = InceptionC(mixed_6c.out_channels, 160, w("Mixed_6d"))
        mixed_6e = InceptionC(mixed_6d.out_channels, 192, w("Mixed_6e"))  # (B, 768, 17, 17)
        mixed_7a = InceptionD(mixed_6e.out_channels, w("Mixed_7a"))  # (B, 1280, 8, 8)
        mixed_7b = InceptionE(mixed_7a.out_channels, w("Mixed_7b"))  # (B, 2048, 8, 8)
        mixed_7c = InceptionE(mixed_7b.out_channels, w("Mixed_7c"))  # (B, 2048, 8, 8)
        super().__init__(OrderedDict([
            ("Conv2d_1a_3x3", conv_1a), ("Conv2d_2a_3x3", conv_2a), ("Conv2d_2b_3x3", conv_2b),
            ("maxpool1", nn.MaxPool2d(3, stride=2)),  # (B, 64, 73, 73)
            ("Conv2d_3b_1x1", conv_3b), ("Conv2d_4a_3x3", conv_4a),
            ("maxpool2", nn.MaxPool2d(3, stride=2)),  # (B, 192, 35, 35)
            ("Mixed_5b", mixed_5b), ("Mixed_5c", mixed_5c), ("Mixed_5d", mixed_5d),
            ("Mixed_6a", mixed_6a), ("Mixed_6b", mixed_6b), ("Mixed_6c", mixed_6c), ("Mixed_6d", mixed_6d),
            ("Mixed_6e", mixed_6e),
            ("Mixed_7a", mixed_7a), ("Mixed_7b", mixed_7b), ("Mixed_7c", mixed_7c),
            ("avgpool", nn.AdaptiveAvgPool2d(1)),
            ("dropout", nn.Dropout(dropout)),
            ("flatten", nn.Flatten()),  # (B, 2048)
            ("fc", nn.Linear(mixed_7c.out_channels, num_classes)),
        ]), unit_layers=["Mixed_5d", "Mixed_6e", "Mixed_7c"])


@register_model
def inception_v3(width: float = 1.0, *, num_classes: int = 1000, dropout: float = 0.2) -> InceptionV3:
    """Inception-v3 with every block's filters scaled by `width`; inputs of 299×299 (at least 75×75).

    Args:
        width: multiplies the filters of every branch of every block (default 1.0).
        num_classes: size of the final layer (default 1000).
        dropout: drop probability before the classifier (default 0.2, TF-slim's).

    Example:
        >>> create_model("inception_v3", 0.25).unit_layers
        ['Mixed_5d', 'Mixed_6e', 'Mixed_7c']
    """
    check_positive_ints("inception_v3", num_classes=num_classes)
    check_probabilities("inception_v3", dropout=dropout)
    return InceptionV3(num_classes, width, dropout=float(dropout))


@register_model
def inception_v3_mixed5d(width: float = 1.0, *, num_classes: int = 1000, dropout: float = 0.2) -> InceptionV3:
    """The paper's single-layer variant: Inception-v3 at 1x except Mixed_5d (35×35×288 at 1x), scaled by `width`.

    Args:
        width: multiplies the filters of Mixed_5d only (default 1.0; the paper uses 1/4x to 4x).
        num_classes: size of the final layer (default 1000).
        dropout: drop probability before the classifier (default 0.2, TF-slim's).

    Example:
        >>> create_model("inception_v3_mixed5d", 4.0).Mixed_5d.out_channels
        1152
    """
    check_positive_ints("inception_v3_mixed5d", num_classes=num_classes)
    check_probabilities("inception_v3_mixed5d", dropout=dropout)
    return InceptionV3(num_classes, width, scale_only="Mixed_5d", dropout=float(dropout))
