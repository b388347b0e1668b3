"""What `widthlab analyze` measures depends only on the command, the data and the seed: its plan is fitted into
--max-evaluations by counting example evaluations, and the machine's speed only changes the printed time estimate."""

from __future__ import annotations

import re
import textwrap
import time

import pytest
import torch

from widthlab.cli import main


@pytest.fixture
def command(tmp_path, monkeypatch):
    """An analyze command (a module's MLP on 500 labelled 10-d examples) that --max-evaluations 5,000 must lower."""
    (tmp_path / "plan_nets.py").write_text(textwrap.dedent("""
        from torch import nn

        def mlp():
            return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    generator = torch.Generator().manual_seed(0)
    torch.save({"x": torch.randn(500, 10, generator=generator), "y": torch.randint(0, 2, (500,), generator=generator)},
               tmp_path / "xy.pt")
    return ["analyze", "plan_nets:mlp", "--data", str(tmp_path / "xy.pt"), "--max-evaluations", "5000"]


def _clock(seconds_per_call: float):
    """A `time.perf_counter` on which every call is `seconds_per_call` later than the last."""
    now = [0.0]

    def perf_counter() -> float:
        now[0] += seconds_per_call
        return now[0]

    return perf_counter


def test_a_slow_and_a_fast_machine_measure_the_same(command, tmp_path, monkeypatch, capsys):
    plans, tables = {}, {}
    for machine, seconds in (("slow", 30.0), ("fast", 1e-7)):
        monkeypatch.setattr(time, "perf_counter", _clock(seconds))
        out = tmp_path / machine
        assert main([*command, "--out", str(out)]) == 0
        (plan,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("widthlab: measuring")]
        plans[machine], estimate = plan.rsplit("; est. ", 1)
        tables[machine] = (out / "analysis.csv").read_text()
        assert estimate.endswith("on this machine")
    assert plans["slow"] == plans["fast"]
    assert tables["slow"] == tables["fast"]
    # 500 examples × (1 clean + 1 extra pass + 1 layer × S samplings × (L − 1) copies) <= 5,000: 11 × 3 (16,000)
    # and 5 × 3 (7,000) are over, 5 × 2 (5,000) fits, and 6 × 2 (6,000) would not.
    assert plans["fast"] == ("widthlab: measuring zero × 5 levels × 2 samplings on 500 examples: 5,000 example "
                             "evaluations; lowered from 11 levels × 3 samplings on 500 examples (16,000 example "
                             "evaluations) to fit --max-evaluations 5,000; to measure more, set "
                             "--levels/--samplings/--max-examples or a larger --max-evaluations")
    rows = re.findall(r"^1,unchanged,zero,([0-9.]+),([0-9]+),", tables["fast"], flags=re.M)
    assert sorted({float(level) for level, _ in rows}) == [0, 0.25, 0.5, 0.75, 1]
    assert {sampling for _, sampling in rows} == {"0", "1"}


def test_the_default_budget_keeps_the_defaults_and_quiet_prints_nothing(command, tmp_path, capsys):
    assert main([*command[:-2], "--quiet", "--out", str(tmp_path / "o")]) == 0
    assert capsys.readouterr().err == ""
    table = (tmp_path / "o" / "analysis.csv").read_text()
    assert ",auc,zero,,2," in table and ",auc,zero,,3," not in table  # 3 samplings: 0, 1, 2
