"""Image data sets on generated fixtures in the real formats (CIFAR-10 pickles, ImageNet JPEG folders) and digits."""

import inspect
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from conftest import CIFAR_PER_BATCH, write_cifar10
from widthlab import TrainConfig, WidthlabError, fit, load_data
from widthlab.data.cifar10 import TRAIN_FILES, cifar10
from widthlab.data.imagenet import MEAN, STD
from widthlab.data.transforms import RandomCropFlip

PER_BATCH = CIFAR_PER_BATCH


# ---------------------------------------------------------------- CIFAR-10

@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp("data"))


def _raw(root, names):
    """The fixture's uint8 images (N, 3, 32, 32) as float64, read straight from the pickles."""
    parts = []
    for name in names:
        with open(root / "cifar-10-batches-py" / name, "rb") as f:
            parts.append(torch.from_numpy(pickle.load(f, encoding="bytes")[b"data"]).view(-1, 3, 32, 32))
    return torch.cat(parts).double()


def _train_val_indices(splits):
    """Fixture indices of the train and val rows: standardising is increasing, so ranks of pixel (0, 0, 0) survive."""
    pixel = torch.cat([splits.train.x[:, 0, 0, 0], splits.val.x[:, 0, 0, 0]])
    rank = torch.empty(len(pixel), dtype=torch.long)
    rank[pixel.argsort()] = torch.arange(len(pixel))
    return rank[:len(splits.train)], rank[len(splits.train):]


def test_cifar_shapes_split_and_standardisation(cifar_root):
    splits = load_data("cifar10", root=cifar_root, n_val=20)
    assert splits.train.x.shape == (80, 3, 32, 32) and splits.train.x.dtype == torch.float32
    assert splits.val.x.shape == (20, 3, 32, 32) and splits.test.x.shape == (20, 3, 32, 32)
    assert splits.num_classes == 10 and splits.input_shape == (3, 32, 32) and splits.augment is not None
    x = splits.train.x.double()
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(x.std((0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-5)
    train_idx, val_idx = _train_val_indices(splits)
    assert len(set(train_idx.tolist()) | set(val_idx.tolist())) == 100  # disjoint, together all training images
    assert torch.equal(splits.train.y, train_idx % 10) and torch.equal(splits.val.y, val_idx % 10)
    assert torch.equal(train_idx, train_idx.sort().values)  # training rows keep file order
    # validation and test are standardised with the training statistics
    raw, test_raw = _raw(cifar_root, TRAIN_FILES), _raw(cifar_root, ["test_batch"])
    mean = raw[train_idx].mean((0, 2, 3)).view(1, 3, 1, 1)
    std = raw[train_idx].std((0, 2, 3), unbiased=False).view(1, 3, 1, 1)
    assert torch.allclose(splits.val.x.double(), (raw[val_idx] - mean) / std, atol=1e-4)
    assert torch.allclose(splits.test.x.double(), (test_raw - mean) / std, atol=1e-4)
    assert torch.equal(splits.test.y, torch.arange(100, 120) % 10)


def test_cifar_val_split_is_seeded(cifar_root):
    a = load_data("cifar10", root=cifar_root, n_val=20, seed=3)
    b = load_data("cifar10", root=cifar_root, n_val=20, seed=3)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.y, b.train.y)
    c = load_data("cifar10", root=cifar_root, n_val=20, seed=4)
    assert not torch.equal(_train_val_indices(a)[1], _train_val_indices(c)[1])


def test_cifar_subset_sizes_and_defaults(cifar_root):
    splits = load_data("cifar10", root=cifar_root, n_val=10, n_train=30, n_test=5)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 5)
    defaults = {k: p.default for k, p in inspect.signature(cifar10).parameters.items()}
    assert (defaults["n_val"], defaults["n_train"], defaults["n_test"]) == (5000, None, None)  # 45k / 5k / 10k
    with pytest.raises(WidthlabError, match="n_val=5000 leaves no training images out of 100"):
        load_data("cifar10", root=cifar_root)
    with pytest.raises(WidthlabError, match="n_train=95 exceeds the 90 training images"):
        load_data("cifar10", root=cifar_root, n_val=10, n_train=95)


def test_cifar_random_labels_change_train_and_val_only(cifar_root):
    true = load_data("cifar10", root=cifar_root, n_val=20)
    rand = load_data("cifar10", root=cifar_root, n_val=20, random_labels=True)
    assert torch.equal(true.train.x, rand.train.x) and torch.equal(true.test.y, rand.test.y)
    assert (rand.train.y != true.train.y).float().mean() > 0.5 and not torch.equal(rand.val.y, true.val.y)
    assert rand.train.y.min() >= 0 and rand.train.y.max() <= 9
    again = load_data("cifar10", root=cifar_root, n_val=20, random_labels=True)
    other = load_data("cifar10", root=cifar_root, n_val=20, random_labels=True, seed=1)
    assert torch.equal(rand.train.y, again.train.y) and not torch.equal(rand.train.y[:40], other.train.y[:40])


