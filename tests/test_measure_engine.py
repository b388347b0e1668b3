"""The perturbation engine: cut proofs, producers, and bit-identical batched / full / fallback paths."""

import numpy as np
import pytest
import torch
from torch import fx, nn

from widthlab.errors import WidthlabError
from widthlab.measure import perturbation_curve
from widthlab.measure.graph import probe, suffix_module, trace, weighted_forward
from widthlab.measure.engine import sweep
from widthlab.measure.perturbations import PERTURBATIONS, check_levels
from widthlab.measure.sites import forward_skipping_zeros

SHARE = [0.0, 0.3, 0.6, 1.0]
NOISE = [0.0, 1.0, 3.0]


# Tiny float64 models run fastest on one thread (the fixture is in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def levels_of(perturbation):
    return NOISE if PERTURBATIONS[perturbation].noise else SHARE


class Chain(nn.Module):
    """fc1-relu1-fc2-relu2-readout; `dynamic` adds a data-dependent branch that fx cannot trace (same function)."""

    def __init__(self, dynamic=False):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.relu1 = nn.Linear(10, 24), nn.ReLU()
        self.fc2, self.relu2 = nn.Linear(24, 16), nn.ReLU()
        self.readout = nn.Linear(16, 3)
        self.dynamic = dynamic
        for p in self.parameters():
            nn.init.normal_(p, 0, 0.5)
        self.double()

    def forward(self, x):
        if self.dynamic and x.sum() > 1e12:
            x = -x
        return self.readout(self.relu2(self.fc2(self.relu1(self.fc1(x)))))


class Block(nn.Module):
    """relu(conv2(relu(bn(conv1(x)))) + x): `relu` inside is not a cut (the skip bypasses it); the block is."""

    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn, self.relu = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()
        self.conv2, self.out = nn.Conv2d(c, c, 3, padding=1), nn.ReLU()

    def forward(self, x):
        return self.out(self.conv2(self.relu(self.bn(self.conv1(x)))) + x)


class ResNet(nn.Module):
    """stem conv-relu, two residual stages, global average pool, linear readout over 4 classes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.stem_relu = nn.Conv2d(3, 6, 3, padding=1), nn.ReLU()
        self.stage1, self.stage2 = Block(6), Block(6)
        self.head = nn.Linear(6, 4)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, 0, 0.4)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2)
        self.double()

    def forward(self, x):
        return self.head(self.stage2(self.stage1(self.stem_relu(self.stem(x)))).mean((2, 3)))


@pytest.fixture(scope="module")
def resnet_data():
    return ResNet(), torch.randn(24, 3, 5, 5, generator=gen(1), dtype=torch.float64)


# Cut proofs -----------------------------------------------------------------------------------------------------------

def test_fx_proves_stage_outputs_cuts_and_not_the_relu_inside_a_block(resnet_data):
    model, _ = resnet_data
    graph = trace(model.eval(), ["stem_relu", "stage1", "stage1.relu", "stage2"])
    assert isinstance(suffix_module(model, graph, "stem_relu"), fx.GraphModule)
    assert isinstance(suffix_module(model, graph, "stage2"), fx.GraphModule)
    assert suffix_module(model, graph, "stage1.relu") is None  # the skip connection bypasses it
    assert suffix_module(model, trace(model, ["stage1.relu"]), "stage1") is None  # not a node when not a leaf


class UsesInputShape(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.relu, self.head = nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)

    def forward(self, x):
        return self.head(self.relu(self.fc(x))).view(x.size(0), -1)  # the input reaches the output around relu


class SideEffect(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.relu, self.head = nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)

    def forward(self, x):
        h = self.relu(self.fc(x))
        h.add_(1)  # an unused result: its effect is invisible to dataflow
        return self.head(h)


def test_fx_rejects_input_paths_around_the_layer_and_side_effects():
    for model in (UsesInputShape(), SideEffect()):
        graph = trace(model, ["relu"])
        assert graph is not None and suffix_module(model, graph, "relu") is None
        assert perturbation_curve(model, torch.randn(8, 4), "relu", samplings=1).path == "full"
    assert trace(Chain(dynamic=True), ["relu1"]) is None


class MixesBatch(nn.Module):
    """A proven cut whose suffix mixes the batch: stacking copies would change results."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.fc, self.relu, self.head = nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)

    def forward(self, x):
        h = self.relu(self.fc(x))
        return self.head(h - h.mean(0))


def test_suffix_that_mixes_the_batch_falls_back_or_fails():
    model, x = MixesBatch(), torch.randn(20, 4, generator=gen(2))
    curve = perturbation_curve(model, x, "relu", samplings=2)
    assert curve.path == "full"
    np.testing.assert_array_equal(curve.unchanged, perturbation_curve(model, x, "relu", samplings=2,
                                                                      path="full").unchanged)
    with pytest.raises(WidthlabError, match="does not reproduce"):
        perturbation_curve(model, x, "relu", path="batched")


