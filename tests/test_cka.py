"""`widthlab.cka`: minibatch linear CKA, pinned by known answers and by an independent implementation of
Kornblith et al.'s formulas written here (their U-centred Gram matrices, not the HSIC terms the engine sums)."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from widthlab import WidthlabError, cka
from widthlab.cli import main
from widthlab.measure import capture


# The reference: Kornblith et al. 2019's linear CKA on the full sample, in NumPy ----------------------------------------

def centre_gram(gram: np.ndarray, unbiased: bool) -> np.ndarray:
    """Kornblith's `center_gram`: U-centring (unbiased) or H K H."""
    gram = gram.copy()
    n = len(gram)
    if unbiased:
        np.fill_diagonal(gram, 0)
        means = gram.sum(0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
        gram -= means[:, None]
        gram -= means[None, :]
        np.fill_diagonal(gram, 0)
    else:
        means = gram.mean(0)
        means -= means.mean() / 2
        gram -= means[:, None]
        gram -= means[None, :]
    return gram


def reference_cka(x: np.ndarray, y: np.ndarray, debiased: bool = True) -> float:
    kx = centre_gram(x @ x.T, debiased)
    ky = centre_gram(y @ y.T, debiased)
    return float((kx * ky).sum() / (np.linalg.norm(kx) * np.linalg.norm(ky)))


def linear(weight: torch.Tensor) -> nn.Module:
    """A float64 model whose one layer "0" outputs x @ weightᵀ: activations chosen exactly by the test."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(weight)
    model = nn.Sequential(layer)
    model.unit_layers = ["0"]  # the default layers of `cka`, as of `analyze`
    return model


def value(frame: pd.DataFrame, a: str = "0", b: str = "0") -> float:
    return float(frame.loc[(frame["layer_a"] == a) & (frame["layer_b"] == b), "cka"].iloc[0])


def gaussian(n: int, p: int, seed: int) -> torch.Tensor:
    return torch.randn(n, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# Known answers ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("debiased", [True, False])
def test_a_layer_with_itself_is_one_and_the_matrix_is_symmetric(debiased):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 3)).double()
    frame = cka(net, None, gaussian(300, 10, 1), batch_size=100, debiased=debiased)
    assert list(frame.columns) == ["layer_a", "layer_b", "cka", "examples", "rows", "batches", "estimator",
                                   "reduction_a", "reduction_b"]
    assert value(frame, "1", "1") == pytest.approx(1, abs=1e-12) and value(frame, "3", "3") == pytest.approx(1, abs=1e-12)
    assert value(frame, "1", "3") == pytest.approx(value(frame, "3", "1"), abs=1e-14)
    assert 0.3 < value(frame, "1", "3") < 0.99  # related layers, not the same
    assert set(frame["examples"]) == {300} and set(frame["batches"]) == {3}
    assert set(frame["estimator"]) == {"debiased" if debiased else "biased"}
    # the same model passed twice runs the same way as model_b=None
    assert cka(net, net, gaussian(300, 10, 1), batch_size=100, debiased=debiased)["cka"].tolist() == \
        frame["cka"].tolist()


def test_invariant_to_orthogonal_transforms_and_isotropic_scaling_not_to_anisotropic_scaling():
    x = gaussian(200, 12, 2)
    eye = torch.eye(12, dtype=torch.float64)
    q, _ = torch.linalg.qr(gaussian(12, 12, 3))
    base = linear(eye)
    assert value(cka(base, linear(3.7 * q), x, batch_size=50)) == pytest.approx(1, abs=1e-12)
    assert value(cka(base, linear(0.01 * eye), x, batch_size=50)) == pytest.approx(1, abs=1e-12)
    scales = torch.diag(torch.linspace(0.1, 3.0, 12, dtype=torch.float64))
    assert value(cka(base, linear(scales), x, batch_size=50)) < 0.9


def test_independent_gaussian_layers_debiased_near_zero_biased_clearly_positive():
    # 100 units each at n = 256: the biased estimator's CKA of unrelated layers is about p / (p + n) = 0.28
    x = gaussian(256, 200, 4)
    first = linear(torch.eye(200, dtype=torch.float64)[:100])
    second = linear(torch.eye(200, dtype=torch.float64)[100:])
    assert abs(value(cka(first, second, x, batch_size=256))) < 0.02
    biased = value(cka(first, second, x, batch_size=256, debiased=False))
    assert 0.22 < biased < 0.34
    # and with 10 units each it is about 10 / 266 = 0.04: still positive, well outside the debiased one's noise
    small = value(cka(linear(torch.eye(200, dtype=torch.float64)[:10]), linear(torch.eye(200, dtype=torch.float64)[
        100:110]), x, batch_size=256, debiased=False))
    assert 0.02 < small < 0.07


@pytest.mark.parametrize("debiased", [True, False])
def test_one_batch_equals_kornbliths_full_sample_formulas(debiased):
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(8, 40), nn.ReLU(), nn.Linear(40, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x = gaussian(150, 8, 6)
    frame = cka(net, None, x, ["1", "3"], batch_size=150, debiased=debiased)
    acts = {name: rows.numpy() for name, rows in capture(net, x, ["1", "3"]).items()}
    for a in ("1", "3"):
        for b in ("1", "3"):
            assert value(frame, a, b) == pytest.approx(reference_cka(acts[a], acts[b], debiased), abs=1e-12)


@pytest.mark.parametrize("debiased", [True, False])
def test_the_feature_form_equals_the_gram_form(debiased):
    """The feature-space form (no n × n matrix) is the same estimator: equal to the Gram form on one batch (and so
    to Kornblith's formulas) and on many, for layers of different widths and for conv maps pooled over space."""
    torch.manual_seed(11)
    net = nn.Sequential(nn.Linear(8, 40), nn.ReLU(), nn.Linear(40, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x = gaussian(300, 8, 12)
    for batch_size in (300, 64):
        grams = cka(net, None, x, ["1", "3", "4"], batch_size=batch_size, debiased=debiased)
        features = cka(net, None, x, ["1", "3", "4"], batch_size=batch_size, debiased=debiased, form="features")
        np.testing.assert_allclose(features["cka"], grams["cka"], rtol=0, atol=1e-10)
        assert features["batches"].tolist() == grams["batches"].tolist()
    conv = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 5, 3), nn.ReLU()).double()
    images = torch.randn(48, 3, 9, 9, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    other = copy.deepcopy(conv)
    with torch.no_grad():
        other[2].weight.mul_(-0.5)
    both = dict(batch_size=16, debiased=debiased, spatial="mean")
    np.testing.assert_allclose(cka(conv, other, images, form="features", **both)["cka"],
                               cka(conv, other, images, **both)["cka"], rtol=0, atol=1e-10)
    with pytest.raises(WidthlabError, match="form must be one of 'gram', 'features', got 'kernel'"):
        cka(net, None, x, form="kernel")


def test_conv_maps_are_flattened_whole_or_averaged_over_space():
    torch.manual_seed(7)
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 5, 3), nn.ReLU()).double()
    x = torch.randn(40, 3, 9, 9, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    with torch.no_grad():
        maps = {"1": net[:2](x).numpy(), "3": net(x).numpy()}
    flat = cka(net, None, x, batch_size=40)
    pooled = cka(net, None, x, batch_size=40, spatial="mean")
    assert set(flat["reduction_a"]) == {"flatten"} and set(pooled["reduction_a"]) == {"spatial_mean"}
    assert value(flat, "1", "3") == pytest.approx(
        reference_cka(maps["1"].reshape(40, -1), maps["3"].reshape(40, -1)), abs=1e-12)
    assert value(pooled, "1", "3") == pytest.approx(
        reference_cka(maps["1"].mean((2, 3)), maps["3"].mean((2, 3))), abs=1e-12)


def test_many_batches_stay_within_the_estimators_spread_of_the_full_sample_value():
    x = gaussian(2048, 30, 9)
    mix = gaussian(30, 30, 10)
    first, second = linear(torch.eye(30, dtype=torch.float64)[:20]), linear(mix[:20])
    full = value(cka(first, second, x, batch_size=2048))
    batched = value(cka(first, second, x, batch_size=128))
    # the spread: per-batch CKA over the 16 batches, its standard error for their mean
    singles = [value(cka(first, second, x[lo:lo + 128], batch_size=128)) for lo in range(0, 2048, 128)]
    spread = np.std(singles) / np.sqrt(len(singles))
    assert 0.2 < full < 0.9  # a pair neither unrelated nor the same
    assert abs(batched - full) < 3 * spread + 1e-3
    assert batched != pytest.approx(full, abs=1e-9)  # really a different (minibatch) estimate


def test_the_papers_duplicated_network_has_cka_one_with_its_small_network():
    # L: S with every hidden unit duplicated and its outgoing weights halved; the same function, twice the units
    torch.manual_seed(11)
    small = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    large = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3)).double()
    with torch.no_grad():
        large[0].weight.copy_(small[0].weight.repeat(2, 1))
        large[0].bias.copy_(small[0].bias.repeat(2))
        large[2].weight.copy_(small[2].weight.repeat(1, 2) / 2)
        large[2].bias.copy_(small[2].bias)
    x = gaussian(120, 10, 12)
    with torch.no_grad():
        assert torch.allclose(small(x), large(x))
    assert value(cka(small, large, x, batch_size=40), "1", "1") == pytest.approx(1, abs=1e-12)