def test_cifar_alexnet_crops(cifar_root):
    splits = load_data("cifar10", root=cifar_root, n_val=20, crop_size=28)
    full = load_data("cifar10", root=cifar_root, n_val=20)
    assert splits.input_shape == (3, 28, 28)
    assert splits.train.x.shape == (80, 3, 32, 32)  # kept whole for random 28×28 windows
    assert torch.equal(splits.val.x, full.val.x[..., 2:30, 2:30])
    assert torch.equal(splits.test.x, full.test.x[..., 2:30, 2:30])
    assert torch.equal(splits.split("train").x, full.train.x[..., 2:30, 2:30])  # evaluation form: central crop
    assert splits.augment(splits.train.x[:8], torch.Generator().manual_seed(0)).shape == (8, 3, 28, 28)
    plain = load_data("cifar10", root=cifar_root, n_val=20, crop_size=28, augment=False)
    assert plain.augment is None and plain.train.x.shape == (80, 3, 28, 28) and plain.train_eval is None
    # fit trains on random crops and reports training accuracy on the central crops
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 28 * 28, 10))
    result = fit(model, splits, TrainConfig(epochs=1, batch_size=16))
    assert result.status == "done" and 0.0 <= result.train_acc <= 1.0


def test_cifar_resnet_augmentation_pads_with_black_and_is_reproducible(cifar_root):
    splits = load_data("cifar10", root=cifar_root, n_val=20)
    x = splits.train.x[:16]
    a = splits.augment(x, torch.Generator().manual_seed(7))
    assert torch.equal(a, splits.augment(x, torch.Generator().manual_seed(7)))
    assert not torch.equal(a, splits.augment(x, torch.Generator().manual_seed(8)))
    # pad-4-and-crop-32: every output is a shifted (maybe mirrored) image; the border shows the standardised black
    black = splits.augment.fill
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    padded[:] = torch.where(padded == 0, black.view(1, 3, 1, 1), padded)
    padded[..., 4:36, 4:36] = x
    for i in range(16):
        windows = [padded[i, :, r:r + 32, c:c + 32] for r in range(9) for c in range(9)]
        assert any(torch.equal(a[i], w) or torch.equal(a[i], w.flip(-1)) for w in windows)


def test_random_crop_flip_known_answers():
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4).repeat(64, 1, 1, 1)  # (64, 2, 3, 4)
    out = RandomCropFlip(size=3, padding=0)(x[..., :3], torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, x[0, :, :, :3].flip(-1)) for o in out])
    same = torch.tensor([torch.equal(o, x[0, :, :, :3]) for o in out])
    assert (flipped | same).all() and flipped.any() and same.any()  # a flip reverses the last axis
    crops = RandomCropFlip(size=2, padding=1, fill=[-1.0, -2.0], flip=False)(x, torch.Generator().manual_seed(0))
    padded = torch.full((2, 5, 6), -1.0)
    padded[1] = -2.0
    padded[:, 1:4, 1:5] = x[0]
    windows = {tuple(padded[:, r:r + 2, c:c + 2].flatten().tolist()) for r in range(4) for c in range(5)}
    seen = {tuple(c.flatten().tolist()) for c in crops}
    assert seen <= windows and len(seen) > 5


@pytest.mark.parametrize("damage,match", [
    ("remove", r"missing batch file .*data_batch_3"),
    ("garbage", r"cannot read batch file .*data_batch_3"),
    ("not_a_batch", r"data_batch_3 is not a CIFAR-10 batch"),
])
def test_cifar_damaged_folder_errors_name_the_file(cifar_root, tmp_path, damage, match):
    folder = tmp_path / "cifar-10-batches-py"
    shutil.copytree(cifar_root / "cifar-10-batches-py", folder)
    target = folder / "data_batch_3"
    if damage == "remove":
        target.unlink()
    elif damage == "garbage":
        target.write_bytes(b"\x80\x02}q\x00(truncated")
    else:
        target.write_bytes(pickle.dumps({b"labels": [1, 2]}, protocol=2))
    with pytest.raises(WidthlabError, match=match):
        load_data("cifar10", root=folder, n_val=20)  # root may be the batches folder itself


