"""ImageNet (ILSVRC-2012) from ``train/`` and ``val/`` class folders, decoded lazily with Pillow.

Layout (``root`` = the config's ``data.root`` or ``$WIDTHLAB_DATA``, or a folder ``imagenet`` inside it)::

    <root>/train/n01440764/n01440764_10026.JPEG ...   (the official training tar, one folder per class)
    <root>/val/n01440764/ILSVRC2012_val_00000293.JPEG ...

The official validation set is one flat folder of 50,000 JPEGs. Sort it into class folders with the labels
of the devkit (``ILSVRC2012_validation_ground_truth.txt`` holds ILSVRC2012_IDs in file order; ``meta.mat``
maps them to wnids) or with a ready-made mapping such as the ``valprep.sh`` script widely used with the
PyTorch ImageNet example, which does ``mkdir -p nXXXXXXXX; mv ILSVRC2012_val_XXXXXXXX.JPEG nXXXXXXXX/``
for every image. ``train/`` and ``val/`` must then hold the same 1,000 class folders.

Splits: validation for model selection is a seeded hold-out of `val_per_class` training images per class
(10,000 in all by default); test is the ``val/`` folder (the paper measures on ImageNet's validation set).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from widthlab.data.base import Splits, check_count, require_root
from widthlab.data.registry import register_data
from widthlab.errors import WidthlabError
from widthlab.seeding import numpy_generator

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
EXTENSIONS = (".jpeg", ".jpg", ".png")
CROP_FRACTION = 0.875  # evaluation: resize the shorter side to size / 0.875 (256 for 224), centre-crop size
SCALE = (0.08, 1.0)  # Inception-style random-resized-crop: share of the image area …
RATIO = (3 / 4, 4 / 3)  # … and aspect ratio (width / height) of the crop
LAYOUT = ("expected <root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG with the same class folders in both "
          "(see widthlab.data.imagenet for sorting the flat official validation set into class folders)")


def random_resized_crop_box(width: int, height: int,
                            generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """A random crop (left, top, right, bottom) of a width×height image: area share in SCALE, aspect in RATIO.

    Inception's recipe as torchvision implements it: up to 10 draws, then the central crop with the aspect
    ratio clamped into RATIO. Draws come from `generator` (default: torch's global RNG; see `ImageFolderSplit`).
    """
    area = width * height
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(*SCALE, generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(*log_ratio, generator=generator).item())
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = torch.randint(0, width - w + 1, (1,), generator=generator).item()
            top = torch.randint(0, height - h + 1, (1,), generator=generator).item()
            return left, top, left + w, top + h
    aspect = width / height
    if aspect < RATIO[0]:
        w, h = width, round(width / RATIO[0])
    elif aspect > RATIO[1]:
        w, h = round(height * RATIO[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def eval_resize_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ⌊size / 0.875⌋ (bilinear, antialiased), then take the central size×size."""
    short = int(size / CROP_FRACTION)
    width, height = image.size
    scale = short / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = round((new_w - size) / 2), round((new_h - size) / 2)
    return image.crop((left, top, left + size, top + size))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB image as a float32 tensor (3, H, W), scaled to [0, 1] and normalised with ImageNet's mean/std."""
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))  # (H, W, 3) uint8
    x = pixels.permute(2, 0, 1).float().div_(255)  # (3, H, W)
    return x.sub_(torch.tensor(MEAN).view(3, 1, 1)).div_(torch.tensor(STD).view(3, 1, 1))


def load_image(path: str) -> Image.Image:
    """Decode `path` as RGB; an unreadable file is a `WidthlabError` naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # forces the decode; greyscale and CMYK files become RGB
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # DecompressionBombError: a header claiming more pixels than PIL's bound (a 20000×10000 PNG of a few bytes)
        raise WidthlabError(f"imagenet: cannot decode image {path} ({exc}); replace or remove the file") from exc


class ImageFolderSplit(Dataset):
    """Image files with labels, decoded on access into (3, size, size) tensors; `y` holds the labels.

    Training form (``train=True``): random-resized-crop to size×size plus a horizontal flip with probability
    1/2. Indexed with a pair ``(i, seed)`` (as `fit` does: `seeded_items`), image i's draws come from a
    generator seeded with `seed`, so the crops depend on the run's seed and epoch alone, not on how many
    DataLoader workers decode them; indexed with a plain ``i``, they come from torch's global RNG.
    Evaluation form (``train=False``): deterministic resize and centre crop (`eval_resize_crop`).

    Args:
        files: image paths (plain strings: a million Path objects would cost hundreds of MB in every DataLoader
            worker); labels: (N,) class indices; size: output side; train: which form (default False).

    Example:
        >>> Image.new("RGB", (500, 375)).save("a.JPEG")
        >>> x, y = ImageFolderSplit(["a.JPEG"], torch.tensor([0]), 224)[0]
        >>> x.shape, y
        (torch.Size([3, 224, 224]), tensor(0))
    """

    seeded_items = True  # accepts (index, seed) items: see above

    def __init__(self, files: list[str], labels: torch.Tensor, size: int, train: bool = False):
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        self.files = [str(f) for f in files]
        self.y = labels.long()
        self.size = size
        self.train = train

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i, seed = item if isinstance(item, tuple) else (item, None)
        image = load_image(self.files[i])
        if self.train:
            generator = None if seed is None else torch.Generator().manual_seed(seed)
            box = random_resized_crop_box(*image.size, generator=generator)
            image = image.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)
            if torch.rand(1, generator=generator).item() < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            image = eval_resize_crop(image, self.size)
        return to_tensor(image), self.y[i]


def find_root(root: str | os.PathLike | None) -> Path:
    """The folder holding ``train/`` and ``val/``: `root` itself or ``root/imagenet``."""
    path = require_root(root, "imagenet", LAYOUT)
    for candidate in (path, path / "imagenet"):
        if (candidate / "train").is_dir() and (candidate / "val").is_dir():
            return candidate
    missing = [str(path / name) for name in ("train", "val") if not (path / name).is_dir()]
    raise WidthlabError(f"imagenet: missing {' and '.join(missing)}; {LAYOUT}")


def class_folders(folder: Path) -> list[str]:
    """Sorted names of the class folders in `folder` (hidden entries skipped)."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def image_files(folder: Path) -> list[str]:
    """Sorted paths of the image files of one class folder; none is a `WidthlabError` naming the folder."""
    files = sorted(e.path for e in os.scandir(folder)
                   if e.is_file() and e.name.lower().endswith(EXTENSIONS) and not e.name.startswith("."))
    if not files:
        raise WidthlabError(f"imagenet: class folder {folder} holds no images ({', '.join(EXTENSIONS)}); {LAYOUT}")
    return files


