"""`analyze`: the long-format DataFrame, streaming redundancy, row subsampling and default layers."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from widthlab.errors import WidthlabError
from widthlab.measure import analyze, capture, default_layers, perturbation_curve, redundancy
from widthlab.measure.analyze import redundancy_rows
from widthlab.vocab import (
    ANALYZE_COLUMNS,
    NULL_METRICS,
    PRUNABILITY_METRICS,
    REDUNDANCY_METRICS,
    REDUNDANT_METRICS,
)
from widthlab.measure.perturbations import NOISE_LEVELS, PERTURBATIONS, SHARE_LEVELS
from widthlab.models import create_model

LEVELS = [0.0, 0.5, 1.0]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def conv_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 8 * 8, 5))


@pytest.fixture
def images():
    return torch.randn(12, 3, 8, 8, generator=gen(1))


def values(frame, **where):
    for key, value in where.items():
        frame = frame[frame[key] == value]
    return frame["value"].to_numpy()


def test_columns_and_row_counts(images):
    labels = torch.randint(0, 5, (12,), generator=gen(2))
    frame = analyze(conv_net(), images, labels=labels, perturbations=("zero", "mean"), levels=LEVELS, samplings=2,
                    batch_size=5)
    assert list(frame.columns) == list(ANALYZE_COLUMNS)
    assert sorted(frame.layer.unique()) == ["1", "3", "all"]  # ReLU-like modules by default, plus the joint scope
    unperturbed = frame[frame.perturbation == ""]
    # two layers, sampling 0 only: the §1 numbers, 50 histogram bins, the 3 similarity-calibration numbers, the
    # redundant / non-redundant unit counts and the 3 selectivity numbers (labels given, no training split)
    assert len(unperturbed) == 2 * (len(REDUNDANCY_METRICS) + 50 + len(NULL_METRICS) + len(REDUNDANT_METRICS) + 3)
    assert unperturbed.loc[unperturbed.metric != "abs_r_count", "level"].isna().all()
    robustness_rows = frame[frame.perturbation != ""]
    # perturbations × scopes × samplings × rows, and x* with the prunable / non-prunable counts of each unit
    # layer and sampling of the zero curves
    assert len(robustness_rows) == 2 * 3 * 2 * (1 + 2 * len(LEVELS)) + 2 * 2 * len(PRUNABILITY_METRICS)
    assert set(robustness_rows.metric) == {"auc", "unchanged", "accuracy", *PRUNABILITY_METRICS}
    assert robustness_rows.loc[robustness_rows.metric == "auc", "level"].isna().all()
    assert frame.sampling.dtype.kind == "i" and frame.level.dtype.kind == "f"


def test_conv_units_are_channels_and_redundancy_streams_the_captured_rows(images):
    model = conv_net()
    frame = analyze(model, images, layers=["1", "3"], levels=LEVELS, samplings=1, batch_size=5)
    assert values(frame, layer="1", metric="n_units") == [4] and values(frame, layer="3", metric="n_units") == [6]
    acts = capture(model, images, "3")["3"]
    assert acts.shape == (12 * 64, 6)
    expected = redundancy(acts)
    for metric in REDUNDANCY_METRICS:
        assert values(frame, layer="3", metric=metric)[0] == pytest.approx(expected[metric])
    np.testing.assert_array_equal(values(frame, layer="3", metric="abs_r_count"), expected["abs_r_counts"])
    centres = frame[(frame.layer == "3") & (frame.metric == "abs_r_count")].level.to_numpy()
    np.testing.assert_allclose(centres, (np.arange(50) + 0.5) / 50)


def test_curves_match_perturbation_curve_and_ignore_other_layers(images):
    model = conv_net()
    both = analyze(model, images, layers=["1", "3"], levels=LEVELS, samplings=2)
    one = analyze(model, images, layers=["1"], levels=LEVELS, samplings=2)
    assert "all" not in set(one.layer)  # with one layer the joint scope would repeat it
    pd.testing.assert_frame_equal(both[both.layer == "1"].reset_index(drop=True),
                                  one[one.layer == "1"].reset_index(drop=True))
    curve = perturbation_curve(model, images, "all", layers=["1", "3"], levels=LEVELS, samplings=2)
    np.testing.assert_array_equal(values(both, layer="all", metric="unchanged", sampling=1), curve.unchanged[1])
    np.testing.assert_array_equal(values(both, layer="all", metric="auc"), curve.auc)


def test_max_rows_draws_rows_per_sampling(images):
    model = conv_net()
    frame = analyze(model, images, layers=["1"], perturbations=(), samplings=3, max_rows=100, batch_size=5)
    acts = capture(model, images, "1")["1"]  # (768, 4)
    for s in range(3):
        expected = redundancy(acts[torch.as_tensor(redundancy_rows(0, "1", s, len(acts), 100))])
        assert values(frame, metric="similarity", sampling=s)[0] == pytest.approx(expected["similarity"])
        np.testing.assert_array_equal(values(frame, metric="abs_r_count", sampling=s), expected["abs_r_counts"])
    assert not np.array_equal(values(frame, metric="abs_r_count", sampling=0),
                              values(frame, metric="abs_r_count", sampling=1))
    everything = analyze(model, images, layers=["1"], perturbations=(), samplings=2, max_rows=10_000, null_rows=None)
    unlimited = analyze(model, images, layers=["1"], perturbations=(), null_rows=None)
    for s in range(2):
        np.testing.assert_allclose(values(everything, sampling=s), values(unlimited, sampling=0))


def test_redundancy_streamed_by_the_curves_pass_equals_its_own_pass(images):
    model = conv_net()
    for max_rows in (None, 200):
        merged = analyze(model, images, perturbations=("zero",), levels=LEVELS, samplings=2, max_rows=max_rows,
                         batch_size=5)  # the curves' clean passes stream the moments
        separate = analyze(model, images, perturbations=(), samplings=2, max_rows=max_rows, batch_size=5)
        pd.testing.assert_frame_equal(merged[merged.perturbation == ""].reset_index(drop=True), separate)


def test_mlp_defaults_and_dataset_labels():
    model = create_model("mlp", 0.25, init="normal", sigma=0.3, input_dim=10, seed=0)
    x, y = torch.randn(80, 10, generator=gen(3)), torch.randint(0, 2, (80,), generator=gen(4))
    frame = analyze(model, TensorDataset(x, y), levels=LEVELS, samplings=1)
    assert set(frame.layer) == {"relu1"}  # model.unit_layers
    assert len(values(frame, metric="accuracy")) == len(LEVELS)
    assert values(frame, metric="n_units") == [32]


class SharedRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)
        self.shared, self.once = nn.ReLU(), nn.GELU()

    def forward(self, x):
        return self.fc3(self.once(self.fc2(self.shared(self.fc1(self.shared(x))))))


class Block(nn.Module):
    """A residual block that applies one ReLU module twice, as torchvision's BasicBlock."""

    def __init__(self, width):
        super().__init__()
        self.fc1, self.fc2, self.relu = nn.Linear(width, width), nn.Linear(width, width), nn.ReLU()

    def forward(self, x):
        return self.relu(self.fc2(self.relu(self.fc1(x))) + x)