def test_cifar_missing_root_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("WIDTHLAB_DATA", raising=False)
    with pytest.raises(WidthlabError, match=r"no data folder given.*WIDTHLAB_DATA.*cifar-10-batches-py/data_batch_1"):
        load_data("cifar10")
    with pytest.raises(WidthlabError, match=r"nowhere does not exist"):
        load_data("cifar10", root=tmp_path / "nowhere")
    with pytest.raises(WidthlabError, match=rf"no CIFAR-10 batches in {tmp_path}"):
        load_data("cifar10", root=tmp_path)
    monkeypatch.setenv("WIDTHLAB_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(WidthlabError, match="elsewhere does not exist"):
        load_data("cifar10")


# ---------------------------------------------------------------- ImageNet

WNIDS = ["n01440764", "n01443537", "n01484850"]
SIZES = [(40, 30), (70, 50), (64, 64), (33, 90)]


def _jpeg(path, size, seed, mode="RGB"):
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path, "JPEG")


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    for c, wnid in enumerate(WNIDS):
        for split, count in (("train", 4), ("val", 2)):
            (root / split / wnid).mkdir(parents=True)
            for i in range(count):
                mode = "L" if (c, i) == (1, 0) else "RGB"  # a greyscale file, as ImageNet has
                _jpeg(root / split / wnid / f"{wnid}_{i}.JPEG", SIZES[(c + i) % 4], 10 * c + i, mode)
    return root


def test_imagenet_shapes_and_labels(imagenet_root):
    splits = load_data("imagenet", root=imagenet_root, image_size=64, val_per_class=1)
    assert splits.num_classes == 3 and splits.input_shape == (3, 64, 64) and splits.augment is None
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9, 3, 6)
    for part in (splits.train, splits.val, splits.test, splits.split("train")):
        x, y = part[0]
        assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and y.dtype == torch.long
    assert splits.test.y.tolist() == [0, 0, 1, 1, 2, 2]  # sorted class folders
    for files, labels in ((splits.test.files, splits.test.y), (splits.train.files, splits.train.y)):
        assert [Path(f).parent.name for f in files] == [WNIDS[i] for i in labels]
    assert not set(splits.val.files) & set(splits.train.files)
    assert splits.split("train").files == splits.train.files and not splits.split("train").train


def test_imagenet_eval_transform_known_answer(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split / "n0").mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (50, 80), (255, 0, 128)).save(tmp_path / split / "n0" / f"{i}.JPEG", quality=100)
    x, _ = load_data("imagenet", root=tmp_path, image_size=32, val_per_class=1).test[0]
    colour = torch.tensor([255, 0, 128]) / 255
    expected = ((colour - torch.tensor(MEAN)) / torch.tensor(STD)).view(3, 1, 1).expand(3, 32, 32)
    assert torch.allclose(x, expected, atol=0.05)  # JPEG rounds a flat colour by a level or two


def test_imagenet_subset_is_seeded(imagenet_root):
    a = load_data("imagenet", root=imagenet_root, image_size=64, val_per_class=1, classes=2, images_per_class=2)
    assert a.num_classes == 2 and (len(a.train), len(a.val), len(a.test)) == (4, 2, 4)
    b = load_data("imagenet", root=imagenet_root, image_size=64, val_per_class=1, classes=2, images_per_class=2)
    assert a.train.files == b.train.files and a.val.files == b.val.files
    chosen = sorted({Path(f).parent.name for f in a.test.files})
    assert [Path(f).parent.name for f in a.test.files] == [chosen[i] for i in a.test.y]
    seeds = [load_data("imagenet", root=imagenet_root, val_per_class=1, seed=s).val.files for s in range(4)]
    assert len({tuple(files) for files in seeds}) > 1


def test_imagenet_training_crops_follow_the_global_seed(imagenet_root):
    train = load_data("imagenet", root=imagenet_root, image_size=64, val_per_class=1).train

    def epoch(seed):
        torch.manual_seed(seed)
        loader = DataLoader(train, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(1))
        return torch.cat([x for x, _ in loader])  # (9, 3, 64, 64)

    first = epoch(0)
    assert torch.equal(first, epoch(0)) and not torch.equal(first, epoch(1))
    torch.manual_seed(0)
    crops = torch.stack([train[0][0] for _ in range(4)])  # the same image, four draws
    assert len({tuple(c.flatten()[:50].tolist()) for c in crops}) > 1


def test_imagenet_seeded_items_fix_the_crop(imagenet_root):
    """`fit` indexes training images as (i, seed): the seed alone decides the crop and flip."""
    train_like = load_data("imagenet", root=imagenet_root, image_size=16, val_per_class=1).train
    first = train_like[(0, 5)][0]
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(first, train_like[(0, 5)][0])
    assert any(not torch.equal(first, train_like[(0, s)][0]) for s in range(6, 10))


