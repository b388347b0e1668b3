"""`widthlab.compress`: known answers of merging and pruning (the paper's duplicated network, weight balancing,
linear dependence, silent units), a residual model through Torch-Pruning, saving without pickle, and one-line
errors from the API and the CLI."""

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from widthlab import create_model
from widthlab.cli import main
from widthlab.compress import compress, load_compressed
from widthlab.compress import core
from widthlab.errors import WidthlabError
from widthlab.train.checkpoint import save_checkpoint


def params(model):
    return sum(p.numel() for p in model.parameters())


def duplicated(small: nn.Module, eta: float = 0.0, seed: int = 0) -> nn.Module:
    """The paper's construction: `small` (a zoo mlp) with every hidden unit duplicated and its outgoing weights
    halved; `eta` shifts weight between the twins (w/2 + η, w/2 − η: "weight balancing")."""
    hidden = small.fc1.out_features
    large = create_model("mlp", 2 * hidden / 128, input_dim=small.fc1.in_features,
                         num_classes=small.readout.out_features).double()
    shift = eta * torch.randn(small.readout.weight.shape, generator=torch.Generator().manual_seed(seed),
                              dtype=torch.float64)
    with torch.no_grad():
        large.fc1.weight.copy_(torch.cat([small.fc1.weight, small.fc1.weight]))
        large.fc1.bias.copy_(torch.cat([small.fc1.bias, small.fc1.bias]))
        # twins interleaved with the others (not first half / second half), so no index order finds them
        perm = torch.randperm(2 * hidden, generator=torch.Generator().manual_seed(seed + 1))
        large.fc1.weight.copy_(large.fc1.weight[perm])
        large.fc1.bias.copy_(large.fc1.bias[perm])
        out = torch.cat([small.readout.weight / 2 + shift, small.readout.weight / 2 - shift], 1)
        large.readout.weight.copy_(out[:, perm])
        large.readout.bias.copy_(small.readout.bias)
    return large


@pytest.fixture(scope="module")
def small():
    return create_model("mlp", 12 / 128, input_dim=6, num_classes=3, init="normal", sigma=0.5, seed=1).double()


@pytest.fixture(scope="module")
def x():
    return torch.randn(400, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


# Known answers --------------------------------------------------------------------------------------------------

def test_merge_recovers_the_network_every_unit_of_which_was_duplicated_and_prune_does_not(small, x):
    large = duplicated(small)
    assert torch.allclose(large(x), small(x), atol=1e-12)
    merged = compress(large, x, keep=12, method="merge")
    assert (merged.model(x) - small(x)).abs().max() < 1e-6
    assert params(merged.model) == params(small) < params(large)
    assert merged.table.loc[0, "method_used"] == "merge" and merged.table.loc[0, "agreement"] == 1.0
    assert merged.table.loc[0, "params_after"] == params(small)
    # one of each pair of twins stays
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(1))
    assert sorted((perm[merged.kept["relu1"]] % 12).tolist()) == list(range(12))
    pruned = compress(large, x, keep=12, method="prune")
    assert params(pruned.model) == params(small)
    assert (pruned.model(x) - small(x)).abs().max() > 1e-2


@pytest.mark.parametrize("importance", ["ablation", "magnitude", "random"])
def test_weight_balancing_defeats_pruning_by_any_importance_but_not_merging(small, x, importance):
    large = duplicated(small, eta=5.0)
    assert torch.allclose(large(x), small(x), atol=1e-10)
    merged = compress(large, x, keep=12, method="merge", importance=importance)
    assert (merged.model(x) - small(x)).abs().max() < 1e-6
    pruned = compress(large, x, keep=12, method="prune", importance=importance)
    assert (pruned.model(x) - small(x)).abs().max() > 1.0
    assert pruned.table.loc[0, "agreement"] < 1.0


