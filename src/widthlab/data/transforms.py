"""Preprocessing shared by the in-memory image sets (CIFAR-10, digits): statistics, crops, batched augmentation."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from widthlab.errors import WidthlabError
from widthlab.seeding import torch_generator


def channel_stats(x: torch.Tensor, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (ddof 0) of images `x` (N, C, H, W), accumulated in float64.

    Chunked so 45,000 CIFAR images need no 1 GB float64 copy.

    Example:
        >>> mean, std = channel_stats(torch.rand(10, 3, 8, 8))
        >>> mean.shape, std.shape
        (torch.Size([3]), torch.Size([3]))
    """
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk].double()  # (n, C, H, W)
        total += part.sum((0, 2, 3))
        squares += part.square().sum((0, 2, 3))
    count = x.numel() // x.shape[1]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return mean, std


def standardize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x − mean) / std per channel of `x` (N, C, H, W), as float32; a constant channel (std 0) is only centred."""
    std = torch.where(std > 0, std, torch.ones_like(std))
    out = x.to(torch.float32, copy=True)  # (N, C, H, W); the caller's tensor stays untouched
    return out.sub_(mean.float().view(1, -1, 1, 1)).div_(std.float().view(1, -1, 1, 1))


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central `size`×`size` window of images (..., H, W), as a view (no copy).

    An odd margin puts the extra pixel at the bottom/right (offset ⌊(H − size)/2⌋).
    """
    height, width = x.shape[-2:]
    if size > min(height, width):
        raise WidthlabError(f"crop size {size} exceeds the image size {height}×{width}")
    top, left = (height - size) // 2, (width - size) // 2
    return x[..., top:top + size, left:left + size]


class RandomCropFlip:
    """Batched random crop (after constant padding) and random horizontal flip: an `augment` for `Splits`.

    Each image gets its own crop offset and flip; all draws come from the `generator` passed to the call
    (CPU), so the result depends only on that stream, whatever device the batch lives on. Offsets are drawn
    first, then flips.

    Args:
        size: side of the output crop.
        padding: pixels added on every side before cropping (default 0; 4 for the ResNet recipe on 32×32).
        fill: per-channel value of the padding (C,) (default 0). For standardised data pass the standardised
            value of a black pixel, −mean/std, so padding means "black" as in the raw-image recipe.
        flip: mirror each image left-right with probability 1/2 (default True).

    Example: the same generator seed, the same crops and flips:
        >>> crop = RandomCropFlip(32, padding=4)
        >>> images = torch.rand(8, 3, 32, 32)
        >>> out = crop(images, torch.Generator().manual_seed(0))
        >>> out.shape, torch.equal(out, crop(images, torch.Generator().manual_seed(0)))
        (torch.Size([8, 3, 32, 32]), True)
    """

    def __init__(self, size: int, padding: int = 0, fill: Sequence[float] | torch.Tensor | None = None,
                 flip: bool = True):
        self.size = int(size)
        self.padding = int(padding)
        self.fill = None if fill is None else torch.as_tensor(fill, dtype=torch.float32)
        self.flip = bool(flip)

    def __repr__(self) -> str:
        return f"RandomCropFlip(size={self.size}, padding={self.padding}, flip={self.flip})"

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch, channels, height, width = x.shape
        pad = self.padding
        if pad:
            padded = x.new_zeros((batch, channels, height + 2 * pad, width + 2 * pad))
            if self.fill is not None:
                padded[:] = self.fill.to(x.device, x.dtype).view(1, channels, 1, 1)
            padded[..., pad:pad + height, pad:pad + width] = x
        else:
            padded = x
        full_h, full_w = padded.shape[-2:]
        if self.size > min(full_h, full_w):
            raise WidthlabError(f"crop size {self.size} exceeds the padded image size {full_h}×{full_w}")
        top = torch.randint(0, full_h - self.size + 1, (batch,), generator=generator)  # (B,)
        left = torch.randint(0, full_w - self.size + 1, (batch,), generator=generator)  # (B,)
        steps = torch.arange(self.size)
        rows = top[:, None] + steps  # (B, size)
        cols = left[:, None] + steps  # (B, size)
        if self.flip:
            # Mirroring = reading the crop's columns right to left, so crop and flip are one gather.
            mirrored = torch.rand(batch, generator=generator) < 0.5  # (B,)
            cols = torch.where(mirrored[:, None], cols.flip(1), cols)
        rows, cols = rows.to(x.device), cols.to(x.device)
        images = torch.arange(batch, device=x.device).view(batch, 1, 1, 1)
        chans = torch.arange(channels, device=x.device).view(1, channels, 1, 1)
        return padded[images, chans, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, size, size)


def uniform_labels(n: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """`n` labels drawn uniformly from 0 … num_classes − 1 (the paper's random-label variants)."""
    return torch.randint(0, num_classes, (n,), generator=generator)


def random_train_val_labels(seed: int, source: str, num_classes: int, n_train: int,
                            n_val: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform random labels for the training and validation splits of data set `source`, training first,
    from one stream of `seed` (the test split keeps its true labels, as in the paper)."""
    gen = torch_generator(seed, source, "random-labels")
    return uniform_labels(n_train, num_classes, gen), uniform_labels(n_val, num_classes, gen)