def test_imagenet_training_does_not_depend_on_the_number_of_decoding_workers(imagenet_root):
    splits = load_data("imagenet", root=imagenet_root, image_size=32, val_per_class=1)

    def train(workers):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 5, stride=4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 7 * 7, 3))
        fit(model, splits, TrainConfig(lr=0.05, batch_size=4, epochs=2, num_workers=workers))
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    in_process = train(0)
    assert torch.equal(in_process, train(2))


def test_imagenet_layout_errors(imagenet_root, tmp_path, monkeypatch):
    monkeypatch.delenv("WIDTHLAB_DATA", raising=False)
    with pytest.raises(WidthlabError, match=r"no data folder given.*train/<wnid>/\*\.JPEG"):
        load_data("imagenet")
    shutil.copytree(imagenet_root / "train", tmp_path / "train")
    with pytest.raises(WidthlabError, match=rf"missing {tmp_path / 'val'}"):
        load_data("imagenet", root=tmp_path)
    shutil.copytree(imagenet_root / "val", tmp_path / "val")
    (tmp_path / "train" / "n09999999").mkdir()
    with pytest.raises(WidthlabError, match="only in train: n09999999; only in val: none"):
        load_data("imagenet", root=tmp_path)
    (tmp_path / "val" / "n09999999").mkdir()
    with pytest.raises(WidthlabError, match=r"class folder .*train/n09999999 holds no images"):
        load_data("imagenet", root=tmp_path, val_per_class=1)
    shutil.rmtree(tmp_path / "train" / "n09999999")
    shutil.rmtree(tmp_path / "val" / "n09999999")
    with pytest.raises(WidthlabError, match="holding out val_per_class=10 would leave none"):
        load_data("imagenet", root=tmp_path)


def test_imagenet_corrupt_jpeg_is_named(imagenet_root, tmp_path):
    shutil.copytree(imagenet_root, tmp_path, dirs_exist_ok=True)
    bad = tmp_path / "val" / WNIDS[2] / f"{WNIDS[2]}_1.JPEG"
    bad.write_bytes(bad.read_bytes()[:200])  # a truncated download
    test = load_data("imagenet", root=tmp_path, image_size=64, val_per_class=1).test
    assert test[0][0].shape == (3, 64, 64)  # the other files still load
    with pytest.raises(WidthlabError, match=rf"cannot decode image {bad}"):
        test[5]


def _png_claiming(path, width, height):
    """A few-byte PNG whose header claims `width` × `height` pixels (a decompression bomb's header)."""
    import struct
    import zlib

    Image.new("RGB", (1, 1)).save(path, "PNG")
    data = bytearray(path.read_bytes())
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:33] = header + struct.pack(">I", zlib.crc32(header))
    path.write_bytes(bytes(data))


def test_imagenet_decompression_bomb_is_named(imagenet_root, tmp_path):
    shutil.copytree(imagenet_root, tmp_path, dirs_exist_ok=True)
    bomb = tmp_path / "val" / WNIDS[2] / "bomb.png"
    _png_claiming(bomb, 20_000, 10_000)
    assert bomb.stat().st_size < 100
    test = load_data("imagenet", root=tmp_path, image_size=64, val_per_class=1).test
    index = [i for i in range(len(test)) if test.files[i] == str(bomb)]
    with pytest.raises(WidthlabError, match=rf"cannot decode image {bomb} \(Image size \(200000000 pixels\) exceeds"):
        test[index[0]]


# ---------------------------------------------------------------- digits

def test_digits_real_data_offline():
    splits = load_data("digits")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1197, 300, 300)
    assert splits.train.x.shape == (1197, 3, 32, 32) and splits.input_shape == (3, 32, 32)
    assert splits.num_classes == 10 and set(splits.test.y.tolist()) == set(range(10))
    assert torch.bincount(splits.test.y).min() >= 29  # stratified: 29-31 of each digit
    assert torch.equal(splits.train.x[:, 0], splits.train.x[:, 2])  # grey replicated
    assert abs(splits.train.x.mean().item()) < 1e-4 and abs(splits.train.x.std().item() - 1) < 1e-3
    assert splits.augment is not None and not splits.augment.flip and splits.augment.padding == 4


def test_digits_split_is_seeded_and_sizes_scale():
    a, b, c = load_data("digits", seed=1), load_data("digits", seed=1), load_data("digits", seed=2)
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.val.y, b.val.y)
    assert not torch.equal(a.test.x, c.test.x)
    big = load_data("digits", image_size=75, n_train=50, random_labels=True)
    assert big.train.x.shape == (50, 3, 75, 75) and big.input_shape == (3, 75, 75)
    true = load_data("digits", n_train=50)
    assert torch.equal(big.test.y, true.test.y) and not torch.equal(big.train.y, true.train.y)
    with pytest.raises(WidthlabError, match="image_size must be at least 8"):
        load_data("digits", image_size=4)
