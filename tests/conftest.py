"""Fixtures shared by the test modules."""

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

# One 1/4x MLP trained for 2 epochs on 64 synthetic examples: the smallest study widthlab runs end to end.
TINY_STUDY = ["grid.select=null", "grid.widths=[0.25]", "grid.replicates=1", "train.epochs=2", "data.n_train=64",
              "data.n_val=32", "data.n_test=32", "measure.samplings=1", "measure.levels=3",
              "grid.variants={'default': {}}"]


CIFAR_PER_BATCH = 20  # write_cifar10: 5 training batches → 100 images; the test batch holds 20 more


def write_cifar10(root: Path) -> Path:
    """``root/cifar-10-batches-py`` in the official format (Python 2 pickles with bytes keys): five training batches
    and a test batch of `CIFAR_PER_BATCH` random images each, image i's red pixel (0, 0) = i (rows stay
    traceable) and its label i mod 10. Returns `root`."""
    from widthlab.data.cifar10 import TRAIN_FILES

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for b, name in enumerate([*TRAIN_FILES, "test_batch"]):
        first = b * CIFAR_PER_BATCH
        data = rng.integers(0, 256, (CIFAR_PER_BATCH, 3072), dtype=np.uint8)
        data[:, 0] = np.arange(first, first + CIFAR_PER_BATCH)
        batch = {b"batch_label": b"fixture", b"labels": [(first + i) % 10 for i in range(CIFAR_PER_BATCH)],
                 b"data": data, b"filenames": [f"img{first + i}.png".encode() for i in range(CIFAR_PER_BATCH)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return root


@pytest.fixture
def one_thread():
    """Tiny float64 models run fastest on one thread (and a busy machine makes thread pools spin)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_hooks_left():
    """A check that no forward hook, pre-hook or patched `forward` is left on any module of a model."""
    def check(model):
        return all(not m._forward_hooks and not m._forward_pre_hooks and "forward" not in m.__dict__
                   for m in model.modules())
    return check


@pytest.fixture(scope="session")
def finished_study(tmp_path_factory):
    """A finished `TINY_STUDY` with its report, trained once per test process; tests change only `study`."""
    from widthlab.study import load_config, run_study

    out = tmp_path_factory.mktemp("finished") / "study"
    run_study(load_config("mlp-10d", TINY_STUDY), out, progress=False, report=True)
    return out


@pytest.fixture
def study(finished_study, tmp_path):
    """A fresh copy of `finished_study` for one test to damage."""
    out = tmp_path / "study"
    shutil.copytree(finished_study, out)
    return out


@pytest.fixture
def cuda_path(monkeypatch):
    """The device the CUDA path's tests train on: the GPU where there is one, else the CPU standing in for it
    (``WIDTHLAB_CUDA_STANDIN=1``: every ``auto`` decision taken as on CUDA, TF32 emulated in the stacked check)
    with torch.compile's cheap ``aot_eager`` backend (Dynamo and AOTAutograd capture the graphs, no codegen)."""
    import widthlab.train.loop as loop
    from widthlab.train.standin import STANDIN_ENV

    if torch.cuda.is_available():
        return "cuda"
    monkeypatch.setenv(STANDIN_ENV, "1")
    monkeypatch.setattr(loop, "_compile_backend", "aot_eager")
    return "cpu"
