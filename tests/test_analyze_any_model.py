"""`widthlab analyze` on any model: saved HF transformers models (hf:PATH) fed text or tensor files, the new
flags (--unit-axis, --output, --mask, --units, --max-examples, --max-evaluations), seeded random weights, the study's own
data for a checkpoint, and one clear line for every bad input.

The HF models are tiny, built from a config with random weights and saved with a tokenizer trained offline on a
few strings: nothing is downloaded.
"""

from __future__ import annotations

import re

import textwrap

import pandas as pd
import pytest
import torch

from widthlab.cli import main
from widthlab.cli.analyze import choose_measurement, estimate_evaluations
from widthlab.models import create_model
from widthlab.external import load_model
from widthlab.train.checkpoint import save_checkpoint

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

TEXTS = ["the cat sat on the mat", "a dog ran in the park today", "wide networks do not overfit",
         "units repeat each other", "robust units can be removed", "the park is wide"]
FAST = ["--levels", "3", "--samplings", "1"]
GPT2_LAYERS = ["transformer.h.0.mlp.act", "transformer.h.1.mlp.act"]
BERT_LAYERS = [f"bert.encoder.layer.{i}.intermediate.intermediate_act_fn" for i in range(2)]


def _tokenizer(specials: list[str], **tokens):
    """A word-level fast tokenizer trained on TEXTS, as `AutoTokenizer` loads it back."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(TEXTS, trainers.WordLevelTrainer(special_tokens=specials))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", **tokens)


def gpt2_config() -> transformers.GPT2Config:
    """A tiny GPT-2 whose config names its class, as `save_pretrained` of a GPT2LMHeadModel writes it."""
    return transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_inner=64, vocab_size=100, n_positions=64,
                                   bos_token_id=1, eos_token_id=1, architectures=["GPT2LMHeadModel"])


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """A folder with a GPT2LMHeadModel and a GPT-2 style tokenizer (an eos token, no pad token)."""
    folder = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(gpt2_config()).save_pretrained(folder)
    tokenizer = _tokenizer(["[UNK]", "<|endoftext|>"], eos_token="<|endoftext|>")
    assert tokenizer.pad_token is None
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A folder with a BertForSequenceClassification and a BERT-style tokenizer."""
    folder = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    config = transformers.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                                     vocab_size=100, max_position_embeddings=64)
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    _tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], pad_token="[PAD]", cls_token="[CLS]",
               sep_token="[SEP]", mask_token="[MASK]").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "prompts.txt"
    path.write_text("\n".join(TEXTS) + "\n\n")  # a blank line is no example
    return path


@pytest.fixture
def nets(tmp_path, monkeypatch):
    """An importable module `user_nets` of model functions."""
    (tmp_path / "user_nets.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def mlp():  # random weights from torch's global generator: --seed must fix them
            return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2))

        def boom():
            raise ValueError("width must be positive\\nand a second line nobody needs")

        class Named(nn.Module):  # a dict of outputs without 'logits'
            def __init__(self):
                super().__init__()
                self.body = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2))

            def forward(self, x):
                return {"scores": self.body(x)}

        def named():
            return Named()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def frame(out) -> pd.DataFrame:
    return pd.read_csv(out / "analysis.csv", keep_default_na=False, na_values=[""])


def n_units(table: pd.DataFrame) -> dict[str, float]:
    return table.query("metric == 'n_units'").set_index("layer")["value"].to_dict()


# HF models end to end -----------------------------------------------------------------------------------------------

def test_gpt2_on_a_text_file(gpt2, prompts, tmp_path, capsys):
    out = tmp_path / "a"
    assert main(["analyze", f"hf:{gpt2}", "--data", str(prompts), *FAST, "--out", str(out)]) == 0
    table = frame(out)
    assert set(table["layer"]) == {*GPT2_LAYERS, "all"}
    assert n_units(table) == {name: 64.0 for name in GPT2_LAYERS}
    auc = table.query("metric == 'auc'")["value"]
    assert len(auc) == 3 and auc.between(0, 1).all()
    err = capsys.readouterr().err
    # The plan: model, examples and real tokens, layers with their units; no time estimate for 6 examples (a
    # probe would take about as long as the measurement), only the time taken.
    assert f"hf:{gpt2} (GPT2LMHeadModel" in err and f"{len(TEXTS)} examples" in err and "real tokens" in err
    assert "transformer.h.0.mlp.act (64 units)" in err and "example evaluations" in err
    assert "est." not in err and "estimating" not in err and re.search(r"measured in [0-9.]+ s\n", err)


