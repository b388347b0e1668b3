"""The paper's CIFAR-10 AlexNet (appendix A): two 5×5 conv layers with pooling and LRN, two dense layers.

A scaled-down Krizhevsky et al. (2012) network as in Zhang et al. (2016) and TensorFlow's CIFAR-10 tutorial:

    conv1 5×5 → conv1_relu → pool1 3×3/2 → lrn1 → conv2 5×5 → conv2_relu → pool2 3×3/2 → lrn2 → flatten
    → fc1 → fc1_relu → fc1_drop → fc2 → fc2_relu → fc2_drop → readout

1x = 96 and 256 filters, 384 and 192 dense units; every layer has a bias. Unit layers (the reference code's):
``conv1_relu``, ``conv2_relu`` (after ReLU, before pooling), ``fc1_relu``, ``fc2_relu``.

Choices where the paper is silent: convolutions keep the size ('same', padding 2); pooling pads 1 on each side,
which gives TensorFlow's 'SAME' output size (ceil(size / 2)) with windows shifted by one pixel; dropout (the
paper's "DO" regulariser, off by default) follows each dense ReLU, as in Krizhevsky et al. (2012).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from widthlab.models.registry import check_positive_ints, check_probabilities, register_model, scale_width
from widthlab.models.sequential import CutSequential


def tf_local_response_norm(depth_radius: int = 2, alpha: float = 2e-5, beta: float = 0.75,
                           bias: float = 1.0) -> nn.LocalResponseNorm:
    """TensorFlow's ``tf.nn.local_response_normalization`` as a PyTorch module.

    TensorFlow: b_c = a_c / (bias + alpha · Σ a_j²)^beta over the 2·depth_radius + 1 channels j around c.
    PyTorch divides alpha by the window size, so it gets alpha · size to compute the same thing.

    Args:
        depth_radius: channels on each side of the window (default 2, the paper's).
        alpha, beta, bias: TensorFlow's parameters (defaults 2e-5, 0.75, 1.0, the paper's).

    Example: the centre channel of five ones is divided by (1 + alpha · 5)^beta:
        >>> out = tf_local_response_norm()(torch.ones(1, 5, 1, 1))
        >>> torch.isclose(out[0, 2, 0, 0], torch.tensor((1 + 2e-5 * 5) ** -0.75))
        tensor(True)
    """
    size = 2 * depth_radius + 1
    return nn.LocalResponseNorm(size, alpha=alpha * size, beta=beta, k=bias)


def _pooled(size: int) -> int:
    """Spatial size after a 3×3 max-pool of stride 2 and padding 1."""
    return (size - 1) // 2 + 1


class AlexNetCifar(CutSequential):
    """The CIFAR AlexNet; see the module docstring for its layers. Every top-level child is a cut.

    Args:
        conv1, conv2: filters of the two conv layers; fc1, fc2: units of the dense layers.
        num_classes: readout size.
        input_size: height = width of the 3-channel input; sets the flatten size.
        dropout: drop probability after each dense ReLU (0 = none).
    """

    def __init__(self, conv1: int, conv2: int, fc1: int, fc2: int, num_classes: int, input_size: int,
                 dropout: float):
        flat = conv2 * _pooled(_pooled(input_size)) ** 2  # 256 · 8 · 8 at 1x for 32×32 inputs
        super().__init__(OrderedDict([
            ("conv1", nn.Conv2d(3, conv1, 5, padding=2)),
            ("conv1_relu", nn.ReLU()),  # (B, conv1, S, S)
            ("pool1", nn.MaxPool2d(3, stride=2, padding=1)),
            ("lrn1", tf_local_response_norm()),
            ("conv2", nn.Conv2d(conv1, conv2, 5, padding=2)),
            ("conv2_relu", nn.ReLU()),  # (B, conv2, S/2, S/2)
            ("pool2", nn.MaxPool2d(3, stride=2, padding=1)),
            ("lrn2", tf_local_response_norm()),
            ("flatten", nn.Flatten()),  # (B, conv2 · S/4 · S/4)
            ("fc1", nn.Linear(flat, fc1)),
            ("fc1_relu", nn.ReLU()),
            ("fc1_drop", nn.Dropout(dropout)),
            ("fc2", nn.Linear(fc1, fc2)),
            ("fc2_relu", nn.ReLU()),
            ("fc2_drop", nn.Dropout(dropout)),
            ("readout", nn.Linear(fc2, num_classes)),
        ]), unit_layers=["conv1_relu", "conv2_relu", "fc1_relu", "fc2_relu"])


@register_model
def alexnet_cifar(width: float = 1.0, *, num_classes: int = 10, input_size: int = 32,
                  dropout: float = 0.0) -> AlexNetCifar:
    """The paper's CIFAR-10 AlexNet; 1x = 96/256 filters, 384/192 dense units.

    Args:
        width: multiplies every hidden filter and unit count (default 1.0).
        num_classes: readout size (default 10).
        input_size: height = width of the input images, e.g. 32 (default) or 28 for cropped CIFAR.
        dropout: drop probability after each dense ReLU (default 0.0, the paper's default of no regulariser).

    Example:
        >>> create_model("alexnet_cifar", 0.25).conv1.out_channels
        24
    """
    check_positive_ints("alexnet_cifar", num_classes=num_classes, input_size=input_size)
    check_probabilities("alexnet_cifar", dropout=dropout)
    return AlexNetCifar(scale_width(96, width), scale_width(256, width), scale_width(384, width),
                        scale_width(192, width), num_classes, input_size, float(dropout))
