"""scikit-learn's bundled handwritten digits as small colour images: real image data that needs no download.

1,797 grey 8×8 images of 10 digits (UCI optdigits, shipped inside scikit-learn), resized bilinearly to
`image_size` and replicated to 3 channels so the CIFAR/ImageNet networks run on them (docs/tutorial.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from widthlab.data.base import ArrayDataset, Splits, check_count
from widthlab.data.registry import register_data
from widthlab.data.transforms import RandomCropFlip, channel_stats, random_train_val_labels, standardize
from widthlab.errors import WidthlabError
from widthlab.seeding import derive_seed

NUM_CLASSES = 10
ORIGINAL_SIZE = 8


@register_data
def digits(*, seed: int = 0, root=None, image_size: int = 32, n_val: int = 300, n_test: int = 300,
           n_train: int | None = None, augment: bool = True, flip: bool = False,
           random_labels: bool = False) -> Splits:
    """Digits as (3, image_size, image_size) images: 1,197 / 300 / 300 train / val / test by default.

    The split is stratified by class (scikit-learn's `train_test_split`, seeded by `seed`): test first, then
    validation from the rest. Images are standardised with the training split's mean and std. The training
    augmentation (on by default) shifts each image: pad by image_size // 8 pixels of background (4 at 32, as
    CIFAR's pad-4 recipe) and crop back at random. Horizontal flips are off by default: a mirrored digit is
    often another symbol.

    Args:
        seed: fixes the split and the random labels.
        root: ignored (the data ship with scikit-learn); accepted so every data set takes the same options.
        image_size: side of the resized images (default 32; at least 8, e.g. 75 for Inception-v3).
        n_val / n_test: validation / test images (default 300 each); n_train: keep only the first `n_train`
            of the remaining images (default None: all, 1,197).
        augment: random shifts while training (default True); flip: add random horizontal flips (default False).
        random_labels: replace training and validation labels by seeded uniform random labels; test labels
            stay true (default False).

    Example:
        >>> splits = load_data("digits", image_size=75)
        >>> splits.input_shape, len(splits.train), len(splits.val), len(splits.test)
        ((3, 75, 75), 1197, 300, 300)
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    for key, value in (("image_size", image_size), ("n_val", n_val), ("n_test", n_test)):
        check_count("digits", key, value)
    check_count("digits", "n_train", n_train, optional=True)
    if image_size < ORIGINAL_SIZE:
        raise WidthlabError(f"digits: image_size must be at least {ORIGINAL_SIZE}, got {image_size}")
    pixels, labels = load_digits(return_X_y=True)  # (1797, 64) float64 in 0..16, (1797,)
    if n_val + n_test >= len(labels):
        raise WidthlabError(f"digits: n_val + n_test = {n_val + n_test} leaves no training images of {len(labels)}")

    # sklearn takes a 32-bit seed; the derived stream keeps this split independent of other seeded choices.
    state = derive_seed(seed, "digits", "split") % 2 ** 32
    rest, test_idx = train_test_split(range(len(labels)), test_size=n_test, stratify=labels, random_state=state)
    train_idx, val_idx = train_test_split(rest, test_size=n_val, stratify=labels[rest], random_state=state)
    train_idx, val_idx, test_idx = (torch.as_tensor(sorted(idx)) for idx in (train_idx, val_idx, test_idx))
    if n_train is not None:
        if n_train > len(train_idx):
            raise WidthlabError(f"digits: n_train={n_train} exceeds the {len(train_idx)} training images")
        train_idx = train_idx[:n_train]

    images = torch.from_numpy(pixels).float().view(-1, 1, ORIGINAL_SIZE, ORIGINAL_SIZE) / 16  # (1797, 1, 8, 8)
    if image_size != ORIGINAL_SIZE:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    mean, std = channel_stats(images[train_idx])  # (1,), (1,): grey, replicated to 3 channels below
    images = standardize(images, mean, std).expand(-1, 3, -1, -1)  # (1797, 3, S, S) view
    y = torch.from_numpy(labels).long()
    train_y, val_y = y[train_idx], y[val_idx]
    if random_labels:
        train_y, val_y = random_train_val_labels(seed, "digits", NUM_CLASSES, len(train_y), len(val_y))

    transform = None
    if augment:
        background = standardize(torch.zeros(1, 1, 1, 1), mean, std).view(1).expand(3)  # a 0 pixel, standardised
        transform = RandomCropFlip(image_size, padding=image_size // 8, fill=background, flip=flip)
    # Indexing copies, so each split owns contiguous (n, 3, S, S) float32 storage.
    return Splits(ArrayDataset(images[train_idx], train_y), ArrayDataset(images[val_idx], val_y),
                  ArrayDataset(images[test_idx], y[test_idx]), num_classes=NUM_CLASSES,
                  input_shape=(3, image_size, image_size), augment=transform)
