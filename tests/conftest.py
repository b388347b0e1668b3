"""Fixtures shared by the test modules."""

import pytest
import torch


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
