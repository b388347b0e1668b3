"""Benchmark (not a test): `widthlab analyze`'s time estimate against the time the measurement then took.

For each model it runs the real command a user types, in its own subprocess, and reads the two lines the command
prints: ``measuring … est. X on this machine`` before the measurement and ``measured in Y (estimated X)`` after
it. It prints, side by side, the estimate, the measured time, their ratio (1 = exact; above 1 the estimate was
too long) and the machine's load average before and after (other work on a shared machine moves the measured time
and the estimate's probe alike only if it lasts through both).

The six models of the any-model work, random weights (nothing can be downloaded):

- ``gpt2``, ``bert``: a 2-layer GPT-2 and a 2-layer BERT (64 wide, 256-unit MLPs) built from a config and saved
  with ``save_pretrained`` into a temporary folder, on 40 generated prompts (needs ``transformers``);
- ``tv-resnet18``, ``tv-mobilenet``: torchvision's ResNet18 and MobileNetV3-small on digits at 64 px;
- ``timm-resnet18``: timm's ResNet18 on digits at 64 px; ``vit-tiny``: timm's ViT-tiny at 224 px, 100 examples.

torchvision and timm do not import beside the CPU build torch 2.13.0: run those in the hub environment
(README, "Running the tests"), pointing it at this checkout's source, e.g.

    python benchmarks/analyze_estimate.py --models gpt2,bert
    PYTHONPATH=src .venv-hub/bin/python benchmarks/analyze_estimate.py --models tv-resnet18,tv-mobilenet,timm-resnet18,vit-tiny

A model whose library does not import is listed as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "gpt2": ("transformers", ["hf:{tmp}/gpt2", "--data", "{tmp}/prompts.txt"]),
    "bert": ("transformers", ["hf:{tmp}/bert", "--data", "{tmp}/prompts.txt"]),
    "tv-resnet18": ("torchvision", ["torchvision:resnet18", "--data", "digits", "--data-opt", "image_size=64"]),
    "tv-mobilenet": ("torchvision", ["torchvision:mobilenet_v3_small", "--data", "digits", "--data-opt",
                                     "image_size=64"]),
    "timm-resnet18": ("timm", ["timm:resnet18", "--data", "digits", "--data-opt", "image_size=64"]),
    "vit-tiny": ("timm", ["timm:vit_tiny_patch16_224", "--data", "digits", "--data-opt", "image_size=224",
                          "--max-examples", "100"]),
}
WORDS = "the cat sat on mat a dog ran in park today wide networks do not overfit model layer unit big small red".split()
UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0}


def _hf_models(folder: Path) -> None:
    """A 2-layer GPT-2 and BERT with word-level tokenizers trained on 40 prompts, saved into `folder`."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30))) for _ in range(40)]
    (folder / "prompts.txt").write_text("\n".join(texts) + "\n")
    for name, specials, config, cls, tokens in [
        ("gpt2", ["[UNK]", "<|endoftext|>"],
         transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, n_inner=256, vocab_size=100, n_positions=64,
                                 bos_token_id=1, eos_token_id=1),
         transformers.GPT2LMHeadModel, {"eos_token": "<|endoftext|>"}),
        ("bert", ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
         transformers.BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=256,
                                 vocab_size=100, max_position_embeddings=64),
         transformers.BertForSequenceClassification,
         {"pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"}),
    ]:
        words = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        words.pre_tokenizer = pre_tokenizers.Whitespace()
        words.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=specials))
        torch.manual_seed(0)
        cls(config).save_pretrained(folder / name)
        transformers.PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]", **tokens).save_pretrained(
            folder / name)


def _seconds(text: str) -> float:
    """``12 s`` / ``2.7 min`` / ``1.5 h`` (how `widthlab analyze` prints a duration) in seconds."""
    number, unit = text.split()
    return float(number) * UNITS[unit]


def _run(case: str, tmp: Path) -> dict:
    args = [arg.format(tmp=tmp) for arg in CASES[case][1]]
    cmd = [sys.executable, "-c", "import sys; from widthlab.cli import main; sys.exit(main(sys.argv[1:]))",
           "analyze", *args, "--out", str(tmp / f"out-{case}")]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    done = re.search(r"measured in ([0-9.]+ (?:s|min|h)) \(estimated ([0-9.]+ (?:s|min|h))\)", proc.stderr)
    if proc.returncode != 0 or done is None:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise SystemExit(f"{case}: `widthlab analyze {' '.join(args)}` exited {proc.returncode}:\n{tail}")
    measured, estimated = _seconds(done.group(1)), _seconds(done.group(2))
    return {"model": case, "command": "widthlab analyze " + " ".join(args).replace(str(tmp), "TMP"),
            "estimated_s": estimated, "measured_s": measured, "ratio": estimated / measured,
            "command_s": wall, "load_before": load, "load_after": os.getloadavg()[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.models.split(",")]
    unknown = [name for name in chosen if name not in CASES]
    if unknown:
        parser.error(f"unknown --models {', '.join(unknown)}; valid: {', '.join(CASES)}")
    rows, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="widthlab-estimate-") as folder:
        tmp = Path(folder)
        if any(CASES[name][0] == "transformers" for name in chosen) and importlib.util.find_spec("transformers"):
            _hf_models(tmp)
        for name in chosen:
            needs = CASES[name][0]
            if importlib.util.find_spec(needs) is None:
                skipped.append(f"{name}: {needs} does not import in {sys.executable}")
                continue
            rows.append(_run(name, tmp))
            row = rows[-1]
            print(f"{name}: estimated {row['estimated_s']:.3g} s, measured {row['measured_s']:.3g} s "
                  f"(ratio {row['ratio']:.2f}; load {row['load_before']:.1f} → {row['load_after']:.1f})",
                  flush=True)
    if rows:
        import pandas as pd

        table = pd.DataFrame(rows)
        print()
        print(table.drop(columns="command").to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        print()
        for row in rows:
            print(f"{row['model']}: {row['command']}")
    for line in skipped:
        print(f"skipped {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