def test_bert_on_a_text_file_and_on_a_dict_of_tensors(bert, prompts, tmp_path):
    out = tmp_path / "text"
    assert main(["analyze", f"hf:{bert}", "--data", str(prompts), *FAST, "--quiet", "--out", str(out)]) == 0
    assert set(frame(out)["layer"]) == {*BERT_LAYERS, "all"}
    assert n_units(frame(out)) == {name: 64.0 for name in BERT_LAYERS}
    assert "accuracy" not in set(frame(out)["metric"])

    tokenizer = transformers.AutoTokenizer.from_pretrained(bert, local_files_only=True)
    encoding = tokenizer(TEXTS, padding=True, return_tensors="pt")
    data = tmp_path / "tokens.pt"
    torch.save({**encoding, "labels": torch.tensor([0, 1, 0, 1, 1, 0])}, data)
    out = tmp_path / "dict"
    assert main(["analyze", f"hf:{bert}", "--data", str(data), *FAST, "--quiet", "--out", str(out)]) == 0
    table = frame(out)
    assert set(table["layer"]) == {*BERT_LAYERS, "all"}
    assert "accuracy" in set(table["metric"])  # the dict's "labels" entry became the labels
    # The same tokens, from the text file or the .pt dict: the same redundancy numbers.
    text = frame(tmp_path / "text").query("metric == 'compressibility'")["value"].to_numpy()
    assert table.query("metric == 'compressibility'")["value"].to_numpy() == pytest.approx(text)


def test_hf_flags_output_mask_unit_axis_max_examples(gpt2, prompts, tmp_path, capsys):
    out = tmp_path / "a"
    assert main(["analyze", f"hf:{gpt2}", "--data", str(prompts), *FAST, "--output", "logits", "--mask", "none",
                 "--unit-axis", "-1", "--max-examples", "4", "--max-length", "5", "--layers", GPT2_LAYERS[0],
                 "--out", str(out)]) == 0
    table = frame(out)
    assert set(table["layer"]) == {GPT2_LAYERS[0]} and n_units(table) == {GPT2_LAYERS[0]: 64.0}
    err = capsys.readouterr().err
    assert " 4 examples" in err and "real tokens" not in err  # --mask none: every position is a row


def test_units_table(gpt2, prompts, tmp_path):
    out = tmp_path / "a"
    assert main(["analyze", f"hf:{gpt2}", "--data", str(prompts), *FAST, "--units", "--quiet",
                 "--out", str(out)]) == 0
    units = pd.read_csv(out / "units.csv")
    assert list(units.columns[:2]) == ["layer", "unit"]
    assert units.groupby("layer").size().to_dict() == {name: 64 for name in GPT2_LAYERS}
    assert units["changed_zero"].between(0, 1).all()


# Seeds ----------------------------------------------------------------------------------------------------------------

def test_seed_fixes_the_random_weights_of_an_hf_config_and_a_function(tmp_path, nets):
    folder = tmp_path / "config-only"
    gpt2_config().save_pretrained(folder)  # no weights: the model is built from its config with random weights
    built = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)  # whatever the global generator holds, --seed decides
        built.append([load_model(f"hf:{folder}", seed=0), load_model("user_nets:mlp", seed=0)])
    for a, b in zip(*built):
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    first = built[0][0]
    assert type(first).__name__ == "GPT2LMHeadModel" and not first.training
    other = load_model(f"hf:{folder}", seed=1)
    assert not torch.equal(other.transformer.h[0].mlp.c_fc.weight, first.transformer.h[0].mlp.c_fc.weight)
    # A config that names no class known to transformers: AutoModel builds the base model.
    bare = tmp_path / "bare"
    transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, architectures=["NoSuchModel"]) \
        .save_pretrained(bare)
    assert type(load_model(f"hf:{bare}")).__name__ == "GPT2Model"


