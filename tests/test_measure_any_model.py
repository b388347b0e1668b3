"""Any model, measured right: positional/keyword inputs, attention masks, model outputs, token scores, the unit
axis by rule, default layers of transformers, weight perturbations through GELU and HF Conv1D."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from widthlab.errors import WidthlabError
from widthlab.measure import analyze, capture, default_layers, perturbation_curve
from widthlab.measure.inputs import batches, to_batch

LEVELS = [0.0, 0.5, 1.0]


def gen(seed):
    return torch.Generator().manual_seed(seed)


# Inputs -------------------------------------------------------------------------------------------------------------

class TwoInputs(nn.Module):
    """scores = fc(relu(a) + relu(b))."""

    def __init__(self):
        super().__init__()
        self.fa, self.fb, self.act, self.out = nn.Linear(4, 6), nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2)

    def forward(self, a, b=None):
        return self.out(self.act(self.fa(a) + self.fb(b)))


def test_the_input_rule_for_tensors_tuples_and_mappings():
    a, b, y = torch.randn(5, 4), torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    assert to_batch(a).args == (a,) and to_batch(a).labels is None
    pair = to_batch((a, y))  # a labelled data set: the last 1-D integer tensor is the labels
    assert len(pair.args) == 1 and torch.equal(pair.labels, y)
    both = to_batch((a, b))  # two inputs, no labels
    assert len(both.args) == 2 and both.labels is None
    keyed = to_batch({"a": a, "b": b, "labels": y})
    assert set(keyed.kwargs) == {"a", "b"} and torch.equal(keyed.labels, y)
    with pytest.raises(WidthlabError, match="same first dimension"):
        to_batch((a, b[:3]))
    with pytest.raises(WidthlabError, match="scalar"):
        list(batches(nn.Linear(1, 1), torch.tensor(1.0), 4))
    with pytest.raises(WidthlabError, match="mapping inputs must map names to tensors"):
        to_batch({"a": a, "text": ["x"] * 5})


def test_positional_keyword_and_loader_inputs_measure_the_same_numbers():
    torch.manual_seed(0)
    model = TwoInputs().double()
    a, b = torch.randn(40, 4, generator=gen(1)).double(), torch.randn(40, 3, generator=gen(2)).double()
    y = torch.randint(0, 2, (40,), generator=gen(3))
    options = dict(levels=LEVELS, samplings=2, null_rows=None)
    positional = analyze(model, (a, b, y), **options)
    keyword = analyze(model, {"a": a, "b": b, "labels": y}, **options)
    loader = analyze(model, DataLoader([{"a": a[i], "b": b[i], "labels": y[i]} for i in range(40)], batch_size=7),
                     **options)
    pd.testing.assert_frame_equal(positional, keyword)
    pd.testing.assert_frame_equal(positional, loader, check_exact=False, rtol=1e-12)
    assert "accuracy" in set(positional.metric)  # labels were found in each form
    # The activations are those of model(a, b): the second input is not dropped.
    expected = model.act(model.fa(a) + model.fb(b))
    assert torch.allclose(capture(model, (a, b), ["act"])["act"], expected)


# Outputs ------------------------------------------------------------------------------------------------------------

class Outputs(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind, self.fc, self.act, self.out = kind, nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 3)

    def forward(self, x):
        scores = self.out(self.act(self.fc(x)))
        if self.kind == "dict":
            return {"loss": scores.sum(), "logits": scores}
        if self.kind == "tuple":
            return (scores, self.act.weight if hasattr(self.act, "weight") else None)
        if self.kind == "named":
            return {"aux": scores}
        return scores


def test_scores_are_picked_from_dicts_tuples_and_by_output():
    torch.manual_seed(0)
    x = torch.randn(30, 4, generator=gen(4))
    plain = Outputs("tensor")
    reference = perturbation_curve(plain, x, "act", levels=LEVELS, samplings=2).unchanged
    for kind, output in [("dict", None), ("tuple", None), ("named", "aux"), ("named", lambda out: out["aux"])]:
        model = Outputs(kind)
        model.load_state_dict(plain.state_dict())
        curve = perturbation_curve(model, x, "act", levels=LEVELS, samplings=2, output=output)
        np.testing.assert_array_equal(curve.unchanged, reference)
    with pytest.raises(WidthlabError, match="output='nope'.*has aux"):
        perturbation_curve(Outputs("named"), x, "act", levels=LEVELS, output="nope")
    with pytest.raises(WidthlabError, match="name its scores with output="):
        perturbation_curve(Outputs("named"), x, "act", levels=LEVELS)


# Token rows, masks and token scores ---------------------------------------------------------------------------------

class TinyLM(nn.Module):
    """A causal token model: embedding, masked mean over the prefix (no look-ahead), Linear, GELU, vocabulary scores
    (N, T, V). Padded positions never influence real ones."""

    def __init__(self, vocab=11, dim=8, hidden=12):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.fc, self.act, self.head = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, vocab)

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids)  # (N, T, D)
        weights = torch.ones(input_ids.shape, dtype=h.dtype) if attention_mask is None else attention_mask.to(h.dtype)
        prefix = torch.cumsum(h * weights[..., None], 1) / torch.cumsum(weights, 1).clamp(min=1)[..., None]
        return self.head(self.act(self.fc(prefix)))


def _sequences():
    lengths = [5, 3, 7, 2, 6, 4]
    g = gen(7)
    return [torch.randint(0, 11, (n,), generator=g) for n in lengths]


def test_a_padded_batch_gives_exactly_the_numbers_of_its_sequences_run_one_at_a_time():
    torch.manual_seed(0)
    model = TinyLM().double()
    seqs = _sequences()
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = s, 1
    ids[mask == 0] = 3  # padding with a real token id: only the mask says it is padding
    options = dict(perturbations=("zero", "mean", "act_noise"), levels={"zero": LEVELS, "mean": LEVELS,
                                                                          "act_noise": [0.0, 1.0]},
                   samplings=2, null_rows=None, layers=["act", "fc"])
    padded = analyze(model, {"input_ids": ids, "attention_mask": mask}, **options)
    singles = DataLoader([{"input_ids": s, "attention_mask": torch.ones_like(s)} for s in seqs], batch_size=1)
    one_by_one = analyze(model, singles, **options)
    pd.testing.assert_frame_equal(padded, one_by_one, check_exact=False, rtol=1e-10, atol=1e-12)
    n_units = padded[(padded.metric == "n_units")].set_index("layer").value
    assert n_units.to_dict() == {"act": 12, "fc": 12}  # the last axis, not the 7 token positions
    # Rows are the 27 real tokens, not 6 × 7 positions.
    assert capture(model, {"input_ids": ids, "attention_mask": mask}, ["act"])["act"].shape == (27, 12)
    # Without the mask the padded positions would enter: the numbers differ.
    unmasked = analyze(model, {"input_ids": ids, "attention_mask": mask}, mask=None, **options)
    assert not np.allclose(unmasked.value, padded.value, equal_nan=True)


def test_token_scores_compare_predictions_at_real_tokens():
    torch.manual_seed(1)
    model = TinyLM().double()
    seqs = _sequences()
    ids = torch.zeros(len(seqs), 7, dtype=torch.long)
    mask = torch.zeros(len(seqs), 7, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = s, 1
    curve = perturbation_curve(model, {"input_ids": ids, "attention_mask": mask}, "act", levels=[0.0, 1.0],
                               samplings=1)
    # Every unit ablated: the scores are the head's bias everywhere, so a real token is unchanged exactly when its
    # clean prediction is argmax(bias).
    with torch.no_grad():
        clean = model(ids, mask).argmax(-1)[mask.bool()]
    expected = float((clean == model.head.bias.argmax()).double().mean())
    assert curve.unchanged[0].tolist() == [1.0, expected]
    labels = torch.where(mask.bool(), ids, 0)
    with_labels = perturbation_curve(model, {"input_ids": ids, "attention_mask": mask}, "act", levels=[0.0, 1.0],
                                     samplings=1, labels=labels)
    assert with_labels.accuracy[0, 0] == pytest.approx(float((clean == ids[mask.bool()]).double().mean()))
    with pytest.raises(WidthlabError, match="ignore index"):
        perturbation_curve(model, {"input_ids": ids, "attention_mask": mask}, "act", levels=[0.0, 1.0],
                           labels=torch.where(mask.bool(), ids, -100))


def test_bad_masks_are_clear_errors():
    model = TinyLM()
    ids = torch.randint(0, 11, (4, 5))
    with pytest.raises(WidthlabError, match="mask='pad'.*input_ids"):
        capture(model, {"input_ids": ids}, ["act"], mask="pad")
    with pytest.raises(WidthlabError, match=r"\(batch, tokens\) of 0/1"):
        capture(model, {"input_ids": ids, "attention_mask": torch.rand(4, 5)}, ["act"])


# The unit axis ------------------------------------------------------------------------------------------------------

class Permute(nn.Module):
    def forward(self, x):
        return x.transpose(1, 2)


def test_the_unit_axis_follows_the_producing_module():
    torch.manual_seed(0)
    tokens = nn.Sequential(nn.Linear(6, 10), nn.GELU(), nn.Dropout(0.1), nn.LayerNorm(10), nn.Linear(10, 3))
    x = torch.randn(4, 7, 6)  # (N, T, C): transformer layout
    acts = capture(tokens, x, ["1", "2", "3"])
    assert {name: tuple(a.shape) for name, a in acts.items()} == {"1": (28, 10), "2": (28, 10), "3": (28, 10)}
    conv = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.Conv2d(5, 4, 3))
    acts = capture(conv, torch.randn(2, 3, 9, 9), ["1", "2"])
    assert acts["2"].shape == (2 * 7 * 7, 5)
    # An explicit axis overrides; a layout no module decides is an error naming its shape.
    odd = nn.Sequential(nn.Linear(6, 10), Permute(), nn.Identity())
    with pytest.raises(WidthlabError, match=r"cannot tell which axis.*\(N, 10, 7\).*unit_axis"):
        capture(odd, x, ["2"])
    assert capture(odd, x, ["2"], unit_axis=1)["2"].shape == (28, 10)
    with pytest.raises(WidthlabError, match="has no unit axis 3"):
        capture(odd, x, ["2"], unit_axis=3)


def test_a_container_takes_the_axis_of_the_module_that_produced_its_output():
    class Block(nn.Module):  # a transformer MLP block with a residual: (N, T, C) -> (N, T, C)
        def __init__(self):
            super().__init__()
            self.norm, self.fc1, self.act, self.fc2 = nn.LayerNorm(6), nn.Linear(6, 12), nn.GELU(), nn.Linear(12, 6)

        def forward(self, x):
            return x + self.fc2(self.act(self.fc1(self.norm(x))))

    model = nn.Sequential(Block(), Block(), nn.Linear(6, 3))
    x = torch.randn(3, 5, 6)
    assert capture(model, x, ["0"])["0"].shape == (15, 6)
    assert default_layers(model, x) == ["0.act", "1.act"]
    assert capture(model, x, ["0.act"])["0.act"].shape == (15, 12)


# HF transformers ----------------------------------------------------------------------------------------------------

transformers = pytest.importorskip("transformers")


def tiny_gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2, n_inner=24)
    return transformers.GPT2LMHeadModel(config).eval()


def tiny_bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=24, max_position_embeddings=16, num_labels=3)
    return transformers.BertForSequenceClassification(config).eval()


def encoding(n=6, t=8, seed=0):
    ids = torch.randint(1, 50, (n, t), generator=gen(seed))
    mask = torch.ones(n, t, dtype=torch.long)
    for i in range(n):
        mask[i, t - (i % 4):] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("build, layers", [
    (tiny_gpt2, ["transformer.h.0.mlp.act", "transformer.h.1.mlp.act"]),
    (tiny_bert, ["bert.encoder.layer.0.intermediate.intermediate_act_fn",
                 "bert.encoder.layer.1.intermediate.intermediate_act_fn"]),
])
def test_hf_models_analyse_with_default_layers_on_their_hidden_width(build, layers):
    model = build()
    enc = encoding()
    assert default_layers(model, enc) == layers
    frame = analyze(model, enc, perturbations=("zero", "weight_noise"), levels={"zero": LEVELS,
                                                                                 "weight_noise": [0.0, 1.0]},
                    samplings=1, null_rows=None)
    assert frame[frame.metric == "n_units"].value.tolist() == [24, 24]  # n_inner / intermediate_size
    assert set(frame.layer) == {*layers, "all"}
    auc = frame[(frame.metric == "auc")]
    assert auc.value.between(0, 1).all() and len(auc) == 6
    # The rows are the real tokens only.
    assert capture(model, enc, [layers[0]])[layers[0]].shape == (int(enc["attention_mask"].sum()), 24)


def test_weight_perturbations_reach_hf_conv1d_and_linear_through_gelu():
    from widthlab.measure.graph import probe

    gpt2, bert = tiny_gpt2(), tiny_bert()
    enc = encoding()
    from widthlab.measure.inputs import first_batch
    assert probe(gpt2, first_batch(gpt2, enc, 2), ["transformer.h.0.mlp.act"],
                 ["transformer.h.0.mlp.act"]).chains["transformer.h.0.mlp.act"] == [
        "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.act"]
    name = "bert.encoder.layer.0.intermediate.intermediate_act_fn"
    assert probe(bert, first_batch(bert, enc, 2), [name], [name]).chains[name] == [
        "bert.encoder.layer.0.intermediate.dense", name]
    # Knocking out every weight of GPT-2's c_fc equals zeroing its weight by hand.
    curve = perturbation_curve(gpt2, enc, "transformer.h.0.mlp.act", perturbation="weight_knockout",
                               levels=[0.0, 1.0], samplings=1)
    fc = gpt2.transformer.h[0].mlp.c_fc
    with torch.no_grad():
        clean = gpt2(**enc).logits.argmax(-1)
        saved = fc.weight.clone()
        fc.weight.zero_()
        knocked = gpt2(**enc).logits.argmax(-1)
        fc.weight.copy_(saved)
    real = enc["attention_mask"].bool()
    assert curve.unchanged[0, 1] == pytest.approx(float((clean == knocked)[real].double().mean()))


def test_a_labelled_hf_classification_dataset():
    model = tiny_bert()
    enc = encoding(n=12)
    enc["labels"] = torch.randint(0, 3, (12,), generator=gen(9))
    loader = DataLoader([{k: v[i] for k, v in enc.items()} for i in range(12)], batch_size=5)
    frame = analyze(model, loader, levels=LEVELS, samplings=1, null_rows=None)
    with torch.no_grad():
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    accuracy = frame[(frame.metric == "accuracy") & (frame.level == 0.0) & (frame.layer == "all")].value.item()
    assert accuracy == pytest.approx(float((logits.argmax(1) == enc["labels"]).double().mean()))


def test_tensor_dataset_of_ids_and_mask_passes_the_mask_positionally():
    model = tiny_bert()
    enc = encoding()
    data = TensorDataset(enc["input_ids"], enc["attention_mask"])  # BERT's second positional input is the mask
    name = "bert.encoder.layer.0.intermediate.intermediate_act_fn"
    by_position = capture(model, data, [name], mask=1)[name]
    by_keyword = capture(model, enc, [name])[name]
    assert torch.allclose(by_position, by_keyword, atol=1e-6)
