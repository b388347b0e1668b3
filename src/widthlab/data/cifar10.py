"""CIFAR-10 from the standard python folder, split 45,000 / 5,000 / 10,000 and augmented as in the paper.

Put the python version from https://www.cs.toronto.edu/~kriz/cifar.html (``cifar-10-python.tar.gz``,
unpacked) so that ``<root>/cifar-10-batches-py/data_batch_1`` exists, with ``root`` the config's
``data.root`` or ``$WIDTHLAB_DATA``; ``root`` may also be the ``cifar-10-batches-py`` folder itself.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

from widthlab.data.base import ArrayDataset, Splits, check_count, require_root
from widthlab.data.registry import register_data
from widthlab.data.transforms import RandomCropFlip, center_crop, channel_stats, random_train_val_labels, standardize
from widthlab.errors import WidthlabError
from widthlab.seeding import torch_generator

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
NUM_CLASSES = 10
IMAGE_SIZE = 32
LAYOUT = (f"expected <root>/{FOLDER}/data_batch_1..5 and test_batch (the python version from the CIFAR-10 "
          f"site, https://www.cs.toronto.edu/~kriz/cifar.html), or root pointing at {FOLDER} itself")


def find_folder(root: str | os.PathLike | None) -> Path:
    """The folder holding the batch files: `root` itself or ``root/cifar-10-batches-py``."""
    path = require_root(root, "cifar10", LAYOUT)
    for candidate in (path, path / FOLDER):
        if (candidate / TRAIN_FILES[0]).is_file():
            return candidate
    raise WidthlabError(f"cifar10: no CIFAR-10 batches in {path}; {LAYOUT}")


# What a CIFAR-10 batch pickle may name: numpy array reconstruction (and bytes decoding), nothing else. The
# format is a pickle, and an unrestricted pickle.load runs whatever a crafted file says.
_ALLOWED_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # bytes under protocol 2


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR-10 batch holds only arrays")
        return super().find_class(module, name)


def read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (n, 3, 32, 32) uint8 and labels (n,) int64 of one pickled CIFAR-10 batch file."""
    if not path.is_file():
        raise WidthlabError(f"cifar10: missing batch file {path}; {LAYOUT}")
    try:
        with open(path, "rb") as f:
            # The official files are Python 2 pickles: keys (and the label list) come back as bytes.
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # a truncated or foreign file raises any of a dozen unpickling errors
        raise WidthlabError(f"cifar10: cannot read batch file {path} ({type(exc).__name__}: {exc}); "
                            f"re-download it; {LAYOUT}") from exc
    data = labels = None
    if isinstance(batch, dict):
        data = batch.get(b"data", batch.get("data"))
        labels = batch.get(b"labels", batch.get("labels"))
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3 * IMAGE_SIZE ** 2 and labels is not None and len(labels) == len(data)):
        raise WidthlabError(f"cifar10: {path} is not a CIFAR-10 batch (a dict with b'data' (n, 3072) uint8 and "
                            f"b'labels' of length n); {LAYOUT}")
    labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise WidthlabError(f"cifar10: {path} has labels outside 0..9; {LAYOUT}")
    # Rows are channel-major (1024 red, 1024 green, 1024 blue), each a 32×32 row-major image.
    images = torch.from_numpy(data).view(-1, 3, IMAGE_SIZE, IMAGE_SIZE)  # (n, 3, 32, 32) uint8
    return images, labels