def test_two_identical_commands_write_identical_csvs(tmp_path, nets):
    folder = tmp_path / "config-only"
    gpt2_config().save_pretrained(folder)
    ids = torch.randint(0, 100, (6, 7), generator=torch.Generator().manual_seed(0))
    torch.save({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, tmp_path / "ids.pt")
    torch.save((torch.randn(30, 10, generator=torch.Generator().manual_seed(0)), torch.arange(30) % 2),
               tmp_path / "pair.pt")
    for model, data in ((f"hf:{folder}", "ids.pt"), ("user_nets:mlp", "pair.pt")):
        tables = []
        for run, global_seed in enumerate((1, 2)):
            torch.manual_seed(global_seed)
            out = tmp_path / f"{data}-{run}"
            assert main(["analyze", model, "--data", str(tmp_path / data), *FAST, "--seed", "3", "--quiet",
                         "--out", str(out)]) == 0
            tables.append((out / "analysis.csv").read_text())
        assert tables[0] == tables[1]
    assert "accuracy" in tables[0]  # the (x, y) tuple: the last 1-D integer tensor is the labels


# A checkpoint's own data ----------------------------------------------------------------------------------------------

def test_a_study_checkpoint_without_data_uses_the_study_data(tmp_path, capsys):
    from widthlab.study import load_config, run_study

    config = {"name": "tiny", "seed": 0, "data": {"name": "synthetic", "n_train": 100, "n_val": 50, "n_test": 60},
              "model": {"name": "mlp", "init": "normal", "sigma": 0.1}, "train": {"epochs": 1},
              "measure": {"levels": 3, "samplings": 1}, "grid": {"widths": [0.25], "replicates": 1}}
    study = tmp_path / "study"
    run_study(load_config(config), study, progress=False, report=False)
    (checkpoint,) = (study / "checkpoints").glob("*.pt")
    implicit, explicit = tmp_path / "implicit", tmp_path / "explicit"
    assert main(["analyze", str(checkpoint), *FAST, "--out", str(implicit)]) == 0
    assert "synthetic (" in capsys.readouterr().err  # the plan names the study's data set
    assert main(["analyze", str(checkpoint), "--data", "synthetic", "--data-opt", "n_train=100",
                 "--data-opt", "n_val=50", "--data-opt", "n_test=60", *FAST, "--quiet", "--out", str(explicit)]) == 0
    pd.testing.assert_frame_equal(frame(implicit), frame(explicit))


# Bad inputs: one line, exit 2 -----------------------------------------------------------------------------------------

def _old_checkpoint(path, *, input_dim=10):
    """A widthlab checkpoint as `fit(..., meta=...)` writes it: how to rebuild the model, no data set."""
    model = create_model("mlp", 1.0, init="normal", sigma=0.1, input_dim=input_dim)
    meta = {"model": {"name": "mlp", "init": "normal", "sigma": 0.1, "input_dim": input_dim}, "width": 1.0,
            "num_classes": 2}
    save_checkpoint(path, {"model": model.state_dict(), "meta": meta})
    return path


@pytest.fixture
def files(tmp_path, gpt2, bert):
    """Bad and good inputs for the error cases, by name."""
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "no-model").mkdir()
    no_tokenizer = tmp_path / "no-tokenizer"
    transformers.GPT2LMHeadModel(gpt2_config()).save_pretrained(no_tokenizer)
    torch.save({"input_ids": torch.zeros(3, 4, dtype=torch.long), "note": "text"}, tmp_path / "mixed.pt")
    torch.save(torch.randn(5, 10), tmp_path / "x.pt")
    (tmp_path / "words.txt").write_text("\n".join(TEXTS))
    return {"dir": tmp_path, "gpt2": f"hf:{gpt2}", "bert": f"hf:{bert}", "old": str(_old_checkpoint(
        tmp_path / "old.pt")), "no_tokenizer": f"hf:{no_tokenizer}", "text": str(tmp_path / "words.txt"),
        "x": str(tmp_path / "x.pt")}


