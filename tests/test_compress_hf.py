"""`widthlab.compress` on HF transformers: the MLP intermediate units of GPT-2 (Conv1D) and BERT (Linear), with
known answers (a GPT-2 every intermediate unit of which was duplicated merges back to the small one), padded
tokens left out of the regression, and a save_pretrained/from_pretrained round trip. Tiny random models, offline."""

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from widthlab.compress import compress  # noqa: E402
from widthlab.compress import hf  # noqa: E402
from widthlab.errors import WidthlabError  # noqa: E402
from widthlab.measure.inputs import batches  # noqa: E402

transformers.logging.set_verbosity_error()


def gpt2(n_inner: int, seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_inner=n_inner, vocab_size=100,
                                     n_positions=64, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).to(dtype).eval()


def bert(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=100, max_position_embeddings=64, num_labels=3)
    return transformers.BertForSequenceClassification(config).eval()


def tokens(n: int = 24, length: int = 16, seed: int = 1, pad_id: int = 0):
    """input_ids and attention_mask with right padding: example i has 4 + i % 12 real tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (n, length), generator=g)
    real = torch.tensor([4 + i % (length - 3) for i in range(n)])
    mask = (torch.arange(length)[None] < real[:, None]).long()
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad_id))
    return {"input_ids": ids, "attention_mask": mask}


def duplicated(small):
    """`small` (a GPT-2) with every intermediate unit duplicated: c_fc's columns twice (the twins interleaved by a
    permutation), c_proj's rows halved twice, so the large model computes what the small one does."""
    inner = small.config.n_inner
    large = gpt2(2 * inner, dtype=small.dtype)
    large.load_state_dict({k: v for k, v in small.state_dict().items() if ".mlp." not in k}, strict=False)
    perm = torch.randperm(2 * inner, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for s, l in zip(small.transformer.h, large.transformer.h):
            l.mlp.c_fc.weight.copy_(torch.cat([s.mlp.c_fc.weight, s.mlp.c_fc.weight], 1)[:, perm])
            l.mlp.c_fc.bias.copy_(torch.cat([s.mlp.c_fc.bias, s.mlp.c_fc.bias])[perm])
            l.mlp.c_proj.weight.copy_(torch.cat([s.mlp.c_proj.weight / 2, s.mlp.c_proj.weight / 2], 0)[perm])
            l.mlp.c_proj.bias.copy_(s.mlp.c_proj.bias)
    return large


def logits(model, x):
    with torch.no_grad():
        out = model(**x).logits
    return out[x["attention_mask"].bool()] if out.dim() == 3 else out


# Known answers --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-9)])
def test_merge_recovers_the_gpt2_every_intermediate_unit_of_which_was_duplicated_and_prune_does_not(dtype, tol):
    small = gpt2(32, dtype=dtype)
    large = duplicated(small)
    x = tokens()
    assert torch.allclose(logits(large, x), logits(small, x), atol=tol)  # the construction itself
    merged = compress(large, x, keep=32, method="merge",
                      importance="magnitude")
    assert merged.model.config.n_inner == 32
    assert all(b.mlp.c_fc.weight.shape == (32, 32) and b.mlp.c_proj.weight.shape == (32, 32)
               for b in merged.model.transformer.h)
    assert (logits(merged.model, x) - logits(small, x)).abs().max() <= tol
    assert list(merged.table["units_after"]) == [32, 32] and set(merged.table["method_used"]) == {"merge"}
    assert merged.table["agreement"].eq(1.0).all()
    assert merged.table["params_after"].iloc[0] == sum(p.numel() for p in small.parameters())
    # one of every pair of twins stays
    for layer, kept in merged.kept.items():
        perm = torch.randperm(64, generator=torch.Generator().manual_seed(3))
        assert sorted((perm[kept] % 32).tolist()) == list(range(32)), layer

    pruned = compress(large, x, keep=32, method="prune", importance="magnitude")
    assert (logits(pruned.model, x) - logits(small, x)).abs().max() > 1e-3
    assert large.config.n_inner == 64 and large.transformer.h[0].mlp.c_fc.weight.shape == (32, 64)  # untouched


def test_bert_merge_keeps_48_of_64_with_fewer_parameters_and_a_consistent_table():
    model = bert()
    x = tokens(seed=4)
    x["labels"] = torch.arange(24) % 3
    out = compress(model, x, keep=48, method="merge")
    table = out.table
    assert list(table["layer"]) == [f"bert.encoder.layer.{i}.intermediate.dense" for i in range(2)]
    assert list(table["units_after"]) == [48, 48] and out.model.config.intermediate_size == 48
    assert (table["params_after"] < table["params_before"]).all()
    assert table["params_before"].iloc[0] - table["params_after"].iloc[0] == 2 * 16 * (32 + 1 + 32)
    with torch.no_grad():
        before = model(**{k: v for k, v in x.items() if k != "labels"}).logits.argmax(-1)
        after = out.model(**{k: v for k, v in x.items() if k != "labels"}).logits.argmax(-1)
    assert table["accuracy_before"].iloc[0] == pytest.approx(float((before == x["labels"]).double().mean()))
    assert table["accuracy_after"].iloc[0] == pytest.approx(float((after == x["labels"]).double().mean()))
    assert table["agreement"].iloc[0] == pytest.approx(float((after == before).double().mean()))
    # the block names and the activation modules name the same layers
    same = compress(model, x, ["bert.encoder.layer.0.intermediate", "bert.encoder.layer.1.intermediate"], keep=48)
    assert all(torch.equal(same.kept[k], out.kept[k]) for k in out.kept)


def test_a_language_model_without_labels_has_nan_accuracy_and_per_token_agreement():
    model = gpt2(64)
    x = tokens()
    out = compress(model, x, keep=0.5, importance="random")
    assert math.isnan(out.table["accuracy_after"].iloc[0])
    assert out.table["agreement"].iloc[0] == pytest.approx(float(
        (logits(out.model, x).argmax(-1) == logits(model, x).argmax(-1)).double().mean()))


def test_max_drop_finds_one_count_for_every_block_and_vit_fc_blocks_compress():
    small = gpt2(32)
    large = duplicated(small)
    x = tokens(n=12)
    out = compress(large, x, max_drop=0.0, method="merge", importance="magnitude")
    kept = set(out.table["units_after"])
    assert len(kept) == 1 and kept.pop() <= 32 and out.model.config.n_inner == out.table["units_after"].iloc[0]
    assert out.table["agreement"].eq(1.0).all()

    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    image_size=8, patch_size=4, num_channels=3, num_labels=3)
    vit = transformers.ViTForImageClassification(config).eval()
    images = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    v = compress(vit, images, keep=0.75, importance="magnitude")
    assert list(v.table["layer"]) == [f"vit.layers.{i}.mlp.fc1" for i in range(2)]  # transformers 5's ViT
    assert v.model.config.intermediate_size == 48
    assert v.model.vit.layers[1].mlp.fc2.weight.shape == (32, 48)
    assert v.model.vit.layers[1].mlp.fc1.weight.shape == (48, 32)


