"""Capture and the perturbation engine: known answers, nested masks, determinism, paths and error handling."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from widthlab.errors import WidthlabError
from widthlab.measure import Curve, Moments, ablation_curve, capture, perturbation_curve, robustness_auc
from widthlab.measure.perturbations import ablation_masks, example_noise, n_ablated, targeted_order, unit_order
from widthlab.seeding import torch_generator
from widthlab.models import create_model

LEVELS = [0.0, 0.25, 0.5, 0.75, 1.0]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def mlp():
    model = create_model("mlp", 0.25, init="normal", sigma=0.3, input_dim=10, seed=0)
    with torch.no_grad():
        model.fc1.bias.normal_(0, 0.5, generator=gen(1))
        model.readout.bias.copy_(torch.tensor([0.05, -0.05]))
    return model


@pytest.fixture
def x():
    return torch.randn(300, 10, generator=gen(2))


def chain(dtype=torch.float64):
    """Linear-ReLU-Linear-ReLU-Linear: layers "1" and "3" are cuts of a plain nn.Sequential."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 3)).to(dtype)
    for p in model.parameters():  # larger than PyTorch's default init, so predictions vary across inputs
        nn.init.normal_(p, 0, 0.5)
    return model


def conv_net(dtype=torch.float64):
    """Two Conv2d+ReLU blocks on 8x8 inputs, flatten, linear readout over 5 classes."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 8 * 8, 5)).to(dtype)


# Capture ---------------------------------------------------------------------------------------------------------

def test_capture_conv_units_are_channels_and_rows_are_positions():
    model, images = conv_net(), torch.randn(7, 3, 8, 8, generator=gen(3))
    acts = capture(model, images, ["1", "3"], batch_size=3)
    assert acts["1"].shape == (7 * 8 * 8, 4) and acts["3"].shape == (7 * 8 * 8, 6)
    expected = model[1](model[0](images.double())).permute(0, 2, 3, 1).reshape(-1, 4)
    torch.testing.assert_close(acts["1"], expected.detach(), rtol=0, atol=0)


def test_capture_dense_layer_and_data_sources_agree(mlp, x):
    y = torch.randint(0, 2, (300,), generator=gen(4))
    from_tensor = capture(mlp, x, "relu1")["relu1"]
    from_dataset = capture(mlp, TensorDataset(x, y), "relu1", batch_size=64)["relu1"]
    from_loader = capture(mlp, DataLoader(TensorDataset(x), batch_size=50), "relu1")["relu1"]
    assert from_tensor.shape == (300, mlp.fc1.out_features)
    torch.testing.assert_close(from_tensor, torch.relu(mlp.fc1(x)).detach())
    torch.testing.assert_close(from_dataset, from_tensor)
    torch.testing.assert_close(from_loader, from_tensor)


def test_capture_survives_inplace_relu_after_the_layer():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 2))
    inputs = torch.randn(20, 4, generator=gen(5))
    assert (capture(model, inputs, "0")["0"] < 0).any()


def test_capture_restores_training_flag(mlp, x):
    mlp.train()
    capture(mlp, x, "relu1")
    assert mlp.training and mlp.relu1.training


def test_unknown_layer_lists_valid_names(mlp, x):
    with pytest.raises(WidthlabError, match="'nope'.*fc1, relu1, readout"):
        capture(mlp, x, ["nope"])
    with pytest.raises(WidthlabError, match="fc1, relu1, readout"):
        perturbation_curve(mlp, x, "nope")


class Explodes(nn.Module):
    """fc → relu → raises: a forward pass that fails after the hooked layer."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.relu = nn.ReLU()

    def forward(self, x):
        self.relu(self.fc(x))
        raise RuntimeError("boom")


def test_hooks_are_removed_after_an_exception_mid_forward(no_hooks_left):
    model = Explodes().train()
    with pytest.raises(RuntimeError, match="boom"):
        capture(model, torch.randn(5, 4), "relu")
    with pytest.raises(RuntimeError, match="boom"):
        perturbation_curve(model, torch.randn(5, 4), "relu")
    assert no_hooks_left(model) and model.training


def test_hooks_are_removed_after_nan_activations(no_hooks_left):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].bias[1] = float("nan")
    with pytest.raises(WidthlabError, match="layer '1'.*NaN"):
        capture(model, torch.randn(5, 3), "1")
    assert no_hooks_left(model)


class SharedRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(4, 4), nn.Linear(4, 2), nn.ReLU()

    def forward(self, x):
        return self.fc2(self.act(self.fc1(self.act(x))))


def test_module_called_twice_is_an_error_naming_it(no_hooks_left):
    model = SharedRelu()
    with pytest.raises(WidthlabError, match="'act'.*more than once"):
        capture(model, torch.randn(5, 4), "act")
    with pytest.raises(WidthlabError, match="'act'.*more than once"):
        perturbation_curve(model, torch.randn(5, 4), "act")
    assert no_hooks_left(model)


class TupleOut(nn.Module):
    def forward(self, x):
        return x, x


def test_layer_output_without_unit_axis_is_an_error():
    model = nn.Sequential(nn.Linear(3, 4), TupleOut())
    with pytest.raises(WidthlabError, match="not a tensor"):
        capture(model, torch.randn(5, 3), "1")
    flat = nn.Sequential(nn.Linear(3, 1), nn.Flatten(0))
    with pytest.raises(WidthlabError, match="no unit axis"):
        capture(flat, torch.randn(5, 3), "1")


def test_model_output_must_be_scores():
    with pytest.raises(WidthlabError, match=r"\(N, classes\)"):
        perturbation_curve(conv_net()[:4], torch.randn(4, 3, 8, 8), "1", levels=[0, 1], samplings=1)


# Ablation masks and levels -----------------------------------------------------------------------------------------

def test_n_ablated_rounds_halves_up():
    assert [n_ablated(p, 10) for p in np.arange(11) / 10] == list(range(11))
    assert n_ablated(0.5, 5) == 3 and n_ablated(0.1, 128) == 13 and n_ablated(1.0, 7) == 7


def test_masks_are_nested_and_follow_the_order():
    levels = np.arange(11) / 10
    masks = ablation_masks("relu1", 17, levels, samplings=4, seed=3)
    for s in range(4):
        for i in range(1, len(levels)):
            assert bool((masks[s, i - 1] <= masks[s, i]).all())  # supersets with increasing level
        for i, level in enumerate(levels):
            order = unit_order("relu1", 17, s, seed=3)
            assert set(order[:n_ablated(level, 17)].tolist()) == set(masks[s, i].nonzero().flatten().tolist())
    assert not torch.equal(masks[0], masks[1])


# Curves: known answers ---------------------------------------------------------------------------------------------

def test_level_zero_unchanged_and_level_one_is_the_constant_network(mlp, x):
    labels = torch.randint(0, 2, (300,), generator=gen(6))
    curve = perturbation_curve(mlp, x, "relu1", levels=LEVELS, samplings=3, labels=labels)
    assert isinstance(curve, Curve) and curve.path == "batched"  # fx proves relu1 a cut
    assert curve.unchanged.shape == (3, 5) and curve.auc.shape == (3,)
    np.testing.assert_array_equal(curve.unchanged[:, 0], 1.0)
    with torch.no_grad():
        base = mlp(x).argmax(1)
        constant = mlp.readout(torch.zeros(1, mlp.fc1.out_features)).argmax(1)  # hidden layer zeroed by hand
    np.testing.assert_allclose(curve.unchanged[:, -1], (base == constant).double().mean().item())
    np.testing.assert_allclose(curve.accuracy[:, -1], (labels == constant).double().mean().item())
    np.testing.assert_allclose(curve.accuracy[:, 0], (labels == base).double().mean().item())
    assert curve.unchanged[:, -1].max() < 1  # the test is not vacuous


def test_zero_ablation_matches_hand_masking(mlp, x):
    levels = [0.0, 0.5]
    curve = perturbation_curve(mlp, x, "relu1", levels=levels, samplings=2, seed=4)
    masks = ablation_masks("relu1", mlp.fc1.out_features, levels, 2, seed=4)
    with torch.no_grad():
        hidden = torch.relu(mlp.fc1(x))
        base = mlp.readout(hidden).argmax(1)
        for s in range(2):
            pred = mlp.readout(hidden * ~masks[s, 1]).argmax(1)
            assert curve.unchanged[s, 1] == (pred == base).double().mean().item()


def test_curves_are_deterministic_per_seed(mlp, x):
    a = perturbation_curve(mlp, x, "relu1", seed=5)
    b = perturbation_curve(mlp, x, "relu1", seed=5)
    c = perturbation_curve(mlp, x, "relu1", seed=6)
    np.testing.assert_array_equal(a.unchanged, b.unchanged)
    assert not np.array_equal(a.unchanged, c.unchanged)


