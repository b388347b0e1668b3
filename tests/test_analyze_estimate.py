"""`widthlab analyze`'s time estimate extrapolates timed runs of the real `analyze` on slices of the inputs by the
counts, and its progress bar counts the planned example evaluations, naming every phase the user waits for."""

from __future__ import annotations

import re
import textwrap
import time

import pytest
import torch
import tqdm

from widthlab.cli import main
from widthlab.cli import analyze as analyze_cli
from widthlab.cli.analyze import estimate_seconds


@pytest.fixture
def command(tmp_path, monkeypatch):
    """An analyze command: a module's two-ReLU MLP (two layers and "all") on 300 labelled 10-d examples."""
    (tmp_path / "estimate_nets.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def mlp():
            torch.manual_seed(0)
            return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    generator = torch.Generator().manual_seed(0)
    torch.save({"x": torch.randn(300, 10, generator=generator), "y": torch.randint(0, 3, (300,), generator=generator)},
               tmp_path / "xy.pt")
    return ["analyze", "estimate_nets:mlp", "--data", str(tmp_path / "xy.pt"), "--levels", "4", "--samplings", "2"]


class FakeRun:
    """A probe `run(n, levels)` on a fake clock: each run costs `fixed` + n × (`clean` + jobs × (levels − 1) ×
    `copy`), plus `per_job` per job with levels, and the first (the warm-up) `warm` more."""

    def __init__(self, monkeypatch, *, fixed, clean, copy, jobs, warm=5.0, per_job=0.0):
        self.now, self.calls, self.per_job = 0.0, [], per_job
        self.fixed, self.clean, self.copy, self.jobs, self.warm = fixed, clean, copy, jobs, warm
        monkeypatch.setattr(time, "perf_counter", lambda: self.now)

    def __call__(self, n: int, levels: int | None) -> None:
        copies = levels - 1 if levels else 0
        self.now += self.fixed + (self.per_job * self.jobs if levels else 0.0)
        self.now += n * (self.clean + copies * self.jobs * self.copy)
        self.now += self.warm if not self.calls else 0.0
        self.calls.append((n, levels))


def test_the_estimate_recovers_the_costs_and_scales_with_the_evaluations(monkeypatch):
    run = FakeRun(monkeypatch, fixed=0.4, clean=1e-3, copy=2e-3, jobs=3, per_job=0.05)
    estimate = estimate_seconds(run, examples=10_000, jobs=3, passes=2, copies=90)
    assert (estimate.fixed, estimate.per_job) == (pytest.approx(0.4), pytest.approx(0.05))
    assert (estimate.per_example, estimate.per_copy) == (pytest.approx(1e-3), pytest.approx(2e-3))
    # The extrapolation: fixed and per job once, then per example its passes and every planned copy.
    assert estimate.seconds(10_000, 3, 90) == pytest.approx(0.4 + 3 * 0.05 + 10_000 * (1e-3 + 90 * 2e-3))
    assert estimate.seconds(10_000, 3, 180) - estimate.seconds(10_000, 3, 90) == pytest.approx(10_000 * 90 * 2e-3)
    # Cheap: a warm-up, clean runs on 2 and n examples, then 1 and 3 copies per job on n; runs under half a
    # second are repeated, the fastest kept. 10 % of the plan is more than one batch: n is one batch.
    assert list(dict.fromkeys(run.calls)) == [(2, 2), (2, None), (256, None), (256, 2), (256, 4)]
    evaluations = sum(n * (1 + (levels - 1 if levels else 0) * 3) for n, levels in run.calls)
    assert evaluations <= 0.1 * 10_000 * (2 + 90)
    # A moments pass (passes 3) is one more clean pass per example.
    moments = estimate_seconds(FakeRun(monkeypatch, fixed=0.4, clean=1e-3, copy=2e-3, jobs=3), examples=10_000,
                               jobs=3, passes=3, copies=90)
    assert moments.per_example == pytest.approx(1.5e-3)


def test_a_small_measurement_gets_a_small_probe(monkeypatch):
    run = FakeRun(monkeypatch, fixed=0.1, clean=1e-4, copy=1e-4, jobs=1, warm=0.0)
    estimate = estimate_seconds(run, examples=40, jobs=1, passes=2, copies=10)
    assert max(n for n, _ in run.calls) == 8  # 10 % of the plan (5 examples) is fewer: the least a probe takes
    assert estimate.seconds(40, 1, 10) == pytest.approx(0.1 + 40 * (1e-4 + 10 * 1e-4))


class Bar:
    """A tqdm stand-in that records its count, total and the descriptions it was given."""

    made: list[Bar] = []

    def __init__(self, *args, desc=None, **kwargs):
        self.n, self.total, self.descriptions = 0, None, [desc]
        Bar.made.append(self)

    def update(self, n=1):
        self.n += n

    def set_description(self, text, refresh=True):
        self.descriptions.append(text)

    def refresh(self):
        pass

    def close(self):
        pass


@pytest.mark.parametrize("perturbations", ["zero", "zero,mean"])
def test_the_bar_ends_at_the_planned_count_and_names_every_phase(command, perturbations, tmp_path, monkeypatch,
                                                                 capsys):
    Bar.made = []
    monkeypatch.setattr(tqdm, "tqdm", Bar)
    monkeypatch.setattr(analyze_cli, "_terminal", lambda: True)  # loading and reading are named on a terminal
    assert main([*command, "--perturbations", perturbations, "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    (planned,) = re.findall(r"^widthlab: measuring .*: ([0-9,]+) example evaluations;", err, flags=re.M)
    (bar,) = Bar.made
    jobs = 3 * len(perturbations.split(","))  # two layers and "all", per perturbation
    passes = 2 + ("mean" in perturbations)  # clean, statistics, and the clean moments for "mean"
    assert int(planned.replace(",", "")) == 300 * (passes + jobs * 2 * 3) == bar.total == bar.n
    phases = ["measuring", "redundancy", "similarity null", "selectivity"]
    assert [d for d in bar.descriptions if d in phases] == ["measuring", *phases]  # set up, then in order
    assert ("clean statistics" in bar.descriptions) == ("mean" in perturbations)
    lines = [line for line in err.splitlines() if line.startswith("widthlab: ")]
    for said in ("loading the model…", "reading the data…", "estimating the time…", "writing tables…",
                 "drawing figures…"):
        assert f"widthlab: {said}" in lines
    (done,) = [line for line in lines if line.startswith("widthlab: measured in")]
    assert re.fullmatch(r"widthlab: measured in [0-9.]+ (s|min|h) \(estimated [0-9.]+ (s|min|h)\)", done)
    assert lines.index(done) < lines.index("widthlab: writing tables…")


def test_the_estimate_does_not_change_the_measurement(command, tmp_path, capsys):
    assert main([*command, "--out", str(tmp_path / "loud")]) == 0
    assert "widthlab: estimating the time…" in capsys.readouterr().err
    assert main([*command, "--quiet", "--out", str(tmp_path / "quiet")]) == 0
    assert capsys.readouterr().err == ""  # --quiet: no plan, no probe, no bar
    assert (tmp_path / "loud" / "analysis.csv").read_text() == (tmp_path / "quiet" / "analysis.csv").read_text()