def test_a_unit_that_is_a_linear_combination_of_two_others_merges_without_changing_any_output():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).double()
    with torch.no_grad():
        model[0].weight[4] = 2 * model[0].weight[0] - 0.5 * model[0].weight[1]
        model[0].bias[4] = 2 * model[0].bias[0] - 0.5 * model[0].bias[1] + 0.7  # and a constant
    x = torch.randn(200, 6, dtype=torch.float64)
    result = compress(model, x, ["0"], keep=4)
    assert (result.model(x) - model(x)).abs().max() < 1e-9
    assert result.model[0].out_features == 4 and result.model[1].in_features == 4
    assert params(result.model) == params(model) - 6 - 1 - 4  # a row of fc, its bias, a column of the consumer


def test_a_silent_unit_is_removed_without_changing_any_output(small, x):
    model = create_model("mlp", 12 / 128, input_dim=6, num_classes=3, seed=3).double()
    with torch.no_grad():
        model.fc1.weight[5] = 0.0
        model.fc1.bias[5] = -1.0  # never active
    for method in ("merge", "prune"):
        result = compress(model, x, keep=11, method=method)
        assert 5 not in result.kept["relu1"].tolist()
        assert (result.model(x) - model(x)).abs().max() < 1e-12


def test_twin_channels_merge_exactly_through_batchnorm_and_max_pooling_into_a_conv():
    torch.manual_seed(0)

    def net(c):
        return nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(c, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 3)).double()

    small, large = net(5), net(10)
    with torch.no_grad():
        for i in (0, 1):
            for name, value in small[i].state_dict().items():
                if value.dim():
                    large[i].state_dict()[name].copy_(torch.cat([value, value]))
        small[1].running_var.uniform_(0.5, 2.0)
        large[1].running_var.copy_(torch.cat([small[1].running_var] * 2))
        large[4].weight.copy_(torch.cat([small[4].weight / 2 + 3.0, small[4].weight / 2 - 3.0], 1))
        large[4].bias.copy_(small[4].bias)
        large[7].load_state_dict(small[7].state_dict())
    x = torch.randn(40, 3, 8, 8, dtype=torch.float64)
    assert torch.allclose(large.eval()(x), small.eval()(x), atol=1e-10)
    merged = compress(large, x, ["2"], keep=5)
    assert (merged.model(x) - small(x)).abs().max() < 1e-6
    assert params(merged.model) == params(small)
    assert (compress(large, x, ["2"], keep=5, method="prune").model(x) - small(x)).abs().max() > 1e-2


def _two_layer_twins(eta: float = 0.0):
    """S: 6 → 5 → 4 → 3 (ReLU after each hidden layer); L: both hidden layers duplicated, outgoing weights halved
    (± eta between twins)."""
    torch.manual_seed(5)
    small = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).double()
    large = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    with torch.no_grad():
        large[0].weight.copy_(torch.cat([small[0].weight] * 2))
        large[0].bias.copy_(torch.cat([small[0].bias] * 2))
        half = torch.cat([small[2].weight / 2 + eta, small[2].weight / 2 - eta], 1)
        large[2].weight.copy_(torch.cat([half, half]))
        large[2].bias.copy_(torch.cat([small[2].bias] * 2))
        large[4].weight.copy_(torch.cat([small[4].weight / 2 - eta, small[4].weight / 2 + eta], 1))
        large[4].bias.copy_(small[4].bias)
    return small, large


def test_two_duplicated_layers_of_one_chain_merge_back_to_the_small_network_and_max_drop_finds_it():
    small, large = _two_layer_twins(eta=2.0)
    x = torch.randn(300, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(large(x), small(x), atol=1e-10)
    merged = compress(large, x, keep={"1": 5, "3": 4})
    assert (merged.model(x) - small(x)).abs().max() < 1e-6 and params(merged.model) == params(small)
    found = compress(large, x, max_drop=0.0)  # default layers: the two ReLUs
    assert list(found.table["layer"]) == ["1", "3"] and list(found.table["units_after"]) == [5, 4]
    assert found.table.loc[0, "agreement"] == 1.0


def test_twin_channels_merge_exactly_into_a_linear_reading_them_flattened():
    torch.manual_seed(1)
    small = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 9, 3)).double()
    large = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 9, 3)).double()
    with torch.no_grad():
        large[0].weight.copy_(torch.cat([small[0].weight] * 2))
        large[0].bias.copy_(torch.cat([small[0].bias] * 2))
        large[4].weight.copy_(torch.cat([small[4].weight / 2 + 1.0, small[4].weight / 2 - 1.0], 1))
        large[4].bias.copy_(small[4].bias)
    x = torch.randn(30, 3, 8, 8, dtype=torch.float64)
    assert torch.allclose(large(x), small(x), atol=1e-10)
    merged = compress(large, x, ["1"], keep=4)
    assert (merged.model(x) - small(x)).abs().max() < 1e-6 and merged.model[4].in_features == 36