def test_default_layers_replace_a_reused_activation_by_its_block():
    model = nn.Sequential(nn.Linear(4, 6), nn.GELU(), Block(6), Block(6), nn.Linear(6, 2))
    x = torch.randn(30, 4, generator=gen(5))
    assert default_layers(model, x) == ["1", "2", "3"]
    frame = analyze(model, x, levels=LEVELS, samplings=1)
    assert list(values(frame, metric="n_units")) == [6, 6, 6]


def test_default_layers_reject_a_module_that_runs_twice_outside_any_block():
    with pytest.raises(WidthlabError, match="'shared'.*runs 2 times"):
        analyze(SharedRelu(), torch.randn(30, 4, generator=gen(5)), levels=LEVELS, samplings=1)
    frame = analyze(SharedRelu(), torch.randn(30, 4, generator=gen(5)), layers=["once"], levels=LEVELS, samplings=1)
    assert set(frame.layer) == {"once"}


def test_every_perturbation_with_its_default_levels(images):
    model = conv_net()
    frame = analyze(model, images, perturbations=tuple(PERTURBATIONS), samplings=2, batch_size=5)
    assert set(frame.perturbation) == {"", *PERTURBATIONS}
    for name, spec in PERTURBATIONS.items():
        rows = frame[(frame.perturbation == name) & (frame.metric == "unchanged")]
        assert set(rows.layer) == {"1", "3", "all"}
        np.testing.assert_allclose(np.unique(rows.level), NOISE_LEVELS if spec.noise else SHARE_LEVELS)
        assert len(rows) == 3 * 2 * 11
    # One sweep for all curves gives what each curve gives alone.
    for name in ("targeted", "act_noise", "weight_knockout"):
        alone = perturbation_curve(model, images, "3", perturbation=name, samplings=2, batch_size=5)
        np.testing.assert_array_equal(values(frame, layer="3", metric="auc", perturbation=name), alone.auc)


def test_max_rows_with_perturbations_needing_moments_uses_all_rows(images):
    model = conv_net()
    subsampled = analyze(model, images, layers=["1"], perturbations=("mean", "act_noise"), levels=LEVELS,
                         samplings=2, max_rows=50)
    full = analyze(model, images, layers=["1"], perturbations=("mean", "act_noise"), levels=LEVELS, samplings=2)
    robust = subsampled.perturbation != ""
    pd.testing.assert_frame_equal(subsampled[robust].reset_index(drop=True),
                                  full[full.perturbation != ""].reset_index(drop=True))