def test_one_forward_pass_per_model_per_batch_and_both_models_see_the_same_shuffled_batches():
    torch.manual_seed(12)
    net = nn.Sequential(nn.Linear(6, 20), nn.ReLU(), nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 2)).double()
    twin = copy.deepcopy(net)  # another object with the same weights: its layers equal net's on the same examples
    calls = {"net": 0, "twin": 0}
    net.register_forward_hook(lambda *_: calls.__setitem__("net", calls["net"] + 1))
    twin.register_forward_hook(lambda *_: calls.__setitem__("twin", calls["twin"] + 1))
    data = TensorDataset(gaussian(200, 6, 13))
    loader = DataLoader(data, batch_size=40, shuffle=True, generator=torch.Generator().manual_seed(0))
    frame = cka(net, twin, loader, ["1", "3"], ["1", "3"])
    assert calls == {"net": 5 + 1, "twin": 5 + 1}  # 5 batches for all layers, plus one 2-example unit-axis probe
    # a shuffling loader iterated once: were the two models fed different batches, these would fall below 1
    assert value(frame, "1", "1") == pytest.approx(1, abs=1e-12) and value(frame, "3", "3") == pytest.approx(1, abs=1e-12)


# Token layers -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2, n_inner=24)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize("tokens", ["mean", "each"])
def test_padded_token_batches_equal_the_unpadded_sequences(gpt2, tokens):
    lengths = [5, 9, 3, 7, 12, 4, 8, 6]
    ids = torch.randint(0, 50, (len(lengths), 12), generator=torch.Generator().manual_seed(13))
    mask = (torch.arange(12)[None, :] < torch.tensor(lengths)[:, None]).long()
    padded = {"input_ids": ids * mask, "attention_mask": mask}
    frame = cka(gpt2, None, padded, batch_size=len(lengths), tokens=tokens)
    names = list(dict.fromkeys(frame["layer_a"]))
    assert names == ["transformer.h.0.mlp.act", "transformer.h.1.mlp.act"]
    assert set(frame["reduction_a"]) == {"token_mean" if tokens == "mean" else "tokens"}
    # each sequence alone, without padding: its rows, or their mean
    acts = {name: [] for name in names}
    for seq, n in zip(ids, lengths):
        rows = capture(gpt2, seq[None, :n], names)
        for name in names:
            acts[name].append(rows[name].mean(0, keepdim=True) if tokens == "mean" else rows[name])
    acts = {name: torch.cat(parts).double().numpy() for name, parts in acts.items()}
    assert set(frame["rows"]) == {len(lengths) if tokens == "mean" else sum(lengths)}
    expected = reference_cka(acts[names[0]], acts[names[1]])
    assert value(frame, *names) == pytest.approx(expected, abs=1e-5)
    assert abs(value(frame, *names) - 1) > 1e-3  # a real comparison, not two copies of one layer


