"""Class selectivity (Morcos et al. 2018) in `analyze` and `unit_table`: known answers, train/test k*, conv and token
rows, agreement of the two, and bad input."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from widthlab import analyze, create_model, unit_table
from widthlab.errors import WidthlabError
from widthlab.vocab import SELECTIVITY_METRICS

QUICK = {"perturbations": (), "null_rows": None, "samplings": 1}


# Tiny float64 models run fastest on one thread (the fixture is in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


class Chosen(nn.Module):
    """The layer ``units`` is its input itself (or its ReLU): activations chosen by hand, then a readout."""

    def __init__(self, units: int, relu: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.units = nn.ReLU() if relu else nn.Identity()
        self.head = nn.Linear(units, 3)
        self.double()

    def forward(self, x):
        return self.head(self.units(x))


def layer_values(frame, layer="units"):
    rows = frame[(frame.layer == layer) & frame.metric.isin(SELECTIVITY_METRICS)]
    assert (rows.perturbation == "").all() and rows.level.isna().all() and (rows.sampling == 0).all()
    return dict(zip(rows.metric, rows.value))


def hand_made():
    """Two classes, four rows each; units: one-class, equal means, μ = (3, 1), flat, silent (never > 0)."""
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    one_class = [1, 1, 1, 1, 0, 0, 0, 0]
    equal = [1, 3, 1, 3, 3, 1, 3, 1]
    three_one = [2, 4, 2, 4, 0, 2, 0, 2]
    flat = [1 + 1e-9] * 4 + [1] * 4  # std ~5e-10: flat, though its raw index would be ~2.5e-10
    silent = [-1, -1, -1, -1, -3, -3, -3, -3]  # raw index (−1 + 3)/(−1 − 3) = −0.5
    x = torch.tensor([one_class, equal, three_one, flat, silent], dtype=torch.float64).T  # (8, 5)
    return x, y


def test_hand_made_two_classes():
    x, y = hand_made()
    expected = np.array([1.0, 0.0, 0.5, 0.0, 0.0])
    table = unit_table(Chosen(5), x, "units", labels=y)
    np.testing.assert_array_equal(table["selectivity"], expected)
    assert table.loc[3, "flat"] and table.loc[4, "silent"]
    numbers = layer_values(analyze(Chosen(5), x, layers=["units"], labels=y, batch_size=3, **QUICK))
    assert set(numbers) == {"selectivity", "selectivity_std", "unselective_fraction"}
    assert numbers["selectivity"] == expected.mean() == pytest.approx(0.3, abs=1e-15)
    assert numbers["selectivity_std"] == expected.std()
    assert numbers["unselective_fraction"] == 3 / 5


def test_relu_unit_that_fires_for_one_class_scores_one():
    x, y = hand_made()
    x = torch.stack([x[:, 0] * 2 - 1, -x[:, 2]], 1)  # after ReLU: 1 on class 0 / 0 on class 1, and silent
    numbers = layer_values(analyze(Chosen(2, relu=True), x, layers=["units"], labels=y, **QUICK))
    assert numbers == {"selectivity": 0.5, "selectivity_std": 0.5, "unselective_fraction": 0.5}


def split(means, per_class=2):
    """Rows with per-class constant unit values: means (K, C) -> x (K·per_class, C), y."""
    means = torch.tensor(means, dtype=torch.float64)
    return means.repeat_interleave(per_class, 0), torch.arange(len(means)).repeat_interleave(per_class)


def test_train_k_star_is_used_on_the_test_split():
    # unit 0: train μ = (3, 1, 2), k* = 0; test μ = (1, 3, 2); unit 1: train (0, 4, 0), k* = 1; test (2, 2, 2).
    x_train, y_train = split([[3, 0], [1, 4], [2, 0]])
    x_test, y_test = split([[1, 2], [3, 2], [2, 2.0 + 1e-3]], per_class=3)
    x_test[0, 1] += 0.5  # unit 1 is not flat on the test split ...
    x_test[1, 1] -= 0.5  # ... and keeps its class means (2, 2, 2 + 1e-3)
    train_0, test_0 = (3 - 1.5) / (3 + 1.5), (1 - 2.5) / (1 + 2.5)  # 1/3 and −3/7: the train k* is not the test's
    test_1 = (2 - (2 + 2 + 1e-3) / 2) / (2 + (2 + 2 + 1e-3) / 2)
    frame = analyze(Chosen(2), x_test, layers=["units"], labels=y_test, train_inputs=x_train,
                    train_labels=y_train, **QUICK)
    numbers = layer_values(frame)
    assert set(numbers) == set(SELECTIVITY_METRICS)
    assert numbers["selectivity"] == pytest.approx((test_0 + test_1) / 2, abs=1e-15)
    assert numbers["selectivity_train"] == pytest.approx((train_0 + 1) / 2, abs=1e-15)
    assert numbers["selectivity_gen"] == pytest.approx(((train_0 - test_0) ** 2 + (1 - test_1) ** 2) / 2, abs=1e-15)
    assert numbers["unselective_fraction"] == 1

    table = unit_table(Chosen(2), x_test, "units", labels=y_test, train_inputs=(x_train, y_train))
    np.testing.assert_allclose(table["selectivity"], [test_0, test_1], rtol=0, atol=1e-15)
    np.testing.assert_allclose(table["selectivity_train"], [train_0, 1], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(table["selectivity_gen"],
                                  (table["selectivity_train"] - table["selectivity"]) ** 2)
    assert table["selectivity"].mean() == pytest.approx(numbers["selectivity"], abs=1e-15)

    # The train split's own labels ((x, y)) give the same rows as train_labels=.
    own = analyze(Chosen(2), x_test, layers=["units"], labels=y_test, train_inputs=(x_train, y_train), **QUICK)
    assert layer_values(own) == numbers
    # Without a training split k* comes from the measured inputs: unit 0 prefers class 1 there.
    alone = unit_table(Chosen(2), x_test, "units", labels=y_test)
    assert alone.loc[0, "selectivity"] == pytest.approx((3 - 1.5) / (3 + 1.5), abs=1e-15)
    assert "selectivity_train" not in alone


def test_a_single_unit_gen_is_the_squared_gap_exactly():
    x_train, y_train = split([[3], [1]])
    x_test, y_test = split([[1], [3]])
    numbers = layer_values(analyze(Chosen(1), x_test, layers=["units"], labels=y_test, train_inputs=x_train,
                                   train_labels=y_train, **QUICK))
    assert numbers["selectivity_train"] == 0.5 and numbers["selectivity"] == -0.5
    assert numbers["selectivity_gen"] == (numbers["selectivity_train"] - numbers["selectivity"]) ** 2 == 1


# Conv layers and token rows -------------------------------------------------------------------------------------

class Conv(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.relu = nn.Conv2d(3, 5, 3), nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4))
        self.double()

    def forward(self, x):
        return self.head(self.relu(self.conv(x)))


def by_hand(acts, y, best=None):
    """(C,) selectivity of (N, C, H, W) activations, every position taking its example's label; k* = `best`."""
    a = acts.detach().numpy()
    mu = np.stack([a[y == k].mean((0, 2, 3)) for k in np.unique(y)])  # (K, C)
    best = mu.argmax(0) if best is None else best
    top = mu[best, np.arange(mu.shape[1])]
    rest = (mu.sum(0) - top) / (len(mu) - 1)
    return (top - rest) / (top + rest), best