def test_ablation_and_magnitude_importance_prune_the_unit_that_matters_least():
    model = create_model("mlp", 8 / 128, input_dim=4, num_classes=2, seed=0).double()
    with torch.no_grad():
        model.readout.weight[:, 6] = 0.0  # unit 6 reaches nothing: its ablation changes no score
        model.fc1.weight[2] *= 1e-3  # unit 2 has the smallest incoming weights
    x = torch.randn(100, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    by_ablation = compress(model, x, keep=7, method="prune", importance="ablation")
    assert 6 not in by_ablation.kept["relu1"].tolist()
    assert (by_ablation.model(x) - model(x)).abs().max() < 1e-12
    assert 2 not in compress(model, x, keep=7, method="prune", importance="magnitude").kept["relu1"].tolist()
    randomly = [compress(model, x, keep=4, method="prune", importance="random", seed=s).kept["relu1"]
                for s in (0, 0, 1)]
    assert torch.equal(randomly[0], randomly[1]) and not torch.equal(randomly[0], randomly[2])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_of_two_exact_twins_merging_keeps_the_more_important_one(seed):
    # unit 7 is a copy of unit 3: either can stand for the other (a near-tie of the selection), so importance
    # decides: here seeded random draws, whose larger one must stay
    model = create_model("mlp", 8 / 128, input_dim=4, num_classes=2, seed=0).double()
    with torch.no_grad():
        model.fc1.weight[7], model.fc1.bias[7] = model.fc1.weight[3], model.fc1.bias[3]
    x = torch.randn(100, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = compress(model, x, keep=7, importance="random", seed=seed)
    draws = torch.rand(8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    gone = 3 if draws[3] < draws[7] else 7
    assert result.kept["relu1"].tolist() == [u for u in range(8) if u != gone]
    assert (result.model(x) - model(x)).abs().max() < 1e-9


def test_alexnet_prunes_where_lrn_mixes_channels_and_merges_its_dense_layers():
    model = create_model("alexnet_cifar", 0.0625, seed=0)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    result = compress(model, x, keep=0.5, importance="magnitude")
    used = dict(zip(result.table["layer"], result.table["method_used"]))
    assert used["conv1_relu"] == "prune (merge not exact: lrn1 mixes units)" and used["fc1_relu"] == "merge"
    assert result.model(x).shape == (6, 10) and params(result.model) < params(model)
    assert result.model.conv2.in_channels == len(result.kept["conv1_relu"]) == 3


def test_max_drop_zero_finds_the_width_of_the_network_before_duplication(small, x):
    large = duplicated(small, eta=1.0)
    result = compress(large, x, max_drop=0.0, method="merge")
    assert result.table.loc[0, "units_after"] == 12 and result.table.loc[0, "agreement"] == 1.0


def test_merging_a_trained_like_model_keeps_more_agreement_than_pruning_and_is_deterministic():
    model = create_model("mlp", 0.5, input_dim=10, seed=0)
    x = torch.randn(500, 10, generator=torch.Generator().manual_seed(0))
    first = compress(model, x, keep=16)
    again = compress(model, x, keep=16)
    assert torch.equal(first.kept["relu1"], again.kept["relu1"])
    assert torch.equal(first.model(x), again.model(x))
    assert model.fc1.out_features == 64  # the original is untouched


# A residual model -------------------------------------------------------------------------------------------------

def test_a_resnet_compresses_through_its_residual_couplings_and_its_table_is_a_hand_evaluation():
    pytest.importorskip("torch_pruning", reason="needs the compress extra (CI installs it with .[test])")
    model = create_model("resnet56_cifar", 0.25, depth=8, seed=0)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 3, 8, 8, generator=gen), torch.randint(0, 10, (24,), generator=gen)
    result = compress(model, (x, y), keep=0.5)
    small = result.model
    assert params(small) < params(model)
    with torch.no_grad():
        before, after = model.eval()(x).argmax(-1), small(x).argmax(-1)
    table = result.table
    assert table["accuracy_before"].iloc[0] == pytest.approx(float((before == y).double().mean()))
    assert table["accuracy_after"].iloc[0] == pytest.approx(float((after == y).double().mean()))
    assert table["agreement"].iloc[0] == pytest.approx(float((after == before).double().mean()))
    assert table["params_after"].iloc[0] == params(small)
    assert list(table["units_after"]) == [2, 2, 4, 8]
    assert "coupled" in table.loc[0, "method_used"] and "'stem'" in table.loc[1, "method_used"]
    assert small.stem.conv.out_channels == 2 and small.stage3[0].conv2.out_channels == 8


def test_without_torch_pruning_a_coupled_model_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setattr(core, "_torch_pruning", lambda: None)
    model = create_model("resnet56_cifar", 0.25, depth=8, seed=0)
    with pytest.raises(WidthlabError, match=r"widthlab\[compress\]"):
        compress(model, torch.randn(4, 3, 8, 8), keep=0.5)


# Saving ---------------------------------------------------------------------------------------------------------------

def test_save_and_load_give_identical_outputs_and_the_file_loads_with_weights_only(tmp_path, small, x):
    model = create_model("mlp", 0.25, input_dim=6, num_classes=3, seed=4)
    xs = x.float()
    result = compress(model, xs, keep=0.5)
    path = result.save(tmp_path / "c.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["spec"]["model"]["name"] == "mlp" and torch.equal(raw["kept"]["relu1"], result.kept["relu1"])
    loaded = load_compressed(path)
    assert torch.equal(loaded.model(xs), result.model(xs))
    assert torch.equal(loaded.kept["relu1"], result.kept["relu1"])
    # a model not from the zoo needs its builder
    plain = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    other = compress(plain, xs, keep=3)
    other_path = other.save(tmp_path / "plain.pt")
    with pytest.raises(WidthlabError, match="build="):
        load_compressed(other_path)
    rebuilt = load_compressed(other_path, build=lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)))
    assert torch.equal(rebuilt.model(xs), other.model(xs))


class Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_a_compressed_file_with_a_payload_is_refused_without_running_it(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": core.FORMAT, "spec": None, "kept": {}, "state": {}, "x": Payload()}, path)
    with pytest.raises(WidthlabError, match="weights_only=True"):
        load_compressed(path)
    assert "pwned" not in capsys.readouterr().out
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(WidthlabError, match="not a widthlab compressed checkpoint"):
        load_compressed(tmp_path / "other.pt")


def test_layers_coupled_by_residual_adds_must_keep_the_same_count():
    pytest.importorskip("torch_pruning", reason="needs the compress extra")
    model = create_model("resnet56_cifar", 0.25, depth=8, seed=0)
    with pytest.raises(WidthlabError, match="'stem' and 'stage1' share their channels"):
        compress(model, torch.randn(4, 3, 8, 8), keep={"stem": 2}, importance="magnitude")


def test_a_saved_resnet_reloads_with_identical_outputs(tmp_path):
    pytest.importorskip("torch_pruning", reason="needs the compress extra")
    model = create_model("resnet56_cifar", 0.25, depth=8, seed=0)
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    result = compress(model, x, keep=0.5, importance="magnitude")
    loaded = load_compressed(result.save(tmp_path / "r.pt"))
    with torch.no_grad():
        assert torch.equal(loaded.model(x), result.model(x))


# Bad inputs ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(layers=["nope"], keep=0.5), r"unknown layer\(s\) 'nope'; valid module names"),
    (dict(keep=0), r"keep for 'relu1' must be a count 1 … 16"),
    (dict(keep=17), r"keep for 'relu1' must be a count 1 … 16"),
    (dict(keep=1.5), r"keep for 'relu1'"),
    (dict(keep={"fc9": 3}), r"keep names layer\(s\) 'fc9'"),
    (dict(keep=0.5, method="fold"), r"unknown method 'fold'; valid methods: merge, prune"),
    (dict(keep=0.5, importance="taylor"), r"unknown importance 'taylor'"),
    (dict(), r"exactly one of keep="),
    (dict(keep=0.5, max_drop=0.1), r"exactly one of keep="),
    (dict(max_drop=2.0), r"max_drop must be"),
])
def test_bad_arguments_are_one_widthlab_error(kwargs, match):
    model = create_model("mlp", 0.125, input_dim=4, seed=0)
    layers = kwargs.pop("layers", None)
    with pytest.raises(WidthlabError, match=match):
        compress(model, torch.randn(20, 4), layers, **kwargs)


