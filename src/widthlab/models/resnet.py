"""He et al. (2016) v1 ResNets of BasicBlocks: ResNet56 for CIFAR-10 and ResNet18 for ImageNet.

    stem (conv → BN → ReLU) [→ maxpool] → stage1 … stageK (BasicBlocks) → avgpool → flatten → fc

Unit layers (the reference code's): ``stem`` (after BN-ReLU, before any pooling) and every stage output
``stage1`` … ``stageK``. Every top-level child is a cut of the graph.

Choices: where a block changes the shape (stride 2 or more channels) its shortcut is a 1×1 conv + BN projection
(He et al.'s option B, as in TensorFlow's official ResNets and torchvision); He et al. trained their CIFAR ResNets
with option A (zero-padded identity), which has no parameters (ResNet56 at 1x: 2,752 weights fewer).
Convolutions followed by BN have no bias. The paper lists ResNet56's filters as "16, 16, 32, 64, and 128" and
ResNet18's kernels as "7×7 and stride 2" everywhere; we follow He et al. instead: ResNet56 = a 16-filter stem
and stages of 16, 32, 64 filters; ResNet18 = a 7×7/2 stem of 64 filters, a 3×3/2 max-pool and 3×3 stages of
64, 128, 256, 512 filters.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from widthlab.errors import WidthlabError
from widthlab.models.registry import check_positive_ints, register_model, scale_width
from widthlab.models.sequential import CutSequential


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers plus a shortcut, then ReLU (v1: activation after the sum).

    Args:
        in_channels: input channels; channels: output channels of both convs.
        stride: stride of the first conv and of the projection (default 1).
    """

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        # A ReLU of its own, not relu1 again: a module that runs twice per pass has no single output to measure.
        self.relu2 = nn.ReLU()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(channels))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu1(self.bn1(self.conv1(x)))  # (B, channels, H / stride, W / stride)
        return self.relu2(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNet(CutSequential):
    """A v1 ResNet of BasicBlocks; the first stage keeps the resolution, each later one halves it.

    Args:
        stage_channels: filters of each stage; blocks_per_stage: BasicBlocks in each stage.
        stem_channels: filters of the stem conv; stem_kernel, stem_stride: its size and stride.
        stem_pool: a 3×3/2 max-pool after the stem (ImageNet) or none (CIFAR).
        num_classes: size of the final fully connected layer.
    """

    def __init__(self, stage_channels: list[int], blocks_per_stage: list[int], *, stem_channels: int,
                 stem_kernel: int, stem_stride: int, stem_pool: bool, num_classes: int):
        layers = OrderedDict(stem=nn.Sequential(OrderedDict(
            conv=nn.Conv2d(3, stem_channels, stem_kernel, stride=stem_stride, padding=stem_kernel // 2, bias=False),
            bn=nn.BatchNorm2d(stem_channels),
            relu=nn.ReLU(),
        )))
        if stem_pool:
            layers["maxpool"] = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = stem_channels
        for i, (channels, blocks) in enumerate(zip(stage_channels, blocks_per_stage)):
            first = BasicBlock(in_channels, channels, stride=1 if i == 0 else 2)
            layers[f"stage{i + 1}"] = nn.Sequential(first, *(BasicBlock(channels, channels) for _ in range(blocks - 1)))
            in_channels = channels
        layers["avgpool"] = nn.AdaptiveAvgPool2d(1)
        layers["flatten"] = nn.Flatten()  # (B, stage_channels[-1])
        layers["fc"] = nn.Linear(in_channels, num_classes)
        super().__init__(layers, unit_layers=["stem", *(f"stage{i + 1}" for i in range(len(stage_channels)))])


@register_model
def resnet56_cifar(width: float = 1.0, *, num_classes: int = 10, depth: int = 56) -> ResNet:
    """He et al.'s CIFAR ResNet: a 3×3 stem, 3 stages of (depth − 2) / 6 BasicBlocks at 16/32/64 filters (1x).

    Args:
        width: multiplies every filter count (default 1.0).
        num_classes: size of the final layer (default 10).
        depth: 6n + 2 weighted layers, n blocks per stage (default 56: n = 9; 20, 32, 44, 110 also standard).

    Example:
        >>> create_model("resnet56_cifar", 2.0).unit_layers
        ['stem', 'stage1', 'stage2', 'stage3']
    """
    check_positive_ints("resnet56_cifar", num_classes=num_classes, depth=depth)
    if depth < 8 or (depth - 2) % 6:
        raise WidthlabError(f"resnet56_cifar: depth must be 6n + 2 with n >= 1 (e.g. 20, 32, 44, 56, 110), "
                            f"got {depth}")
    n = (depth - 2) // 6
    return ResNet([scale_width(c, width) for c in (16, 32, 64)], [n, n, n], stem_channels=scale_width(16, width),
                  stem_kernel=3, stem_stride=1, stem_pool=False, num_classes=num_classes)


@register_model
def resnet18_imagenet(width: float = 1.0, *, num_classes: int = 1000) -> ResNet:
    """He et al.'s ImageNet ResNet18: a 7×7/2 stem and 3×3/2 max-pool, 4 stages of 2 BasicBlocks at 64/128/256/512.

    Args:
        width: multiplies every filter count (default 1.0).
        num_classes: size of the final layer (default 1000).

    Example:
        >>> create_model("resnet18_imagenet", 0.5).fc.in_features
        256
    """
    check_positive_ints("resnet18_imagenet", num_classes=num_classes)
    return ResNet([scale_width(c, width) for c in (64, 128, 256, 512)], [2, 2, 2, 2],
                  stem_channels=scale_width(64, width), stem_kernel=7, stem_stride=2, stem_pool=True,
                  num_classes=num_classes)