class WrongDeclaration(Chain):
    cut_layers = ["relu1"]

    def forward_from(self, layer, h):
        return self.readout(self.relu2(self.fc2(h * 2)))


def test_a_wrong_declared_cut_is_an_error():
    with pytest.raises(WidthlabError, match="'relu1' \\(declared\\) does not reproduce"):
        perturbation_curve(WrongDeclaration(), torch.randn(10, 10, dtype=torch.float64), "relu1")


# Producers ------------------------------------------------------------------------------------------------------------

def test_producer_chains_walk_back_through_per_unit_modules(resnet_data):
    model, x = resnet_data
    found = probe(model.eval(), x[:2], ["stem_relu", "stage1.relu", "stage1.conv2"],
                  ["stem_relu", "stage1.relu", "stage1.conv2"])
    assert found.order == ["stem_relu", "stage1.relu", "stage1.conv2"]
    assert found.chains == {"stem_relu": ["stem", "stem_relu"], "stage1.relu": ["stage1.conv1", "stage1.bn",
                                                                                "stage1.relu"],
                            "stage1.conv2": ["stage1.conv2"]}


class Branches(nn.Module):
    """cat(conv_a(x), conv_b(x)): a container whose output no single module returns."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 2, 1), nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], 1)


class StemNet(nn.Module):
    """A Sequential(conv, bn, relu) stem measured as one layer, then a branching block and a readout."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.stem = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU())
        self.mixed = Branches()
        self.head = nn.Linear(4, 3)
        nn.init.normal_(self.stem[0].weight, 0, 0.5)
        self.double()

    def forward(self, x):
        return self.head(self.mixed(self.stem(x)[:, :3]).mean((2, 3)))


def test_a_container_layer_is_produced_by_the_conv_its_last_module_follows():
    model, x = StemNet(), torch.randn(16, 3, 5, 5, generator=gen(8), dtype=torch.float64)
    assert probe(model.eval(), x[:2], ["stem"], ["stem"]).chains["stem"] == ["stem.0", "stem.1", "stem.2"]
    for perturbation in ("weight_noise", "weight_knockout"):
        found = curves(model, x, "stem", perturbation)
        assert_identical(found, "batched")
        assert found["full"].unchanged.min() < 1
    with pytest.raises(WidthlabError, match="output of 'mixed' is not the output of one of its modules"):
        perturbation_curve(model, x, "mixed", perturbation="weight_noise")


class FunctionalGap(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.relu, self.head = nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)

    def forward(self, x):
        return self.head(self.relu(self.fc(x) * 2))


class InplaceGap(FunctionalGap):
    def forward(self, x):
        h = self.fc(x)
        h.mul_(2)
        return self.head(self.relu(h))


@pytest.mark.parametrize("model, layer, message", [
    (ResNet(), "stage1.out", "not the output of a module"),  # relu(conv2(...) + x)
    (ResNet(), "stage1", "input of 'stage1.out' \\(before 'stage1'\\) is not the output of a module"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(3), nn.Flatten(), nn.Linear(4, 2)).double(), "1",
     "'1' is a MaxPool2d; weight perturbations need"),
    (FunctionalGap(), "relu", "not the output of a module"),
    (InplaceGap(), "relu", "changed by an operation outside modules"),
])
def test_weight_perturbations_need_a_producing_conv_or_linear(model, layer, message, no_hooks_left):
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64) if isinstance(model, nn.Sequential | ResNet) else torch.randn(4, 4)
    with pytest.raises(WidthlabError, match=message):
        perturbation_curve(model, x, layer, perturbation="weight_noise", samplings=1)
    assert no_hooks_left(model)


# Paths ----------------------------------------------------------------------------------------------------------------

def curves(model, x, layer, perturbation, layers=None, **kw):
    kw = dict(perturbation=perturbation, levels=levels_of(perturbation), layers=layers, samplings=2, batch_size=10,
              **kw)
    return {"full": perturbation_curve(model, x, layer, path="full", **kw),
            "auto": perturbation_curve(model, x, layer, **kw),
            "stacked": perturbation_curve(model, x, layer, ablations_per_eval=5, **kw)}


def assert_identical(found, path):
    assert found["full"].path == "full" and found["auto"].path == found["stacked"].path == path
    for name in ("auto", "stacked"):
        np.testing.assert_array_equal(found[name].unchanged, found["full"].unchanged)
        np.testing.assert_array_equal(found[name].accuracy, found["full"].accuracy)


