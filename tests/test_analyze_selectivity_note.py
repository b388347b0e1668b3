"""`widthlab analyze` says why a layer's selectivity may lie outside [0, 1]: its activations take negative values
(GELU, identity), where the index (μ_k* − μ_¬k*)/(μ_k* + μ_¬k*) is unbounded; a ReLU layer gets no note."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
import torch

from widthlab.cli import main
from widthlab.report.analysis import layer_notes, layer_table


def test_layer_notes_name_only_signed_layers_with_a_selectivity():
    frame = pd.DataFrame([dict(layer=layer, metric="selectivity", perturbation="", level=np.nan, sampling=0,
                               value=value) for layer, value in (("relu", 0.4), ("gelu", 3.469), ("id", -0.054))]
                         + [dict(layer="all", metric="auc", perturbation="zero", level=np.nan, sampling=0, value=0.7)])
    table = layer_table(frame)
    [line] = layer_notes(table, ["gelu", "id", "all"])  # "all" has no selectivity: not named
    assert line.startswith("note: selectivity of gelu, id: activations take negative values; can lie outside "
                           "[0, 1] by definition")
    assert layer_notes(table, []) == []
    # Without labels there is no selectivity column, so nothing to explain.
    assert layer_notes(layer_table(frame[frame["metric"] != "selectivity"]), ["gelu"]) == []


def test_analyze_notes_gelu_and_identity_layers_not_relu(tmp_path, monkeypatch, capsys):
    (tmp_path / "signed_nets.py").write_text(textwrap.dedent("""
        from torch import nn

        def mixed():
            return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 8),
                                 nn.Identity(), nn.Linear(8, 2))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    generator = torch.Generator().manual_seed(0)
    torch.save((torch.randn(40, 10, generator=generator), torch.arange(40) % 2), tmp_path / "pair.pt")
    assert main(["analyze", "signed_nets:mixed", "--data", str(tmp_path / "pair.pt"), "--layers", "1,3,5",
                 "--levels", "3", "--samplings", "1", "--seed", "0", "--quiet", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    notes = [line for line in printed.splitlines() if line.startswith("note: selectivity")]
    assert len(notes) == 1 and notes[0].startswith("note: selectivity of 3, 5: activations take negative values")
    table = pd.read_csv(tmp_path / "out" / "analysis.csv")
    assert set(table.loc[table["metric"] == "selectivity", "layer"].astype(str)) == {"1", "3", "5"}