def test_conv_rows_inherit_their_example_label():
    model, g = Conv(), torch.Generator().manual_seed(1)
    x, x_train = torch.randn(14, 3, 7, 7, generator=g, dtype=torch.float64), torch.randn(
        18, 3, 7, 7, generator=g, dtype=torch.float64)
    y, y_train = torch.randint(0, 4, (14,), generator=g), torch.randint(0, 4, (18,), generator=g)
    with torch.no_grad():
        acts, train_acts = model.relu(model.conv(x)), model.relu(model.conv(x_train))  # (N, 5, 5, 5)
    assert ((acts > 0).double().mean((0, 2, 3)) > 0.01).all()  # no silent unit: nothing is zeroed
    own, _ = by_hand(acts, y.numpy())
    train, best = by_hand(train_acts, y_train.numpy())
    test, _ = by_hand(acts, y.numpy(), best)

    plain = layer_values(analyze(model, x, layers=["relu"], labels=y, batch_size=4, **QUICK), "relu")
    assert plain["selectivity"] == pytest.approx(own.mean(), abs=1e-12)
    assert plain["selectivity_std"] == pytest.approx(own.std(), abs=1e-12)
    split_ = layer_values(analyze(model, (x, y), layers=["relu"], train_inputs=TensorDataset(x_train, y_train),
                                  batch_size=4, **QUICK), "relu")
    assert split_["selectivity"] == pytest.approx(test.mean(), abs=1e-12)
    assert split_["selectivity_train"] == pytest.approx(train.mean(), abs=1e-12)
    assert split_["selectivity_gen"] == pytest.approx(((train - test) ** 2).mean(), abs=1e-12)
    assert split_["unselective_fraction"] == (test < 0.05).mean()