class Pooled(nn.Module):
    """Token layer "tok" (B, T, 8), then a per-example layer "pool" (B, 8) of the mean token."""

    def __init__(self):
        super().__init__()
        self.embed, self.tok, self.pool = nn.Embedding(20, 8), nn.Sequential(nn.Linear(8, 8), nn.ReLU()), nn.ReLU()

    def forward(self, input_ids):
        return self.pool(self.tok(self.embed(input_ids)).mean(1))


def test_each_token_beside_a_per_example_layer_is_one_line_and_mean_compares_them():
    torch.manual_seed(14)
    ids = torch.randint(0, 20, (8, 6), generator=torch.Generator().manual_seed(14))
    with pytest.raises(WidthlabError, match="tokens='mean'"):
        cka(Pooled(), None, ids, ["tok", "pool"], tokens="each")
    frame = cka(Pooled(), None, ids, ["tok", "pool"])
    assert list(frame["reduction_a"]) == ["token_mean", "token_mean", "example", "example"]


# Bad input and the last batch ---------------------------------------------------------------------------------------

def test_batches_smaller_than_four_are_refused_and_a_short_last_batch_is_dropped_with_a_warning():
    net = linear(torch.eye(5, dtype=torch.float64))
    with pytest.raises(WidthlabError, match="at least 4"):
        cka(net, None, gaussian(100, 5, 15), batch_size=3)
    with pytest.raises(WidthlabError, match="at least 4 examples"):
        cka(net, None, gaussian(3, 5, 15), batch_size=8)
    with pytest.raises(WidthlabError, match="spatial"):
        cka(net, None, gaussian(20, 5, 15), spatial="max")
    x = gaussian(102, 5, 16)
    with pytest.warns(UserWarning, match="last batch"):
        frame = cka(net, linear(gaussian(5, 5, 17)), x, batch_size=50)
    assert set(frame["examples"]) == {100} and set(frame["batches"]) == {2}
    assert value(frame) == value(cka(net, linear(gaussian(5, 5, 17)), x[:100], batch_size=50))


