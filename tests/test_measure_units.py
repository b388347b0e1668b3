"""Per-unit importance (`unit_table`): known answers against Captum and hand computations, masks, bad input."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from widthlab import unit_table
from widthlab.errors import WidthlabError
from widthlab.measure import capture, redundancy


# Tiny float64 models run fastest on one thread (the fixture is in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.relu1 = nn.Conv2d(3, 8, 3), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(8, 8, 3), nn.ReLU()
        self.pool, self.flatten, self.fc = nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)
        for p in self.parameters():  # large enough that one channel can flip predictions
            nn.init.normal_(p, 0, 0.5)
        self.double()

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x)))))))


def cnn_data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(20, 3, 10, 10, generator=g, dtype=torch.float64), torch.randint(0, 4, (20,), generator=g)


def by_hand(model, module, x, y, fill):
    """Per unit c: (changed share, mean score drop, mean cross-entropy change) with channel c of `module`'s output
    set to fill[c], one full forward pass each."""
    clean = model(x)
    rows = []
    for c in range(len(fill)):
        def hook(mod, args, out, c=c):
            out = out.clone()
            out[:, c] = fill[c]
            return out
        handle = module.register_forward_hook(hook)
        try:
            ablated = model(x)
        finally:
            handle.remove()
        drop = (clean.gather(1, y[:, None]) - ablated.gather(1, y[:, None])).mean()
        loss = nn.functional.cross_entropy(ablated, y) - nn.functional.cross_entropy(clean, y)
        rows.append(((ablated.argmax(1) != clean.argmax(1)).double().mean(), drop, loss))
    return torch.tensor(rows, dtype=torch.float64).numpy().T


# Known answers -----------------------------------------------------------------------------------------------------

def test_score_drop_equals_captum_layer_feature_ablation(no_hooks_left):
    captum_attr = pytest.importorskip("captum.attr")
    model, (x, y) = SmallCNN(), cnn_data()
    table = unit_table(model, x, "relu1", labels=y)
    ablation = captum_attr.LayerFeatureAblation(model, model.relu1)
    groups = torch.arange(8).view(1, 8, 1, 1)  # every position of channel c is feature c
    attribution = ablation.attribute(x, layer_baselines=0.0, target=y, layer_mask=groups)  # (N, 8, 8, 8)
    expected = attribution[:, :, 0, 0].mean(0).detach().numpy()
    np.testing.assert_allclose(table["score_drop_zero"], expected, rtol=0, atol=1e-10)
    assert no_hooks_left(model)


def test_zero_and_mean_ablation_match_hand_computation():
    model, (x, y) = SmallCNN(), cnn_data()
    table = unit_table(model, x, "relu1", labels=y)
    with torch.no_grad():
        acts = model.relu1(model.conv1(x))  # (N, 8, 8, 8)
        zero = by_hand(model, model.relu1, x, y, torch.zeros(8, dtype=torch.float64))
        mean = by_hand(model, model.relu1, x, y, acts.mean((0, 2, 3)))
    for kind, (changed, drop, loss) in {"zero": zero, "mean": mean}.items():
        np.testing.assert_allclose(table[f"changed_{kind}"], changed, rtol=0, atol=1e-12)
        np.testing.assert_allclose(table[f"score_drop_{kind}"], drop, rtol=0, atol=1e-10)
        np.testing.assert_allclose(table[f"loss_change_{kind}"], loss, rtol=0, atol=1e-10)
    rows = acts.movedim(1, -1).reshape(-1, 8)  # N·H·W rows
    np.testing.assert_allclose(table["mean"], rows.mean(0), rtol=1e-12)
    np.testing.assert_allclose(table["std"], rows.std(0, correction=0), rtol=1e-10)
    assert table["changed_zero"].max() > 0  # the check is not vacuous


def test_paths_and_stacking_give_identical_tables():
    model, (x, y) = SmallCNN(), cnn_data()
    stacked = unit_table(model, x, "relu1", labels=y, path="batched", ablations_per_eval=16, batch_size=7)
    pd.testing.assert_frame_equal(stacked, unit_table(model, x, "relu1", labels=y, path="full", batch_size=7),
                                  check_exact=True)
    pd.testing.assert_frame_equal(stacked, unit_table(model, x, "relu1", labels=y, ablations_per_eval=1),
                                  rtol=0, atol=1e-12)


def census_model():
    """fc1 (4 → 6) - ReLU - fc2 (6 → 3); after the ReLU: unit 1 twins unit 0, unit 2 is dead, unit 3 is the
    constant 2, unit 4 is relu(x₀)."""
    torch.manual_seed(0)
    fc1, fc2 = nn.Linear(4, 6), nn.Linear(6, 3)
    with torch.no_grad():
        fc1.weight[1], fc1.bias[1] = fc1.weight[0], fc1.bias[0]
        fc1.weight[2], fc1.bias[2] = 0.0, -1.0
        fc1.weight[3], fc1.bias[3] = 0.0, 2.0
        fc1.weight[4], fc1.bias[4] = torch.tensor([1.0, 0, 0, 0]), 0.0
    return nn.Sequential(fc1, nn.ReLU(), fc2).double()


def census_data():
    x = torch.randn(400, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return x, (x[:, 0] > 0).long()  # unit 4 fires for class 1 only


def test_hand_made_units():
    model, (x, y) = census_model(), census_data()
    t = unit_table(model, x, "1", labels=y).set_index("unit")
    assert (t.loc[0, "partner"], t.loc[1, "partner"]) == (1, 0)
    assert t.loc[0, "partner_abs_r"] == pytest.approx(1, abs=1e-12)
    dead, constant = t.loc[2], t.loc[3]
    assert dead["silent"] and dead["flat"] and dead["partner"] == -1 and dead["partner_abs_r"] == 0
    for column in ("changed_zero", "changed_mean", "score_drop_zero", "loss_change_zero", "selectivity"):
        assert dead[column] == 0
    assert constant["flat"] and constant["constant"] and not constant["silent"] and constant["mean"] == 2
    assert constant["changed_mean"] == constant["score_drop_mean"] == constant["loss_change_mean"] == 0
    assert t.loc[4, "selectivity"] == 1
    assert not t.loc[0, "flat"] and t.loc[0, "changed_zero"] > 0


def test_census_columns_agree_with_the_layer_numbers():
    model, (x, y) = census_model(), census_data()
    t = unit_table(model, x, "1", labels=y)
    numbers = redundancy(capture(model, x, "1")["1"])
    assert t["silent"].mean() == numbers["silent_fraction"]
    assert t["constant"].mean() == numbers["constant_fraction"]
    assert t["similar"].mean() == pytest.approx(numbers["similarity"])


def test_without_labels_no_label_columns():
    model, (x, _) = census_model(), census_data()
    columns = set(unit_table(model, x, "1").columns)
    assert {"changed_zero", "changed_mean", "partner"} <= columns
    assert not columns & {"score_drop_zero", "loss_change_mean", "selectivity"}


# Attention masks ----------------------------------------------------------------------------------------------------

class TinyEncoder(nn.Module):
    """embedding - fc - act per token, then a masked mean over real tokens (B, 3), or per-token scores (B, T, 11)."""

    def __init__(self, tokens=False):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.fc, self.act = nn.Embedding(11, 6), nn.Linear(6, 6), nn.ReLU()
        self.head = nn.Linear(6, 11 if tokens else 3)
        self.tokens = tokens
        self.double()

    def forward(self, input_ids, attention_mask):
        h = self.act(self.fc(self.emb(input_ids)))  # (B, T, C)
        if self.tokens:
            return {"logits": self.head(h)}
        m = attention_mask[..., None].to(h.dtype)
        return {"logits": self.head((h * m).sum(1) / m.sum(1))}


def sequences():
    g = torch.Generator().manual_seed(3)
    return [torch.randint(1, 11, (length,), generator=g) for length in (2, 5, 3, 6, 4, 2, 5)]


def padded(seqs):
    ids = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.int64)
    attention = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], attention[i, :len(s)] = s, 1
    return {"input_ids": ids, "attention_mask": attention}


def one_at_a_time(seqs):
    items = [{"input_ids": s, "attention_mask": torch.ones_like(s)} for s in seqs]
    return torch.utils.data.DataLoader(items, batch_size=1)


@pytest.mark.parametrize("tokens", [False, True])
def test_padded_rows_are_excluded(tokens):
    model, seqs = TinyEncoder(tokens), sequences()
    labels = None if tokens else torch.tensor([0, 1, 2, 1, 0, 2, 1])
    batched = unit_table(model, padded(seqs), "act", labels=labels, batch_size=3)
    single = unit_table(model, one_at_a_time(seqs), "act", labels=labels)
    pd.testing.assert_frame_equal(batched, single, rtol=0, atol=1e-10)
    assert batched["changed_zero"].max() > 0
    # Padding would change the statistics if it were counted.
    unmasked = unit_table(model, padded(seqs), "act", labels=labels, batch_size=3, mask=None)
    assert not np.allclose(unmasked["mean"], batched["mean"])


def test_token_labels_average_over_real_tokens():
    model, inputs = TinyEncoder(tokens=True), padded(sequences())
    labels = torch.randint(0, 11, inputs["input_ids"].shape, generator=torch.Generator().manual_seed(9))
    t = unit_table(model, inputs, "act", labels=labels, batch_size=3)
    real = inputs["attention_mask"].bool()
    y = labels[real]  # (real tokens,)
    with torch.no_grad():
        clean = model(**inputs)["logits"][real]
        acts = model.act(model.fc(model.emb(inputs["input_ids"])))[real]  # (real tokens, C)
        for c in range(6):
            handle = model.act.register_forward_hook(
                lambda mod, args, out, c=c: out.index_fill(-1, torch.tensor([c]), 0))
            ablated = model(**inputs)["logits"][real]
            handle.remove()
            drop = (clean.gather(1, y[:, None]) - ablated.gather(1, y[:, None])).mean()
            assert t.loc[c, "score_drop_zero"] == pytest.approx(float(drop), abs=1e-12)
            changed = (clean.argmax(1) != ablated.argmax(1)).double().mean()
            assert t.loc[c, "changed_zero"] == pytest.approx(float(changed))
    means = torch.stack([acts[y == k].mean(0) for k in y.unique()])  # (classes present, C)
    top = means.max(0).values
    rest = (means.sum(0) - top) / (len(means) - 1)
    np.testing.assert_allclose(t["selectivity"], (top - rest) / (top + rest), rtol=0, atol=1e-12)


# Bad input and edge cases -------------------------------------------------------------------------------------------

def test_unknown_layer_names_the_valid_ones(no_hooks_left):
    model, (x, _) = census_model(), census_data()
    with pytest.raises(WidthlabError, match=r"unknown layer.*'nope'.*valid module names: 0, 1, 2"):
        unit_table(model, x, "nope")
    assert no_hooks_left(model)


def test_a_layer_of_one_unit():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 1), nn.ReLU(), nn.Linear(1, 2)).double()
    x = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    y = torch.randint(0, 2, (50,), generator=torch.Generator().manual_seed(5))
    t = unit_table(model, x, "1", labels=y)
    assert len(t) == 1 and t.loc[0, "partner"] == -1 and t.loc[0, "partner_abs_r"] == 0 and t.loc[0, "similar"] == 0
    with torch.no_grad():
        changed, drop, _ = by_hand(model, model[1], x, y, torch.zeros(1, dtype=torch.float64))
    assert t.loc[0, "changed_zero"] == pytest.approx(changed[0], abs=1e-12)
    assert t.loc[0, "score_drop_zero"] == pytest.approx(drop[0], abs=1e-10)
