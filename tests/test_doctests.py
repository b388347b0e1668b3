"""Every docstring example of widthlab runs here as a doctest, so an example that went stale fails CI.

One test per widthlab module (`pkgutil.walk_packages`), run with ELLIPSIS and NORMALIZE_WHITESPACE in the
folder of a fresh tmp_path (an example that writes a file writes it there, never into the repository). Besides the
module's own names, an example may use, without importing them:

- ``torch``, ``nn`` (torch.nn), ``np`` (numpy), ``pd`` (pandas), ``widthlab`` and widthlab's public API
  (``widthlab.__all__``: `create_model`, `load_data`, `analyze`, `load_results`, ...);
- ``model``: ``create_model("mlp", 1.0, input_dim=10, seed=0)`` (unit layer ``relu1``, 128 units), ``x`` (200
  inputs of the synthetic data set, seed 0) and ``y`` (their labels);
- ``res``: `load_results` of a tiny finished study in ``widthlab-runs/mlp-10d`` (the folder `widthlab run
  mlp-10d` writes by default: two widths, two replicates, 3 epochs, one snapshot at epoch 1; trained once per
  test process, in about a second), and ``runs`` / ``metrics``: its ``res.runs`` / ``res.metrics``.

Some modules' examples find files made for them in the working directory (`SETUP`): widthlab.data.cifar10's
a stand-in CIFAR-10 in ``data/cifar-10-batches-py``. An example whose module needs an optional peer package that is
missing is skipped, naming the package.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import pkgutil
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import widthlab
from conftest import TINY_STUDY, write_cifar10

SRC = Path(widthlab.__file__).parent
MODULES = sorted(m.name for m in pkgutil.walk_packages(widthlab.__path__, "widthlab.")
                 if not m.name.endswith("__main__"))  # importing widthlab.cli.__main__ runs the CLI
# Optional peers (pyproject's extras and the hub packages): a module that needs a missing one is skipped, naming it.
OPTIONAL = ("ray", "transformers", "torch_pruning", "captum", "torchvision", "timm")
# Peers a module's examples use beyond what importing the module needs.
PEERS = {"widthlab.external": ("transformers",)}
STUDY = "widthlab-runs/mlp-10d"
# The tiny study of conftest at two widths and two replicates (so trends, growth and bands have data), trained to
# 80-85% test accuracy (not chance: compression and the caveats have something to say), with a snapshot at epoch 1.
DOCTEST_STUDY = [*TINY_STUDY, "grid.widths=[0.25, 0.5]", "grid.replicates=2", "data.n_train=256", "train.epochs=3",
                 "train.lr=0.1", "train.snapshot_epochs=[1]"]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


SETUP = {"widthlab.data.cifar10": lambda folder: write_cifar10(folder / "data")}


@pytest.fixture(scope="module")
def trained_study(tmp_path_factory):
    """The examples' study, trained once per test process (about a second)."""
    from widthlab.study import load_config, run_study

    out = tmp_path_factory.mktemp("doctest-study") / "study"
    run_study(load_config("mlp-10d", DOCTEST_STUDY), out, progress=False, report=False)
    return out


@pytest.fixture
def namespace(trained_study, tmp_path, monkeypatch):
    """The names every example may use (module docstring), as (API, fixtures): a module's own names come between,
    so the fixtures win. The study is copied into tmp_path, the working directory."""
    import pandas as pd
    import torch
    from torch import nn

    shutil.copytree(trained_study, tmp_path / STUDY)
    monkeypatch.chdir(tmp_path)
    res = widthlab.load_results(STUDY)
    data = widthlab.load_data("synthetic", input_dim=10, seed=0, n_train=64, n_val=32, n_test=200)
    api = {**{name: getattr(widthlab, name) for name in widthlab.__all__},
           "torch": torch, "nn": nn, "np": np, "pd": pd, "widthlab": widthlab}
    fixtures = {"model": widthlab.create_model("mlp", 1.0, input_dim=10, seed=0), "x": data.test.x, "y": data.test.y,
                "res": res, "runs": res.runs, "metrics": res.metrics}
    return api, fixtures


@pytest.mark.parametrize("name", MODULES)
def test_examples(name, namespace, one_thread):
    for peer in PEERS.get(name, ()):
        pytest.importorskip(peer, reason=f"{name}'s examples need {peer}")
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in OPTIONAL:
            raise
        pytest.skip(f"{name} needs {exc.name}, which is not installed")
    if name in SETUP:
        SETUP[name](Path.cwd())
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    api, fixtures = namespace
    for test in doctest.DocTestFinder(exclude_empty=True).find(module, name):  # the module's own objects only
        test.globs = {**api, **vars(module), **fixtures}
        runner.run(test)
    failed, attempted = runner.summarize(verbose=False)
    assert not failed, f"{failed} of {attempted} examples of {name} failed (doctest output above)"


EXAMPLE = re.compile(r"^[ \t]*Example:.*$", re.MULTILINE)
# An Example: paragraph (its first line, then non-blank lines) that reaches a doctest line.
DOCTEST_EXAMPLE = re.compile(r"^[ \t]*Example:.*\n(?:[ \t]*(?!>>>)\S.*\n)*[ \t]*>>> ", re.MULTILINE)
# The Example: lines of the docstrings when they became doctests (one per docstring); the count may grow, not fall.
MIN_EXAMPLES = 125


def docstrings(path: Path):
    """(name, docstring) of the module and of each class and function defined in a source file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            text = ast.get_docstring(node, clean=False)
            if text:
                yield getattr(node, "name", "<module>"), text


def test_every_example_is_a_doctest():
    """Every ``Example:`` paragraph of a docstring in src/widthlab goes on into ``>>>`` lines (so `test_examples`
    runs it), and there are no fewer of them than when they were converted."""
    prose, examples = [], 0
    for path in sorted(SRC.rglob("*.py")):
        for name, text in docstrings(path):
            found = len(EXAMPLE.findall(text))
            converted = len(DOCTEST_EXAMPLE.findall(text))
            examples += converted
            if converted < found:
                prose.append(f"{path.relative_to(SRC.parent)}: {name}")
    assert not prose, f"Example: paragraphs without a doctest (write them as >>> lines): {prose}"
    assert examples >= MIN_EXAMPLES, f"{examples} docstring examples are doctests; there were {MIN_EXAMPLES}"