class Tokens(nn.Module):
    """embedding - fc - act per token, then a masked mean over real tokens: (B, 3) scores."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.fc, self.act, self.head = nn.Embedding(11, 6), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3)
        self.double()

    def forward(self, input_ids, attention_mask):
        h = self.act(self.fc(self.emb(input_ids)))  # (B, T, C)
        m = attention_mask[..., None].to(h.dtype)
        return {"logits": self.head((h * m).sum(1) / m.sum(1))}


def test_token_rows_take_their_example_label_and_padding_is_left_out():
    g = torch.Generator().manual_seed(3)
    lengths = (2, 5, 3, 6, 4, 2, 5, 3)
    ids = torch.zeros(len(lengths), 6, dtype=torch.int64)
    attention = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n], attention[i, :n] = torch.randint(1, 11, (n,), generator=g), 1
    y = torch.tensor([0, 1, 2, 1, 0, 2, 1, 0])
    model = Tokens()
    with torch.no_grad():
        h = model.act(model.fc(model.emb(ids)))  # (B, T, C)
    real = attention.bool()
    rows, row_y = h[real].numpy(), y.repeat_interleave(real.sum(1)).numpy()
    mu = np.stack([rows[row_y == k].mean(0) for k in range(3)])
    top = mu.max(0)
    rest = (mu.sum(0) - top) / 2
    quiet = (rows > 0).mean(0) < 0.01
    expected = np.where(quiet, 0.0, (top - rest) / (top + rest))
    frame = analyze(model, {"input_ids": ids, "attention_mask": attention, "labels": y}, layers=["act"],
                    batch_size=3, **QUICK)
    assert layer_values(frame, "act")["selectivity"] == pytest.approx(expected.mean(), abs=1e-12)


# analyze and unit_table agree; every pass gives the same rows -----------------------------------------------------

def mlp_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).long()


def test_analyze_is_the_mean_of_unit_table():
    model = create_model("mlp", 0.25, init="normal", sigma=0.3, input_dim=10, seed=0)
    (x, y), (x_train, y_train) = mlp_data(60, 1), mlp_data(90, 2)
    for train in (None, (x_train, y_train)):
        frame = analyze(model, TensorDataset(x, y), levels=[0, 0.5, 1], samplings=1, null_rows=None,
                        train_inputs=train, batch_size=16)
        numbers = layer_values(frame, "relu1")
        table = unit_table(model, x, "relu1", labels=y, train_inputs=train, batch_size=16)
        assert numbers["selectivity"] == pytest.approx(table["selectivity"].mean(), abs=1e-12)
        assert numbers["selectivity_std"] == pytest.approx(table["selectivity"].std(ddof=0), abs=1e-12)
        assert numbers["unselective_fraction"] == (table["selectivity"] < 0.05).mean()
        if train is not None:
            assert numbers["selectivity_train"] == pytest.approx(table["selectivity_train"].mean(), abs=1e-12)
            assert numbers["selectivity_gen"] == pytest.approx(table["selectivity_gen"].mean(), abs=1e-12)
        assert not np.isnan(table["selectivity"]).any()


def test_every_pass_gives_the_same_rows():
    x, y = hand_made()
    x_train, y_train = x.flip(0), y.flip(0)
    common = {"layers": ["units"], "labels": y, "train_inputs": x_train, "train_labels": y_train, "null_rows": None,
              "samplings": 2, "levels": [0, 0.5, 1], "batch_size": 3}
    reference = layer_values(analyze(Chosen(5), x, perturbations=(), **common))
    for options in ({"perturbations": ("zero",)},  # the curves' clean pass streams the sums
                    {"perturbations": ("mean",)},  # a pass of clean statistics before the sweep does
                    {"perturbations": ("zero",), "max_rows": 3}):  # the census still sees every row
        assert layer_values(analyze(Chosen(5), x, **options, **common)) == reference


# Without labels ---------------------------------------------------------------------------------------------------

def test_no_labels_no_rows_and_no_columns():
    x, _ = hand_made()
    frame = analyze(Chosen(5), x, layers=["units"], **QUICK)
    assert not frame.metric.isin(SELECTIVITY_METRICS).any()
    # A training split without labels on the measured inputs would be silently unused: refused instead.
    with pytest.raises(WidthlabError, match="measured inputs have no labels"):
        analyze(Chosen(5), x, layers=["units"], train_inputs=x, **QUICK)
    assert "selectivity" not in unit_table(Chosen(5), x, "units")


def test_a_training_split_without_labels_is_an_error():
    x, y = hand_made()
    with pytest.raises(WidthlabError, match="train_labels are missing"):
        analyze(Chosen(5), x, layers=["units"], labels=y, train_inputs=x, **QUICK)
    with pytest.raises(WidthlabError, match="train_labels are missing"):
        unit_table(Chosen(5), x, "units", labels=y, train_inputs=x)
    with pytest.raises(WidthlabError, match="train_labels has 3 entries"):
        analyze(Chosen(5), x, layers=["units"], labels=y, train_inputs=x, train_labels=y[:3], **QUICK)
