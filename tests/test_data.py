"""Synthetic teacher data: shapes, label balance, one teacher per seed, clear errors."""

import ast
from pathlib import Path

import pytest
import torch

from widthlab import WidthlabError, load_data
from widthlab.data import synthetic
from widthlab.data.synthetic import BALANCE_INPUTS, STUDENT_HIDDEN, make_teacher, teacher_hidden
from widthlab.models import scale_width


def test_default_splits_have_1000_examples_each():
    splits = load_data("synthetic", seed=0)
    for part in (splits.train, splits.val, splits.test):
        assert part.x.shape == (1000, 10) and part.y.shape == (1000,)
        assert set(part.y.unique().tolist()) <= {0, 1}
    assert splits.num_classes == 2 and splits.input_shape == (10,)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_teacher_labels_are_balanced_on_fresh_inputs(seed):
    teacher, draws = make_teacher(10, seed)
    assert draws >= 1
    x = torch.randn(BALANCE_INPUTS, 10, generator=torch.Generator().manual_seed(123))
    share = teacher(x).argmax(1).float().mean().item()
    assert 0.37 <= share <= 0.63  # balanced within 40-60% on its own probe set; fresh inputs differ slightly


def test_teacher_is_the_quarter_width_mlp():
    teacher, _ = make_teacher(10, 0)
    assert teacher.fc1.out_features == 32 and teacher.readout.out_features == 2


def test_same_seed_same_data_other_seed_other_teacher():
    a, b = load_data("synthetic", seed=5), load_data("synthetic", seed=5)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    c = load_data("synthetic", seed=6)
    assert not torch.equal(a.train.x, c.train.x)


@pytest.mark.slow
def test_split_sizes_and_dimension_are_configurable():
    splits = load_data("synthetic", seed=0, input_dim=10_000, n_train=50, n_val=20, n_test=30)
    assert splits.train.x.shape == (50, 10_000) and len(splits.val) == 20 and len(splits.test) == 30
    # labels follow the study's one teacher: the same inputs relabelled by a fresh call agree
    again = load_data("synthetic", seed=0, input_dim=10_000, n_train=50, n_val=20, n_test=30)
    assert torch.equal(splits.test.y, again.test.y)


def test_splits_do_not_share_rows():
    splits = load_data("synthetic", seed=0)
    assert not torch.equal(splits.train.x[:5], splits.test.x[:5])


@pytest.mark.parametrize("kwargs,match", [({"input_dim": 0}, "input_dim must be a positive integer"),
                                          ({"n_train": 2.5}, "n_train must be a positive integer"),
                                          ({"dims": 3}, r"unknown option\(s\) 'dims'")])
def test_bad_options_are_clear_errors(kwargs, match):
    with pytest.raises(WidthlabError, match=match):
        load_data("synthetic", **kwargs)


def test_unknown_data_set_lists_registered():
    with pytest.raises(WidthlabError, match=r"unknown data set 'cifar100'.*synthetic"):
        load_data("cifar100")


def test_known_answer_seed_0():
    # Pinned from the data as `create_model("mlp", 0.25, ...)` drew it: a refactor must keep every bit.
    splits = load_data("synthetic", seed=0)
    assert torch.equal(splits.train.x[0, :4], torch.tensor([-0.41176775097846985, 0.4503564238548279,
                                                            0.049381136894226074, -0.2109709084033966]))
    assert splits.train.y[:16].tolist() == [0, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 0, 1, 0, 0]
    assert (splits.train.y.sum().item(), splits.test.y.sum().item()) == (570, 589)
    teacher, draws = make_teacher(10, 0)
    assert draws == 2
    assert torch.equal(teacher.fc1.bias[:3], torch.tensor([-1.6211073398590088, 0.07110383361577988,
                                                           -0.0264227744191885]))
    assert torch.equal(teacher.readout.weight[0, :3], torch.tensor([-0.04910118877887726, -0.1380074918270111,
                                                                    -0.07824230194091797]))
    assert not teacher.readout.bias.any()


@pytest.mark.parametrize("width", [0.01, 0.25, 0.5, 1, 0.99609375, 3])
def test_teacher_width_rounds_as_the_model_zoo_does(width):
    assert teacher_hidden(width) == scale_width(STUDENT_HIDDEN, width) == make_teacher(3, 0, width)[0].fc1.out_features


def test_loading_draws_nothing_from_the_global_rng():
    torch.manual_seed(7)
    state = torch.get_rng_state()
    load_data("synthetic", seed=1, n_train=10, n_val=10, n_test=10)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("kwargs,match", [({"teacher_width": 0}, "teacher_width must be a positive finite number"),
                                          ({"teacher_width": True}, "teacher_width must be a positive"),
                                          ({"teacher_init": "xavier"}, "unknown init 'xavier'; valid: normal")])
def test_bad_teacher_options_are_clear_errors(kwargs, match):
    with pytest.raises(WidthlabError, match=match):
        load_data("synthetic", **kwargs)


def test_data_imports_nothing_of_the_later_stages():
    # docs/architecture.md: data/ imports nothing of ours but shared helpers (models/ included: the teacher is its own).
    later = ("widthlab.models", "widthlab.train", "widthlab.measure", "widthlab.study", "widthlab.report",
             "widthlab.cli")
    for path in Path(synthetic.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not [n for n in names if n.startswith(later)], f"{path.name} imports {names}"