@register_data
def imagenet(*, seed: int = 0, root: str | os.PathLike | None = None, image_size: int = 224, val_per_class: int = 10,
             classes: int | None = None, images_per_class: int | None = None) -> Splits:
    """ImageNet as lazy datasets: train (random crops), a held-out validation split, test = the ``val/`` folder.

    Labels are indices of the (selected) class folders in sorted wnid order. Per class, the training files are
    shuffled by a stream seeded by (seed, wnid): the first `val_per_class` become validation, the next
    `images_per_class` (default all) training. `Splits.train_eval` holds the training images in evaluation form.

    Args:
        seed: fixes the class subset and the hold-out.
        root: folder with ``train/`` and ``val/`` (or with ``imagenet/train`` …); default ``$WIDTHLAB_DATA``.
        image_size: network input side (default 224 for ResNet18; 299 for Inception-v3).
        val_per_class: training images per class held out for validation (default 10, i.e. 10,000).
        classes: use a seeded random subset of this many classes (default None: all).
        images_per_class: keep at most this many training images per class after the hold-out (default None:
            all); the test split keeps every ``val/`` image of the selected classes.

    Example: two of three classes, 3 training images per class (and 1 held out) in ``imagenet/train/<wnid>/``, 2
    test images per class in ``imagenet/val/<wnid>/``:
        >>> for split, count in (("train", 4), ("val", 2)):
        ...     for wnid in ("n01440764", "n01443537", "n01484850"):
        ...         Path("imagenet", split, wnid).mkdir(parents=True)
        ...         for i in range(count):
        ...             Image.new("RGB", (64, 48)).save(f"imagenet/{split}/{wnid}/{i}.JPEG")
        >>> splits = load_data("imagenet", root="imagenet", image_size=32, val_per_class=1, classes=2,
        ...                    images_per_class=3)
        >>> splits.num_classes, splits.input_shape, len(splits.train), len(splits.val), len(splits.test)
        (2, (3, 32, 32), 6, 2, 4)
    """
    for key, value in (("image_size", image_size), ("val_per_class", val_per_class)):
        check_count("imagenet", key, value)
    for key, value in (("classes", classes), ("images_per_class", images_per_class)):
        check_count("imagenet", key, value, optional=True)
    base = find_root(root)
    train_dir, val_dir = base / "train", base / "val"
    wnids = class_folders(train_dir)
    val_wnids = class_folders(val_dir)
    if wnids != val_wnids:
        only_train = sorted(set(wnids) - set(val_wnids))
        only_val = sorted(set(val_wnids) - set(wnids))
        raise WidthlabError(f"imagenet: class folders differ between {train_dir} and {val_dir}: only in train: "
                            f"{_names(only_train)}; only in val: {_names(only_val)}; {LAYOUT}")
    if not wnids:
        raise WidthlabError(f"imagenet: {train_dir} holds no class folders; {LAYOUT}")
    if classes is not None:
        if classes > len(wnids):
            raise WidthlabError(f"imagenet: classes={classes} exceeds the {len(wnids)} class folders in {train_dir}")
        chosen = numpy_generator(seed, "imagenet", "classes").choice(len(wnids), classes, replace=False)
        wnids = [wnids[i] for i in sorted(chosen)]

    train_files, train_labels, val_files, val_labels, test_files, test_labels = [], [], [], [], [], []
    for label, wnid in enumerate(wnids):
        files = image_files(train_dir / wnid)
        if len(files) <= val_per_class:
            raise WidthlabError(f"imagenet: {train_dir / wnid} has {len(files)} images; holding out "
                                f"val_per_class={val_per_class} would leave none for training")
        order = numpy_generator(seed, "imagenet", "hold-out", wnid).permutation(len(files))
        held, kept = order[:val_per_class], order[val_per_class:]
        if images_per_class is not None:
            kept = kept[:images_per_class]
        val_files += [files[i] for i in sorted(held)]
        train_files += [files[i] for i in sorted(kept)]
        tests = image_files(val_dir / wnid)
        test_files += tests
        train_labels += [label] * len(kept)
        val_labels += [label] * len(held)
        test_labels += [label] * len(tests)

    def split(files: list[str], labels: list[int], train: bool = False) -> ImageFolderSplit:
        return ImageFolderSplit(files, torch.tensor(labels, dtype=torch.long), image_size, train=train)

    return Splits(split(train_files, train_labels, train=True), split(val_files, val_labels),
                  split(test_files, test_labels), num_classes=len(wnids), input_shape=(3, image_size, image_size),
                  train_eval=split(train_files, train_labels))


def _names(names: list[str], limit: int = 5) -> str:
    """At most `limit` names, then a count of the rest."""
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"
