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
from widthlab.cli.analyze import estimate_seconds, probe_examples


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
    """A probe `run(n, full)` on a fake clock: each run costs `fixed` + n × `clean`, plus, per job, `per_job` and
    n × `copy` per copy (`copies` per job when full, else 1), and the first run (the warm-up) `warm` more."""

    def __init__(self, monkeypatch, *, fixed, clean, copy, jobs, copies, warm=5.0, per_job=0.0):
        self.now, self.calls = 0.0, []
        self.fixed, self.clean, self.copy, self.jobs, self.copies = fixed, clean, copy, jobs, copies
        self.warm, self.per_job = warm, per_job
        monkeypatch.setattr(time, "perf_counter", lambda: self.now)

    def cost(self, n: int, copies: int) -> float:
        return self.fixed + self.jobs * self.per_job + n * (self.clean + self.jobs * copies * self.copy)

    def __call__(self, n: int, full: bool) -> None:
        self.now += self.cost(n, self.copies if full else 1) + (self.warm if not self.calls else 0.0)
        self.calls.append((n, full))


def test_the_estimate_is_the_full_measurement_on_a_slice_extrapolated_by_the_examples(monkeypatch):
    run = FakeRun(monkeypatch, fixed=0.4, clean=1e-3, copy=2e-3, jobs=3, copies=30, per_job=0.05)
    estimate = estimate_seconds(run, examples=10_000)
    # Fixed (set up, each job's tracing) once; per example the clean pass and every copy of every job.
    assert estimate.fixed == pytest.approx(0.4 + 3 * 0.05)
    assert estimate.per_example == pytest.approx(1e-3 + 3 * 30 * 2e-3)
    assert estimate.seconds(10_000) == pytest.approx(run.cost(10_000, 30))
    # The warm-up runs at the probe's batch shape (one copy per job: kernels picked for every job's network) and
    # is not used; then the full measurement on 2 examples and on one batch. 10 % of 10,000 is more than a batch.
    assert run.calls[0] == (256, False)
    assert list(dict.fromkeys(run.calls[1:])) == [(2, True), (256, True)]
    spent = sum(run.cost(n, 30 if full else 1) for n, full in run.calls)
    assert spent <= 0.1 * run.cost(10_000, 30)
    assert estimate.probe == pytest.approx(spent + 5.0)  # the warm-up's warm included


def test_a_small_measurement_gets_a_small_probe_and_a_tiny_one_none(monkeypatch):
    run = FakeRun(monkeypatch, fixed=0.1, clean=1e-4, copy=1e-4, jobs=1, copies=10, warm=0.0)
    estimate = estimate_seconds(run, examples=40)
    assert max(n for n, _ in run.calls) == 8  # 10 % of 40 examples is fewer: the least a probe takes
    assert estimate.seconds(40) == pytest.approx(run.cost(40, 10))
    assert [probe_examples(n) for n in (15, 16, 1_000, 50_000)] == [None, 8, 100, 256]
    with pytest.raises(ValueError, match="fewer than 16"):
        estimate_seconds(run, examples=15)


def test_noise_in_short_runs_is_cut_by_repeats(monkeypatch):
    """Runs under half a second are repeated and the fastest kept: a burst of load on one does not move it."""
    run = FakeRun(monkeypatch, fixed=0.01, clean=1e-4, copy=1e-4, jobs=1, copies=10, warm=0.0)
    bursts = iter([0.0, 0.0, 0.3, 0.0, 0.0, 0.3, 0.0, 0.0])  # a burst in the 2nd run of each repeated probe

    def noisy(n, full):
        run(n, full)
        run.now += next(bursts, 0.0)

    estimate = estimate_seconds(noisy, examples=40)
    assert estimate.seconds(40) == pytest.approx(run.cost(40, 10))


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


def test_the_estimate_and_the_time_taken_cover_units(command, tmp_path, monkeypatch, capsys):
    """With --units the probe measures the unit tables as the command will (on 2 and 30 examples of 300), and the
    time printed beside the estimate includes them: the user waits for both."""
    sizes = []
    real = analyze_cli._unit_tables

    def counted(model, inputs, names, **options):
        sizes.append(len(inputs[0]) if isinstance(inputs, tuple) else len(inputs))
        return real(model, inputs, names, **options)

    monkeypatch.setattr(analyze_cli, "_unit_tables", counted)
    assert main([*command, "--units", "--out", str(tmp_path / "o")]) == 0
    assert sorted(set(sizes)) == [2, 30, 300] and sizes[-1] == 300
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("widthlab: ")]
    (done,) = [line for line in lines if line.startswith("widthlab: measured in")]
    assert lines.index("widthlab: measuring each unit (--units)…") < lines.index(done)