@register_data
def cifar10(*, seed: int = 0, root: str | os.PathLike | None = None, n_val: int = 5_000, n_train: int | None = None,
            n_test: int | None = None, crop_size: int = 32, padding: int | None = None, augment: bool = True,
            random_labels: bool = False) -> Splits:
    """CIFAR-10: 45,000 / 5,000 / 10,000 images, standardised per channel with the training split's statistics.

    Validation is a seeded random `n_val` of the 50,000 training images; the rest (in file order) is training.
    Training augmentation (`Splits.augment`, batched, drawn from the trainer's generator): random crop and
    random horizontal flip. At ``crop_size=32`` (ResNets) the crop is taken from the image padded by 4 black
    pixels per side (He et al.); at ``crop_size=28`` (the paper's AlexNet) a random 28×28 window of the 32×32
    image, while validation and test hold the central 28×28 crop (input_shape (3, 28, 28)); `train` then keeps
    32×32 images for the crops and `Splits.train_eval` the central crops.

    Args:
        seed: fixes the validation draw and the random labels.
        root: the folder holding ``cifar-10-batches-py`` (or that folder); default ``$WIDTHLAB_DATA``.
        n_val: validation images held out of the training files (default 5,000).
        n_train: keep only the first `n_train` remaining training images (default None: all, 45,000).
        n_test: keep only the first `n_test` test images (default None: all, 10,000).
        crop_size: side of the network's input (default 32; 28 for AlexNet).
        padding: black pixels added per side before the random crop (default None: 4 at 32, 0 otherwise).
        augment: random crop and flip while training (default True; False for the random-label variants,
            whose training images are then stored in evaluation form).
        random_labels: replace training and validation labels with seeded uniform random labels; test labels
            stay true (default False).

    Example: with the batch files in ``data/cifar-10-batches-py`` (here a stand-in of 100 training images):
        >>> splits = load_data("cifar10", root="data", n_val=20, crop_size=28)
        >>> splits.input_shape, len(splits.train), len(splits.val), len(splits.test)
        ((3, 28, 28), 80, 20, 20)
    """
    padding = _check_options(n_val, n_train, n_test, crop_size, padding)
    folder = find_folder(root)
    pool_x, pool_y = read_pool(folder)
    test_x, test_y = read_batch(folder / TEST_FILE)
    train_idx, val_idx = split_indices(seed, len(pool_y), n_val, n_train)
    if n_test is not None:
        if n_test > len(test_y):
            raise WidthlabError(f"cifar10: n_test={n_test} exceeds the {len(test_y)} test images")
        test_x, test_y = test_x[:n_test], test_y[:n_test]

    train_x = pool_x[train_idx]
    mean, std = channel_stats(train_x)  # (3,), (3,) over the full 32×32 training images
    train_x = standardize(train_x, mean, std)  # (n_train, 3, 32, 32) float32
    val_x = center_crop(standardize(pool_x[val_idx], mean, std), crop_size).contiguous()
    test_x = center_crop(standardize(test_x, mean, std), crop_size).contiguous()
    train_y, val_y = pool_y[train_idx], pool_y[val_idx]
    if random_labels:
        train_y, val_y = random_train_val_labels(seed, "cifar10", NUM_CLASSES, len(train_y), len(val_y))

    train_eval = None
    transform = None
    if augment:
        black = standardize(torch.zeros(1, 3, 1, 1), mean, std).view(3)  # a raw 0 pixel, standardised
        transform = RandomCropFlip(crop_size, padding=padding, fill=black, flip=True)
        if crop_size < IMAGE_SIZE:
            train_eval = ArrayDataset(center_crop(train_x, crop_size), train_y)
    elif crop_size < IMAGE_SIZE:
        train_x = center_crop(train_x, crop_size).contiguous()
    return Splits(ArrayDataset(train_x, train_y), ArrayDataset(val_x, val_y), ArrayDataset(test_x, test_y),
                  num_classes=NUM_CLASSES, input_shape=(3, crop_size, crop_size), augment=transform,
                  train_eval=train_eval)


def _check_options(n_val: int, n_train: int | None, n_test: int | None, crop_size: int,
                   padding: int | None) -> int:
    """Raise a WidthlabError naming the first bad option; returns the padding (None → 4 at 32, else 0)."""
    check_count("cifar10", "n_val", n_val)
    for key, value in (("n_train", n_train), ("n_test", n_test)):
        check_count("cifar10", key, value, optional=True)
    check_count("cifar10", "crop_size", crop_size)
    if crop_size > IMAGE_SIZE:
        raise WidthlabError(f"cifar10: crop_size must be at most {IMAGE_SIZE}, got {crop_size}")
    if padding is None:
        return 4 if crop_size == IMAGE_SIZE else 0
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise WidthlabError(f"cifar10: padding must be a non-negative integer or None, got {padding!r}")
    return padding


def read_pool(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The five training batches in file order: images (50000, 3, 32, 32) uint8 and labels (50000,) int64."""
    parts = [read_batch(folder / name) for name in TRAIN_FILES]
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


def split_indices(seed: int, n_pool: int, n_val: int, n_train: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted training and validation indices into the pool: a seeded random `n_val` is validation, the first
    `n_train` of the rest (all by default) training."""
    if n_val >= n_pool:
        raise WidthlabError(f"cifar10: n_val={n_val} leaves no training images out of {n_pool}")
    order = torch.randperm(n_pool, generator=torch_generator(seed, "cifar10", "val-split"))
    val_idx = order[:n_val].sort().values
    train_idx = order[n_val:].sort().values
    if n_train is not None:
        if n_train > len(train_idx):
            raise WidthlabError(f"cifar10: n_train={n_train} exceeds the {len(train_idx)} training images left "
                                f"after holding out n_val={n_val}")
        train_idx = train_idx[:n_train]
    return train_idx, val_idx