def test_bad_arguments_fail_before_measuring(images):
    with pytest.raises(WidthlabError, match="implemented"):
        analyze(conv_net(), images, perturbations=("zero", "bogus"))
    with pytest.raises(WidthlabError, match="'9'"):
        analyze(conv_net(), images, layers=["9"])
    with pytest.raises(WidthlabError, match="max_rows"):
        analyze(conv_net(), images, max_rows=0)


def test_similarity_calibration_rows_are_the_null_of_the_sampled_rows(images):
    frame = analyze(conv_net(), images, layers=["3"], levels=LEVELS, samplings=1, batch_size=5, null_rows=300)
    null = {m: values(frame, layer="3", metric=m)[0] for m in NULL_METRICS}
    from widthlab.measure.calibration import layer_similarity_null

    expected = layer_similarity_null(conv_net(), images, ["3"], max_rows=300, seed=0, batch_size=5)["3"]
    assert null == pytest.approx({m: expected[m] for m in NULL_METRICS})
    assert "similarity_null" not in set(analyze(conv_net(), images, layers=["3"], levels=LEVELS, samplings=1,
                                                null_rows=None)["metric"])


def test_check_measurable_resolves_layers_and_refuses_what_analyze_would():
    from widthlab.measure import check_measurable

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.act, self.out = nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)

        def forward(self, x):
            return self.out(self.act(self.fc(x) + x))  # the ReLU's input is a sum: no Linear produces it

    x = torch.randn(5, 4, generator=gen(0))
    model = Residual().train()
    assert check_measurable(model, x) == ["act"]
    assert check_measurable(model, x, perturbations=("zero", "mean")) == ["act"] and model.training
    with pytest.raises(WidthlabError, match="torch.add"):
        check_measurable(model, x, perturbations=("weight_noise",))
    with pytest.raises(WidthlabError, match="unknown perturbation"):
        check_measurable(model, x, perturbations=("dropout",))
    with pytest.raises(WidthlabError, match="unknown layer.*nope"):
        check_measurable(model, x, layers=["nope"])
    plain = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert check_measurable(plain, x, perturbations=("weight_knockout",)) == ["1"]


def test_levels_per_perturbation(images):
    frame = analyze(conv_net(), images, layers=["1"], perturbations=("zero", "act_noise"),
                    levels={"act_noise": [0, 1, 3]}, samplings=1, null_rows=None)
    curves = frame[frame.metric == "unchanged"]
    assert sorted(curves[curves.perturbation == "act_noise"].level.unique()) == [0, 1, 3]
    assert len(curves[curves.perturbation == "zero"].level.unique()) == 11  # zero keeps its default levels
    alone = analyze(conv_net(), images, layers=["1"], perturbations=("act_noise",), levels=[0, 1, 3], samplings=1,
                    null_rows=None)
    pd.testing.assert_frame_equal(curves[curves.perturbation == "act_noise"].reset_index(drop=True),
                                  alone[alone.metric == "unchanged"].reset_index(drop=True))
    with pytest.raises(WidthlabError, match="levels given for \\['mean'\\]"):
        analyze(conv_net(), images, perturbations=("zero",), levels={"mean": [0, 1]})


def test_numpy_blas_runs_with_torch_thread_count(images, monkeypatch):
    # NumPy's OpenBLAS would start a thread per core beside torch's pool; analyze pins it to torch's count.
    from threadpoolctl import threadpool_info

    import sys

    module = sys.modules["widthlab.measure.redundancy"]  # the package's `redundancy` is the function

    seen = []
    real = module._pcs

    def spy(cov, energy):
        seen.extend(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas")
        return real(cov, energy)

    monkeypatch.setattr(module, "_pcs", spy)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        analyze(create_model("mlp", 0.25, input_dim=10), torch.randn(64, 10), perturbations=(), samplings=1)
    finally:
        torch.set_num_threads(threads)
    assert seen and set(seen) == {1}


def test_the_abs_r_histogram_rows_carry_bin_centres_in_level():
    """vocab.HISTOGRAM_METRIC's `level` is each |r| bin's centre (what the docs and figures read), not its edge."""
    import numpy as np
    import torch
    from torch import nn

    from widthlab.measure import analyze
    from widthlab.vocab import HISTOGRAM_METRIC

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
    frame = analyze(net, torch.randn(64, 6), ["1"], perturbations=("zero",), levels=[0, 1], samplings=1)
    levels = np.sort(frame.loc[frame["metric"] == HISTOGRAM_METRIC, "level"].unique())
    np.testing.assert_allclose(levels, (np.arange(50) + 0.5) / 50)