class ConstantHidden(nn.Module):
    """Scores = readout(relu(fc(x))) + skip(x) where every hidden unit is constant, so predictions still vary."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.fc, self.relu, self.readout, self.skip = nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3), nn.Linear(5, 3)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.copy_(torch.linspace(0.5, 3.0, 6))
            self.readout.weight.mul_(4)

    def forward(self, x):
        return self.readout(self.relu(self.fc(x))) + self.skip(x)


def test_mean_ablation_of_constant_units_changes_nothing():
    model, inputs = ConstantHidden(), torch.randn(200, 5, generator=gen(7))
    np.testing.assert_array_equal(ablation_curve(model, inputs, "relu", mode="mean"), 1.0)
    assert ablation_curve(model, inputs, "relu", mode="zero")[:, -1].max() < 1  # zeroing them does matter


def test_mean_ablation_of_conv_uses_mean_over_examples_and_positions():
    model, images = conv_net(), torch.randn(9, 3, 8, 8, generator=gen(8), dtype=torch.float64)
    curve = perturbation_curve(model, images, "1", perturbation="mean", levels=[0, 1], samplings=1, path="full")
    mean = capture(model, images, "1")["1"].mean(0)  # over 9·8·8 rows
    with torch.no_grad():
        base = model(images).argmax(1)
        pred = model[2:](mean.view(1, 4, 1, 1).expand(9, 4, 8, 8)).argmax(1)
    assert curve.unchanged[0, 1] == (pred == base).double().mean().item()


def hidden_twins_mlp():
    """A float64 MLP with 6 hidden units: units 0-2 are copies of one unit and 3-5 of another (|r| = 1 within)."""
    model = create_model("mlp", 6 / 128, init="normal", sigma=0.5, input_dim=10, seed=3).double()
    with torch.no_grad():
        for first in (0, 3):
            model.fc1.weight[first + 1:first + 3] = model.fc1.weight[first]
            model.fc1.bias[first + 1:first + 3] = model.fc1.bias[first]
    return model


def test_targeted_order_puts_u_first_then_units_by_abs_r():
    r = np.random.default_rng(0)
    a, b = r.standard_normal(500), r.standard_normal(500)
    moments = Moments.of(np.stack([a, b, 2 * a, -a, b + 0.1 * r.standard_normal(500), np.full(500, 3.0)], 1))
    for s in range(6):
        order = targeted_order("h", moments, s, seed=1).tolist()
        u = int(unit_order("h", 6, s, seed=1)[0])
        assert order[0] == u and sorted(order) == list(range(6))
        if u in (0, 2, 3):
            assert set(order[1:3]) == {0, 2, 3} - {u} and order[3:5] in ([1, 4], [4, 1]) and order[5] == 5
        if u == 5:  # a flat u correlates with nothing: the random order itself
            assert order == unit_order("h", 6, s, seed=1).tolist()


def test_targeted_curve_matches_hand_masking(x):
    model, inputs = hidden_twins_mlp(), x.double()
    levels = [0.0, 0.5, 1.0]
    curve = perturbation_curve(model, inputs, "relu1", perturbation="targeted", levels=levels, samplings=3, seed=2)
    with torch.no_grad():
        hidden = torch.relu(model.fc1(inputs))
        base = model.readout(hidden).argmax(1)
        moments = Moments.of(hidden)
        for s in range(3):
            order = targeted_order("relu1", moments, s, seed=2)
            assert set(order[:3].tolist()) in ({0, 1, 2}, {3, 4, 5})  # the half ablated at 0.5 is u's trio
            keep = torch.ones(6, dtype=torch.float64)
            keep[order[:3]] = 0
            pred = model.readout(hidden * keep).argmax(1)
            assert curve.unchanged[s, 1] == (pred == base).double().mean().item()


def test_act_noise_adds_per_example_noise_independent_of_batching(x):
    model, inputs = hidden_twins_mlp(), x.double()
    levels = [0.0, 0.5, 2.0]
    small = perturbation_curve(model, inputs, "relu1", perturbation="act_noise", levels=levels, batch_size=7)
    large = perturbation_curve(model, inputs, "relu1", perturbation="act_noise", levels=levels, batch_size=300)
    np.testing.assert_array_equal(small.unchanged, large.unchanged)
    with torch.no_grad():
        hidden = torch.relu(model.fc1(inputs))
        base = model.readout(hidden).argmax(1)
        std = Moments.of(hidden).std
        for s in range(3):
            noisy = hidden + example_noise("relu1", s, 0, 0, hidden) * (2.0 * std)
            assert small.unchanged[s, 2] == (model.readout(noisy).argmax(1) == base).double().mean().item()
    assert small.unchanged[:, 2].max() < 1 and small.auc[0] == robustness_auc(levels, small.unchanged[0])


def test_act_noise_on_constant_units_changes_nothing():
    model, inputs = ConstantHidden(), torch.randn(50, 5, generator=gen(15))
    np.testing.assert_array_equal(perturbation_curve(model, inputs, "relu", perturbation="act_noise").unchanged, 1.0)


def test_weight_noise_perturbs_the_producing_linear(x):
    model, inputs = hidden_twins_mlp(), x.double()
    curve = perturbation_curve(model, inputs, "relu1", perturbation="weight_noise", levels=[0, 1, 3], samplings=2)
    w, b = model.fc1.weight.detach(), model.fc1.bias.detach()
    with torch.no_grad():
        base = model(inputs).argmax(1)
        for s in range(2):
            eps = torch.randn(w.shape, dtype=w.dtype, generator=torch_generator(0, "relu1", s, "weight_noise"))
            noisy = w + eps * (3.0 * float(w.std(correction=0)))
            pred = model.readout(torch.relu(inputs @ noisy.T + b)).argmax(1)
            assert curve.unchanged[s, 2] == (pred == base).double().mean().item()
    assert curve.unchanged[:, 2].max() < 1


def test_weight_knockout_of_every_weight_leaves_the_bias(mlp, x):
    curve = perturbation_curve(mlp, x, "relu1", perturbation="weight_knockout", levels=[0, 0.5, 1])
    with torch.no_grad():
        base = mlp(x).argmax(1)
        constant = mlp.readout(torch.relu(mlp.fc1.bias)).argmax()  # fc1 outputs its bias alone
    np.testing.assert_allclose(curve.unchanged[:, 2], (base == constant).double().mean().item())
    assert curve.unchanged[:, 1].min() < 1 and curve.unchanged[:, 2].max() < 1
    # The layer may be the producer itself (its streams are its own, so only the ends agree).
    of_fc1 = perturbation_curve(mlp, x, "fc1", perturbation="weight_knockout", levels=[0, 0.5, 1]).unchanged
    np.testing.assert_array_equal(of_fc1[:, [0, 2]], curve.unchanged[:, [0, 2]])


def test_noise_levels_are_sigma_multiples():
    model, inputs = ConstantHidden(), torch.randn(20, 5, generator=gen(16))
    curve = perturbation_curve(model, inputs, "relu", perturbation="act_noise", samplings=1)
    np.testing.assert_allclose(curve.levels, np.arange(11) / 5)  # default 0, 0.2, ..., 2
    assert curve.auc[0] == pytest.approx(1.0)  # the area is divided by the last level
    perturbation_curve(model, inputs, "relu", perturbation="weight_noise", levels=[0, 5, 10], samplings=1)
    with pytest.raises(WidthlabError, match="multiples of σ"):
        perturbation_curve(model, inputs, "relu", perturbation="act_noise", levels=[-1, 1])
    with pytest.raises(WidthlabError, match="shares in \\[0, 1\\]"):
        perturbation_curve(model, inputs, "relu", perturbation="targeted", levels=[0, 2])


def test_nan_activations_fail_without_a_partial_result(no_hooks_left):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    inputs = torch.randn(30, 3, generator=gen(17))
    inputs[25, 0] = float("nan")  # in the second batch
    with pytest.raises(WidthlabError, match="layer '1' produced NaN"):
        perturbation_curve(model, inputs, "1", batch_size=20)
    assert no_hooks_left(model)


def test_robustness_auc_known_values():
    levels = np.arange(11) / 10
    assert robustness_auc(levels, np.ones(11)) == pytest.approx(1.0)
    assert robustness_auc(levels, 1 - levels) == pytest.approx(0.5)
    assert robustness_auc([0, 1, 2], [1, 1, 1]) == pytest.approx(1.0)  # noise levels: divided by the last
    with pytest.raises(WidthlabError):
        robustness_auc([0], [1])


# Scopes and paths --------------------------------------------------------------------------------------------------

def test_per_layer_curve_does_not_depend_on_other_layers():
    model, inputs = chain(), torch.randn(120, 10, generator=gen(9), dtype=torch.float64)
    alone = perturbation_curve(model, inputs, "1", path="full", samplings=2)
    joint_one = perturbation_curve(model, inputs, "all", layers=["1"], path="full", samplings=2)
    np.testing.assert_array_equal(alone.unchanged, joint_one.unchanged)  # "all" uses each layer's own stream
    joint = perturbation_curve(model, inputs, "all", layers=["1", "3"], path="full", samplings=2)
    assert not np.array_equal(joint.unchanged, alone.unchanged)


@pytest.mark.parametrize("perturbation", ["zero", "mean"])
@pytest.mark.parametrize("layer, layers", [("1", None), ("3", None), ("all", ["3", "1"])])
def test_batched_path_is_bit_identical_to_full_in_float64(perturbation, layer, layers):
    model, inputs = chain(), torch.randn(130, 10, generator=gen(10), dtype=torch.float64)
    labels = torch.randint(0, 3, (130,), generator=gen(11))
    kw = dict(perturbation=perturbation, layers=layers, samplings=3, labels=labels, batch_size=50)
    full = perturbation_curve(model, inputs, layer, path="full", **kw)
    batched = perturbation_curve(model, inputs, layer, path="batched", ablations_per_eval=4, **kw)
    assert (full.path, batched.path) == ("full", "batched")
    assert perturbation_curve(model, inputs, layer, **kw).path == "batched"  # auto finds the cut
    np.testing.assert_array_equal(full.unchanged, batched.unchanged)
    np.testing.assert_array_equal(full.accuracy, batched.accuracy)
    assert full.unchanged.min() < 1


class DeclaresCut(nn.Module):
    """A model fx cannot trace (data-dependent branch) that declares `relu` a cut and runs the network from it."""

    cut_layers = ["relu"]

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.fc, self.relu, self.head = nn.Linear(6, 20), nn.ReLU(), nn.Linear(20, 4)

    def forward(self, x):
        if x.sum() > 1e9:  # never taken, but fx cannot trace a branch on data
            x = -x
        return self.forward_from("relu", self.relu(self.fc(x)))

    def forward_from(self, layer, h):
        return self.head(h)


def test_declared_cut_uses_the_batched_path():
    model, inputs = DeclaresCut().double(), torch.randn(60, 6, generator=gen(13), dtype=torch.float64)
    batched = perturbation_curve(model, inputs, "relu")
    assert batched.path == "batched"
    np.testing.assert_array_equal(batched.unchanged, perturbation_curve(model, inputs, "relu", path="full").unchanged)
    assert perturbation_curve(model, inputs, "fc").path == "full"  # neither declared nor provable
    with pytest.raises(WidthlabError, match="'fc' is not"):
        perturbation_curve(model, inputs, "fc", path="batched")


def test_dataset_labels_are_used_and_ablation_curve_is_unchanged(mlp, x):
    y = torch.randint(0, 2, (300,), generator=gen(14))
    curve = perturbation_curve(mlp, TensorDataset(x, y), "relu1", batch_size=64)
    assert curve.accuracy is not None
    np.testing.assert_array_equal(curve.accuracy, perturbation_curve(mlp, x, "relu1", labels=y).accuracy)
    np.testing.assert_array_equal(ablation_curve(mlp, x, "relu1"), curve.unchanged)
    assert perturbation_curve(mlp, x, "relu1").accuracy is None


def test_bad_arguments_are_rejected(mlp, x):
    with pytest.raises(WidthlabError, match="implemented: zero, mean, targeted, act_noise, weight_noise, weight_k"):
        perturbation_curve(mlp, x, "relu1", perturbation="bogus")
    with pytest.raises(WidthlabError, match="levels"):
        perturbation_curve(mlp, x, "relu1", levels=[0, 0.5, 0.4])
    with pytest.raises(WidthlabError, match="mode"):
        ablation_curve(mlp, x, "relu1", mode="noise")
    with pytest.raises(WidthlabError, match="labels"):
        perturbation_curve(mlp, x, "relu1", labels=torch.zeros(10, dtype=torch.long))
