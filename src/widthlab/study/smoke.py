"""Smoke mode: any study shrunk to a seconds-long run that exercises every code path of the real one.

Widths 1/4 and 1/2, one replicate, at most 64 training examples and 3 optimiser steps of 8, a short measurement (3
levels, 1 sampling, 32 validation and test examples, at most 1,000 rows per layer for redundancy);
when the study's image data is absent (no CIFAR-10 / ImageNet folder), scikit-learn's bundled digits stand in,
resized to the model's input size (Inception-v3 needs at least 75×75).
"""

from __future__ import annotations

import copy
from typing import Any

from widthlab.data import load_data
from widthlab.errors import WidthlabError
from widthlab.study.config import RUN_SECTIONS, StudyConfig, parse_config

SMOKE_WIDTHS = (0.25, 0.5)
SMOKE_EXAMPLES = 64
SMOKE_STEPS = 3
# 3 steps of 8 examples: a full-size Inception-v3 (the Mixed_5d preset) spends a third of its smoke run training.
SMOKE_BATCH = 8
# Input side of the digits stand-in per model family (default: the model's `input_size` option, else 32).
SMOKE_IMAGE_SIZE = {"resnet18_imagenet": 64, "inception_v3": 75, "inception_v3_mixed5d": 75}
# Measuring (every test example through every ablated network) and validating cost more than 3 optimiser steps;
# 32 examples still fill one batch of each and leave a binomial test of accuracy against chance its meaning.
SMOKE_EVAL_EXAMPLES = 32
SMOKE_MAX_ROWS = 1_000
SMALL_SPLITS = {"n_train": SMOKE_EXAMPLES, "n_val": SMOKE_EVAL_EXAMPLES, "n_test": SMOKE_EVAL_EXAMPLES}
SMOKE_CANDIDATES = 2
# Data sets that are always there (drawn, or bundled with scikit-learn): loading one only to see that it exists
# cost the 10,000-d MLP presets 20 s (its teacher is drawn and checked on 20,000 inputs); the preflight loads it.
GENERATED = ("synthetic", "digits")
SMOKE_CAVEAT = ("smoke run (2 widths, 1 replicate, 3 optimiser steps on 64 examples): it tests the code, its verdict "
                "is not meaningful")
SMALL_IMAGENET = {"classes": 2, "images_per_class": SMOKE_EXAMPLES // 2, "val_per_class": 4}


def _data_present(data: dict[str, Any], seed: int) -> bool:
    options = {k: v for k, v in data.items() if k not in ("name", "root")}
    try:
        load_data(data["name"], root=data.get("root"), seed=seed, **options)
    except WidthlabError:
        return False
    return True


def _smoke_data(data: dict[str, Any], model: dict[str, Any], seed: int, present: dict,
                stand_ins: set[str]) -> dict[str, Any]:
    name = data["name"]
    if name == "imagenet":
        small = {**data, **SMALL_IMAGENET}
    elif name in ("synthetic", "cifar10", "digits"):
        small = {**data, **SMALL_SPLITS}
    else:  # a user's loader: its options are its own
        return data
    if name in GENERATED:
        return small
    key = repr(sorted(data.items()))
    if key not in present:
        present[key] = _data_present(small, seed)
    if present[key]:
        return small
    stand_ins.add(name)
    size = SMOKE_IMAGE_SIZE.get(model["name"], model.get("input_size", 32))
    digits = {"name": "digits", "image_size": size, **SMALL_SPLITS}
    if data.get("random_labels"):
        digits["random_labels"] = True
    if data.get("augment") is not None:
        digits["augment"] = data["augment"]
    return digits


def smoke_config(cfg: StudyConfig) -> StudyConfig:
    """`cfg` shrunk to a smoke run (see the module docstring); the name gains ``-smoke``.

    Example: ``run_study(smoke_config(load_config("resnet56")), "/tmp/resnet56-smoke")`` runs this config:
        >>> from widthlab.study import load_config
        >>> smoke = smoke_config(load_config("resnet56"))
        >>> smoke.name, smoke.grid.widths, smoke.grid.replicates, smoke.train.max_steps
        ('resnet56-smoke', (0.25, 0.5), 1, 3)
    """
    present: dict = {}
    stand_ins: set[str] = set()
    variants = {}
    for variant in cfg.grid.variants:
        sections = {k: v.model_dump(mode="json") for k, v in cfg.variant_sections(variant).items()}
        sections["data"] = _smoke_data(sections["data"], sections["model"], cfg.seed, present, stand_ins)
        train = sections["train"]
        train.update(epochs=1, max_steps=SMOKE_STEPS, batch_size=min(train["batch_size"], SMOKE_BATCH),
                     snapshot_epochs=[1] if train["snapshot_epochs"] else [])
        measure = sections["measure"]
        measure.update(levels=3, samplings=1, max_rows=min(measure["max_rows"] or SMOKE_MAX_ROWS, SMOKE_MAX_ROWS))
        variants[variant] = {k: sections[k] for k in RUN_SECTIONS}
    raw = cfg.model_dump(mode="json")
    first = next(iter(variants.values()))
    # Every variant lists its sections in full; a bare base keeps one variant's keys from leaking into another's.
    raw.update(data={"name": first["data"]["name"]}, model={"name": first["model"]["name"]},
               train=first["train"], measure=first["measure"])
    raw["name"] = f"{cfg.name}-smoke"
    raw["grid"] = {"widths": list(SMOKE_WIDTHS), "replicates": 1, "variants": variants}
    if cfg.grid.select is not None:  # the selection path runs, on its first two candidates
        raw["grid"]["select"] = {**cfg.grid.select.model_dump(mode="json"),
                                 "candidates": list(cfg.grid.select.candidates[:SMOKE_CANDIDATES])}
        variants = copy.deepcopy(variants)  # the base (the first variant's sections) keeps every key
        raw["grid"]["variants"] = variants
        for sections in variants.values():  # the variants are spelled out in full: leave the chosen keys to select
            for key in {k for c in cfg.grid.select.candidates for k in c}:
                section, _, name = key.partition(".")
                node = sections[section]
                *parents, leaf = name.split(".")
                for part in parents:
                    node = node.get(part, {})
                node.pop(leaf, None)
    raw["caveats"] = [*cfg.caveats, SMOKE_CAVEAT,
                      *(f"digits stand in for {name} (its data was not found)" for name in sorted(stand_ins))]
    return parse_config(raw, f"smoke version of {cfg.name!r}")