BAD = [
    (["{gpt2}", "--data", "{text}", "--unit-axis", "7"], "no unit axis 7"),
    (["{gpt2}", "--data", "{text}", "--unit-axis", "last"], "--unit-axis expects an integer"),
    (["{gpt2}", "--data", "{text}", "--output", "scores"], "output='scores'"),
    (["{gpt2}", "--data", "{text}", "--mask", "padding_mask"], "mask='padding_mask'"),
    (["{gpt2}", "--data", "{text}", "--layers", "transformer.h.9"], "unknown layer"),
    (["{gpt2}", "--data", "{text}", "--levels", "1"], "--levels must be at least 2"),
    (["{gpt2}", "--data", "{text}", "--samplings", "0"], "--samplings must be at least 1"),
    (["{gpt2}", "--data", "{text}", "--max-examples", "0"], "--max-examples must be at least 1"),
    (["{gpt2}", "--data", "{text}", "--max-length", "x"], "--max-length expects an integer"),
    (["{gpt2}", "--data", "{text}", "--max-evaluations", "-5"], "--max-evaluations must be"),
    (["{gpt2}", "--data", "{text}", "--budget", "180"], "--budget 180 (seconds of measuring) is gone"),
    (["{gpt2}", "--data", "{text}", "--perturbations", "zap"], "zap"),
    (["{gpt2}", "--data", "{dir}/empty.txt"], "holds no text"),
    (["{gpt2}", "--data", "{dir}/missing.txt"], "does not exist"),
    (["{gpt2}", "--data", "{dir}/mixed.pt"], "'note'"),
    (["{gpt2}", "--data", "{x}"], "cannot run on inputs of shape (2, 10)"),
    (["{gpt2}"], "--data is required"),
    (["{no_tokenizer}", "--data", "{text}"], "has no tokenizer"),
    (["hf:{dir}/nowhere", "--data", "{text}"], "does not exist"),
    (["hf:{dir}/no-model", "--data", "{text}"], "holds no HF model"),
    (["hf:", "--data", "{text}"], "names no folder"),
    (["{old}", "--data", "{text}"], "needs an hf:PATH model"),
    (["{old}", "--data", "digits"], "cannot run on inputs of shape (2, 3, 32, 32)"),
    (["{old}"], "does not record its study's data set"),
    (["user_nets:boom", "--data", "{x}"], "model 'user_nets:boom' raised ValueError: width must be positive"),
    (["user_nets:mlp"], "--data is required"),
]