@pytest.mark.parametrize("perturbation", list(PERTURBATIONS))
def test_sequential_net_batched_full_and_fallback_are_bit_identical(perturbation):
    x = torch.randn(60, 10, generator=gen(4), dtype=torch.float64)
    labels = torch.randint(0, 3, (60,), generator=gen(5))
    changed = []
    for layer, layers in (("relu1", None), ("all", ["relu2", "relu1"])):
        batched = curves(Chain(), x, layer, perturbation, layers, labels=labels)
        assert_identical(batched, "batched")
        fallback = curves(Chain(dynamic=True), x, layer, perturbation, layers, labels=labels)
        assert_identical(fallback, "full")
        np.testing.assert_array_equal(fallback["auto"].unchanged, batched["auto"].unchanged)
        changed.append(batched["full"].unchanged.min() < 1)
    assert any(changed)  # the comparison is not vacuous


@pytest.mark.parametrize("perturbation", list(PERTURBATIONS))
def test_residual_net_cuts_are_batched_and_the_inner_relu_falls_back_bit_identically(perturbation, resnet_data,
                                                                                    no_hooks_left):
    model, x = resnet_data
    labels = torch.randint(0, 4, (24,), generator=gen(6))
    weights = PERTURBATIONS[perturbation].weights
    cases = [("stem_relu", None, "batched"), ("stage1.relu", None, "full"),
             ("all", ["stem_relu", "stage1.relu"] if weights else ["stem_relu", "stage1.relu", "stage2"], "batched"),
             ("all", ["stage1.relu", "stage2.relu"], "full")]
    if not weights:
        cases.append(("stage1", None, "batched"))
    changed = []
    for layer, layers, path in cases:
        found = curves(model, x, layer, perturbation, layers, labels=labels)
        assert_identical(found, path)
        changed.append(found["full"].unchanged.min() < 1)
    assert any(changed)
    assert no_hooks_left(model)


@pytest.mark.parametrize("perturbation", ["zero", "mean", "targeted", "act_noise"])
def test_all_scope_continuing_its_first_layer_alone_is_bit_identical_and_cheaper(perturbation, resnet_data):
    model, x = resnet_data
    scope, levels = ["stem_relu", "stage1", "stage2"], check_levels(None, perturbation)
    runs = []
    handle = model.stage1.conv1.register_forward_hook(lambda *args: runs.append(1))  # inside the donated part
    try:
        shared = sweep(model, x, [(perturbation, ["stem_relu"], levels), (perturbation, scope, levels)],
                       samplings=2, seed=0, batch_size=10, ablations_per_eval=3)
        together = len(runs)
        apart = [perturbation_curve(model, x, "stem_relu", perturbation=perturbation, samplings=2, batch_size=10),
                 perturbation_curve(model, x, "all", layers=scope, perturbation=perturbation, samplings=2,
                                    batch_size=10)]
    finally:
        handle.remove()
    for curve, alone in zip(shared, apart):
        assert curve.path == alone.path == "batched"
        np.testing.assert_array_equal(curve.unchanged, alone.unchanged)
    assert together < 0.6 * (len(runs) - together)  # the "all" scope ran only the network after stage1


def test_skip_zero_inputs_matches_exact_evaluation(resnet_data, no_hooks_left):
    model, x = resnet_data
    for perturbation, layer, layers in (("zero", "all", ["stem_relu", "stage1.relu", "stage2"]),
                                        ("targeted", "stage1.relu", None), ("weight_knockout", "stem_relu", None)):
        exact = perturbation_curve(model, x, layer, perturbation=perturbation, layers=layers, samplings=2)
        skipping = perturbation_curve(model, x, layer, perturbation=perturbation, layers=layers, samplings=2,
                                      skip_zero_inputs=True, ablations_per_eval=3)
        np.testing.assert_array_equal(skipping.unchanged, exact.unchanged)  # float64: no near-ties flip
    assert no_hooks_left(model)


def testforward_skipping_zeros_drops_only_zero_channels():
    conv, linear = nn.Conv2d(5, 3, 3, padding=1).double(), nn.Linear(5, 3).double()
    images, rows = torch.randn(4, 5, 6, 6, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    images[:, [1, 3]] = 0
    rows[:, 2] = 0
    for module, x in ((conv, images), (linear, rows), (conv, torch.zeros_like(images))):
        torch.testing.assert_close(forward_skipping_zeros(module, x, module.weight),
                                   weighted_forward(module, x, module.weight), rtol=1e-12, atol=1e-12)


class FailsWhenPerturbed(Chain):
    """Raises on every forward pass after the first two (the probe and the clean pass)."""

    def forward(self, x):
        self.passes = getattr(self, "passes", 0) + 1
        if self.passes > 2:
            raise RuntimeError("boom")
        return super().forward(x)


@pytest.mark.parametrize("perturbation", ["zero", "weight_noise"])
def test_hooks_and_overrides_are_removed_after_an_error(perturbation, no_hooks_left):
    model = FailsWhenPerturbed().train()
    with pytest.raises(RuntimeError, match="boom"):
        perturbation_curve(model, torch.randn(5, 10, dtype=torch.float64), "relu1", perturbation=perturbation,
                           path="full", skip_zero_inputs=True)
    assert no_hooks_left(model) and model.training