# Saving ---------------------------------------------------------------------------------------------------------

def test_save_pretrained_round_trips_with_the_same_logits_and_the_kept_size(tmp_path):
    model = gpt2(64)
    x = tokens()
    out = compress(model, x, keep=40, method="merge", importance="magnitude")
    folder = out.save_pretrained(tmp_path / "small")
    again = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    assert again.config.n_inner == 40
    assert torch.equal(logits(again, x), logits(out.model, x))
    with pytest.raises(WidthlabError, match="save_pretrained"):
        out.save(tmp_path / "small.pt")

    b = compress(bert(), tokens(), keep=48, importance="magnitude")
    b.save_pretrained(tmp_path / "bert")
    again = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "bert").eval()
    assert again.config.intermediate_size == 48
    assert torch.equal(logits(again, tokens()), logits(b.model, tokens()))


def test_a_consumer_without_bias_gets_none_and_opt_round_trips_with_ffn_dim(tmp_path):
    """OPT without biases: the fold regresses through the origin (a bias added here would be dropped by
    from_pretrained, silently changing the outputs)."""
    torch.manual_seed(0)
    config = transformers.OPTConfig(hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=2,
                                    vocab_size=100, max_position_embeddings=64, word_embed_proj_dim=32,
                                    enable_bias=False, pad_token_id=1)
    model = transformers.OPTForCausalLM(config).eval()
    x = tokens(n=8, seed=6, pad_id=1)
    out = compress(model, x, keep=48, importance="magnitude")
    assert out.model.config.ffn_dim == 48 and out.model.model.decoder.layers[0].fc2.bias is None
    out.save_pretrained(tmp_path / "opt")
    again = transformers.OPTForCausalLM.from_pretrained(tmp_path / "opt").eval()
    assert torch.equal(logits(again, x), logits(out.model, x))


# Padding --------------------------------------------------------------------------------------------------------

def test_padded_tokens_do_not_enter_the_regression():
    model = gpt2(64, dtype=torch.float64)
    x = tokens(n=8, length=12)
    other = {"input_ids": torch.where(x["attention_mask"].bool(), x["input_ids"], 77), "attention_mask":
             x["attention_mask"]}
    consumer = model.transformer.h[0].mlp.c_proj
    moments = hf.mlp_moments(model, consumer, 64, list(batches(model, x, 5)))
    assert moments.n == int(x["attention_mask"].sum())  # one row per real token
    assert moments.n < x["attention_mask"].numel()
    again = hf.mlp_moments(model, consumer, 64, list(batches(model, other, 5)))
    assert abs(moments.gram - again.gram).max() < 1e-10
    a = compress(model, x, keep=40, method="merge")
    b = compress(model, other, keep=40, method="merge")
    assert all(torch.equal(a.kept[k], b.kept[k]) for k in a.kept)
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.allclose(p, q, atol=1e-10), name


# Errors ---------------------------------------------------------------------------------------------------------

def test_per_layer_keep_that_differs_and_partial_layers_are_one_error():
    model = gpt2(64)
    x = tokens(n=4)
    with pytest.raises(WidthlabError, match="one intermediate size"):
        compress(model, x, keep={"transformer.h.0.mlp.c_fc": 32, "transformer.h.1.mlp.c_fc": 48})
    with pytest.raises(WidthlabError, match="one intermediate size"):
        compress(model, x, keep={"transformer.h.0.mlp": 32})
    with pytest.raises(WidthlabError, match="compresses every MLP block"):
        compress(model, x, "transformer.h.0.mlp.c_fc", keep=32)
    with pytest.raises(WidthlabError, match="not MLP blocks"):
        compress(model, x, "transformer.h.0.attn", keep=32)
    same = compress(model, x, keep={"transformer.h.0.mlp.act": 32, "transformer.h.1.mlp": 32},
                    importance="random")
    assert same.model.config.n_inner == 32