@pytest.mark.parametrize("args,match", BAD, ids=[match for _, match in BAD])
def test_bad_input_is_one_line_and_exit_2(args, match, files, nets, tmp_path, capsys):
    argv = ["analyze", *(a.format(**files) for a in args), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("widthlab: error: ") and match in err, err


def test_a_shape_mismatch_names_both_shapes(files, capsys):
    assert main(["analyze", files["old"], "--data", "digits", "--out", str(files["dir"] / "o")]) == 2
    err = capsys.readouterr().err
    assert "(2, 3, 32, 32)" in err and "'fc1' (Linear) takes 10 features" in err and "mat1 and mat2" in err


def test_without_transformers_hf_models_ask_for_the_extra(files, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)  # `import transformers` now fails
    assert main(["analyze", files["gpt2"], "--data", files["text"], "--out", str(files["dir"] / "o")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "widthlab[hf]" in err


# The budget of example evaluations -----------------------------------------------------------------------------------

def test_estimate_counts_one_clean_pass_extra_passes_and_the_perturbed_copies():
    # 2 jobs × 3 samplings × (11 − 1) levels copies, one clean pass and one extra pass over 300 examples.
    assert estimate_evaluations(300, 2, 11, 3) == 300 * 62
    assert estimate_evaluations(300, 2, 11, 3, extra_passes=0) == 300 * 61


def choose(**kw):
    options = {"examples": 300, "jobs": 10, "levels": 11, "samplings": 3, "budget": 18_000}
    return choose_measurement(**{**options, **kw})


def test_budget_keeps_what_fits_and_budget_0_keeps_everything():
    fits = choose(budget=300 * (2 + 30 * 10))  # exactly the defaults
    assert (fits.levels, fits.samplings, fits.examples, fits.note) == (11, 3, 300, None)
    off = choose(budget=0)
    assert (off.levels, off.samplings, off.examples, off.note) == (11, 3, 300, None)
    assert off.evaluations == estimate_evaluations(300, 10, 11, 3)


def test_budget_lowers_levels_first():
    # 1 clean + 1 extra pass + 10 jobs × 3 samplings × (L − 1) copies: 7 levels (54,600) fit, 8 (63,600) do not.
    choice = choose(budget=60_000)
    assert (choice.levels, choice.samplings, choice.examples, choice.evaluations) == (7, 3, 300, 54_600)
    assert choice.note == ("lowered from 11 levels × 3 samplings on 300 examples (90,600 example evaluations) to fit "
                           "--max-evaluations 60,000; to measure more, set --levels/--samplings/--max-examples or a larger "
                           "--max-evaluations")


def test_budget_lowers_samplings_below_5_levels_then_gives_levels_back():
    # 5 levels × 3 samplings (36,600) do not fit; 2 samplings do, and then 6 levels (1 + 1 + 10 · 2 · 5 passes) too.
    choice = choose(budget=31_000)
    assert (choice.levels, choice.samplings, choice.examples) == (6, 2, 300)


FEW = 42 * 150 + 21  # at 5 levels × 1 sampling (42 passes an example), 150.5 examples would fit


def test_budget_lowers_examples_last():
    choice = choose(budget=FEW)
    assert (choice.levels, choice.samplings, choice.examples) == (5, 1, 150)
    assert choice.evaluations <= FEW and "to fit --max-evaluations 6,321;" in choice.note


def test_budget_keeps_at_least_100_examples():
    choice = choose(budget=FEW // 10)
    assert (choice.levels, choice.samplings, choice.examples) == (5, 1, 100)
    assert "still over --max-evaluations 632" in choice.note


def test_budget_never_changes_what_the_user_set():
    choice = choose(budget=FEW, fixed={"levels"})
    assert (choice.levels, choice.samplings) == (11, 1) and choice.examples < 150
    choice = choose(budget=FEW, fixed={"levels", "samplings", "examples"})
    assert (choice.levels, choice.samplings, choice.examples) == (11, 3, 300)
    assert "over --max-evaluations 6,321; measuring as asked" in choice.note
    few = choose(budget=FEW, levels=3, fixed={"samplings", "examples"})
    assert (few.levels, few.samplings, few.examples) == (3, 3, 300)  # never raised above the start, never below
    partly = choose(budget=FEW, fixed={"levels", "examples"})
    assert (partly.levels, partly.samplings, partly.examples) == (11, 1, 300)
    assert "to fit --max-evaluations 6,321, still over" in partly.note


def test_the_cli_applies_the_budget_and_says_so(gpt2, prompts, tmp_path, capsys):
    out = tmp_path / "a"
    assert main(["analyze", f"hf:{gpt2}", "--data", str(prompts), "--max-evaluations", "1", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    # The prompts are fewer than MIN_EXAMPLES: all are kept, and the message says the budget is still exceeded.
    assert "measuring zero × 5 levels × 1 sampling on 6 examples" in err and "still over --max-evaluations 1;" in err
    table = frame(out)
    assert sorted(set(table.query("metric == 'unchanged'")["level"])) == [0, 0.25, 0.5, 0.75, 1]
    assert set(table.query("metric == 'auc'")["sampling"]) == {0}


def test_the_plan_says_when_weights_are_random(tmp_path, gpt2, capsys):
    """A folder without weights (and a hub model) measures a random network: the plan line must say so, with the
    seed; a folder with weights must not."""
    from widthlab.external import random_weights

    folder = tmp_path / "config-only"
    gpt2_config().save_pretrained(folder)
    ids = torch.randint(0, 100, (6, 7), generator=torch.Generator().manual_seed(0))
    torch.save({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, tmp_path / "ids.pt")
    lines = {}
    for name, model in (("random", f"hf:{folder}"), ("trained", f"hf:{gpt2}")):
        assert main(["analyze", model, "--data", str(tmp_path / "ids.pt"), *FAST, "--seed", "4",
                     "--out", str(tmp_path / name)]) == 0
        lines[name] = next(line for line in capsys.readouterr().err.splitlines() if "M parameters" in line)
    assert "random weights (--seed 4)" in lines["random"]
    assert "random weights" not in lines["trained"]
    assert random_weights("torchvision:resnet18") and random_weights("timm:vit_tiny_patch16_224")
    assert not random_weights("mynets:build")


def test_a_dict_output_without_logits_names_the_cli_flag(tmp_path, nets, capsys):
    """The command line's flag is --output: the one line must say so, not only the Python keyword."""
    torch.save((torch.randn(30, 10, generator=torch.Generator().manual_seed(0)), torch.arange(30) % 2),
               tmp_path / "pair.pt")
    args = ["analyze", "user_nets:named", "--data", str(tmp_path / "pair.pt"), *FAST]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    assert "--output KEY" in capsys.readouterr().err
    assert main([*args, "--output", "scores", "--out", str(tmp_path / "b")]) == 0