def test_cli_analyze_cka_writes_the_matrix_and_its_heatmap(tmp_path, monkeypatch, capsys):
    (tmp_path / "cka_nets.py").write_text(
        "from torch import nn\n\ndef mlp():\n    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 12), "
        "nn.ReLU(), nn.Linear(12, 2))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.save(torch.randn(60, 10, generator=torch.Generator().manual_seed(0)), tmp_path / "x.pt")
    out = tmp_path / "out"
    assert main(["analyze", "cka_nets:mlp", "--data", str(tmp_path / "x.pt"), "--levels", "2", "--samplings", "1",
                 "--quiet", "--cka", "--out", str(out)]) == 0
    table = pd.read_csv(out / "cka.csv", dtype={"layer_a": str, "layer_b": str})
    assert list(table["layer_a"]) == ["1", "1", "3", "3"] and list(table["layer_b"]) == ["1", "3", "1", "3"]
    assert table["cka"].iloc[0] == pytest.approx(1)
    assert (out / "figures" / "cka.png").read_bytes().startswith(b"\x89PNG")
    assert "cka:" in capsys.readouterr().out
    # too few examples for the estimator: one line, exit 2, before anything is measured or written
    torch.save(torch.randn(3, 10), tmp_path / "x3.pt")
    assert main(["analyze", "cka_nets:mlp", "--data", str(tmp_path / "x3.pt"), "--quiet", "--cka", "--out",
                 str(tmp_path / "few")]) == 2
    assert "--cka needs at least 4 examples" in capsys.readouterr().err
    assert not (tmp_path / "few").exists()