def test_a_layer_that_is_the_models_output_or_two_layers_of_one_chain_are_refused():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with pytest.raises(WidthlabError, match="model's output"):
        compress(model, torch.randn(10, 4), ["2"], keep=1)
    with pytest.raises(WidthlabError, match="hold the same units"):
        compress(model, torch.randn(10, 4), ["0", "1"], keep=3)


class Branchy(nn.Module):
    """A forward pass that depends on the data: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.fc1, self.relu, self.fc2 = nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)

    def forward(self, x):
        h = self.relu(self.fc1(x))
        return self.fc2(h) if h.sum() > 0 else -self.fc2(h)


def test_a_model_fx_cannot_trace_is_one_line():
    with pytest.raises(WidthlabError, match="torch.fx cannot trace it"):
        compress(Branchy(), torch.randn(8, 4), ["relu"], keep=3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "mlp.pt"
    model = create_model("mlp", 0.25, input_dim=10, seed=0)
    meta = {"model": {"name": "mlp", "input_dim": 10}, "width": 0.25, "num_classes": 2}
    save_checkpoint(path, {"model": model.state_dict(), "meta": meta})
    return path


def test_the_cli_writes_the_compressed_model_and_its_table(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    code = main([ "compress", str(checkpoint), "--data", "synthetic", "--data-opt", "n_train=200", "--data-opt",
                 "n_val=10", "--data-opt", "n_test=100", "--keep", "0.5", "--method", "merge", "--out", str(out)])
    assert code == 0
    import pandas as pd

    table = pd.read_csv(out / "compression.csv")
    assert table.loc[0, "units_before"] == 32 and table.loc[0, "units_after"] == 16
    assert 0 <= table.loc[0, "accuracy_after"] <= 1
    loaded = load_compressed(out / "compressed.pt")
    assert loaded.model.fc1.out_features == 16
    assert "compressed model:" in capsys.readouterr().out


DATA = ["--data", "synthetic", "--data-opt", "n_train=50", "--data-opt", "n_val=10", "--data-opt", "n_test=20"]


@pytest.mark.parametrize("flags, match", [
    (["--keep", "0.5", "--layers", "nope"], "unknown layer(s) 'nope'"),
    (["--keep", "99"], "must be a count 1 … 32"),
    (["--keep", "half"], "--keep expects a count"),
    (["--keep", "0.5", "--importance", "taylor"], "unknown importance 'taylor'"),
])
def test_cli_bad_input_is_one_line_and_exit_status_2(checkpoint, tmp_path, capsys, flags, match):
    assert main(["compress", str(checkpoint), *DATA, *flags, "--out", str(tmp_path / "o")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and match in lines[0]
    assert not (tmp_path / "o").exists()


def test_cli_unknown_method_is_one_line_without_traceback_in_a_real_process(checkpoint, tmp_path):
    command = [sys.executable, "-m", "widthlab.cli", "compress", str(checkpoint), *DATA, "--keep", "0.5", "--method",
               "fold", "--out", str(tmp_path / "o")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "widthlab: error: unknown method 'fold'; valid methods: merge, prune"


def test_compress_regressions_are_float64_least_squares():
    # the regression of one unit on others through the streamed moments equals numpy's lstsq on the rows
    from widthlab.compress.select import Moments, regression

    rng = np.random.default_rng(0)
    rows = rng.normal(size=(300, 4))
    rows[:, 3] = 0.3 * rows[:, 0] - 2 * rows[:, 2] + 0.1 * rng.normal(size=300) + 1.5
    moments = Moments(4)
    moments.add(torch.from_numpy(rows))
    coef, const = regression(moments, np.array([0, 1, 2]), np.array([3]))
    design = np.column_stack([rows[:, :3], np.ones(300)])
    expected = np.linalg.lstsq(design, rows[:, 3], rcond=None)[0]
    assert np.allclose(coef[:, 0], expected[:3], atol=1e-10) and np.isclose(const[0], expected[3], atol=1e-10)
    assert copy.deepcopy(moments).n == 300


def test_finetune_trains_the_compressed_model_with_fit_and_reports_its_accuracy():
    """finetune= trains the smaller model with widthlab's fit on the given splits: the table's finetuned columns
    are the returned model's own accuracy and agreement (checked by hand), training recovers what pruning lost,
    and without finetune= those columns are NaN."""
    from widthlab import TrainConfig, fit, load_data

    data = load_data("synthetic", input_dim=10, n_train=600, n_val=200, n_test=400, seed=0)
    net = create_model("mlp", 1.0, input_dim=10, num_classes=data.num_classes, seed=0)
    fit(net, data, TrainConfig(lr=0.1, epochs=15, seed=0))
    test = (data.test.x, data.test.y)
    plain = compress(net, data.train.x, keep=4, method="prune", importance="random", eval_inputs=test)
    assert plain.table["accuracy_finetuned"].isna().all() and plain.table["agreement_finetuned"].isna().all()
    tuned = compress(net, data.train.x, keep=4, method="prune", importance="random", eval_inputs=test,
                     finetune=TrainConfig(lr=0.1, epochs=10, seed=1), finetune_data=data)
    row = tuned.table.iloc[0]
    assert row["accuracy_after"] == plain.table.iloc[0]["accuracy_after"]  # the same pruned model before tuning
    with torch.no_grad():
        predictions = tuned.model(data.test.x).argmax(1)
        original = net.eval()(data.test.x).argmax(1)
    assert row["accuracy_finetuned"] == pytest.approx(float((predictions == data.test.y).float().mean()))
    assert row["agreement_finetuned"] == pytest.approx(float((predictions == original).float().mean()))
    assert row["accuracy_finetuned"] > row["accuracy_after"] + 0.02
    with pytest.raises(WidthlabError, match="finetune= needs finetune_data="):
        compress(net, data.train.x, keep=4, finetune=3)
    with pytest.raises(WidthlabError, match="finetune must be a TrainConfig or a number of epochs"):
        compress(net, data.train.x, keep=4, finetune=0, finetune_data=data)


def test_the_table_counts_flops_per_example_before_and_after():
    """A Linear layer's FLOPs are 2 × in × out per example (torch's FlopCounterMode): a 10-128-2 MLP pruned to 32
    hidden units goes from 2·(10·128 + 128·2) to 2·(10·32 + 32·2)."""
    net = create_model("mlp", 1.0, input_dim=10, num_classes=2, seed=0)
    x = torch.randn(64, 10, generator=torch.Generator().manual_seed(0))
    row = compress(net, x, keep=32, method="prune", importance="magnitude").table.iloc[0]
    units = int(row["units_before"])
    assert units == 128
    assert row["flops_before"] == 2 * (10 * units + units * 2)
    assert row["flops_after"] == 2 * (10 * 32 + 32 * 2)
