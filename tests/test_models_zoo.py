"""The model zoo: every registered family builds, runs, scales with width, declares measurable unit layers and cuts."""

import functools
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from widthlab import WidthlabError, create_model, list_models, perturbation_curve
from widthlab.cli import main
from widthlab.models import INIT_SCHEMES
from widthlab.models.alexnet import tf_local_response_norm
from widthlab.models.inception import InceptionV3

# Per family: a small input (N = 2 is prepended) and the default number of classes.
SPECS = {
    "mlp": ((10,), 2),
    "alexnet_cifar": ((3, 32, 32), 10),
    "resnet56_cifar": ((3, 32, 32), 10),
    "resnet18_imagenet": ((3, 64, 64), 1000),
    "inception_v3": ((3, 75, 75), 1000),
    "inception_v3_mixed5d": ((3, 75, 75), 1000),
}
CHEAP_AT_4X = ("mlp", "alexnet_cifar", "resnet56_cifar")
RUNS = [(name, w) for name in SPECS for w in ((0.25, 1.0, 4.0) if name in CHEAP_AT_4X else (0.25, 1.0))]
WIDTHS = (0.25, 0.5, 1.0, 2.0, 4.0)


# Tiny models run fastest on one thread (the fixture is in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def example(name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(2, *SPECS[name][0], generator=torch.Generator().manual_seed(0), dtype=dtype)


def n_params(name: str, width: float, **kw) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in create_model(name, width, **kw).parameters())


@functools.cache
def traced(name: str, width: float) -> tuple[torch.Size, list[str], dict[str, torch.Size], Counter]:
    """One eval forward pass: output shape, unit layers, each unit layer's output shape, and calls per module."""
    model = create_model(name, width, seed=0).eval()
    shapes, calls = {}, Counter()

    def hook(module_name):
        def record(module, args, output):
            calls[module_name] += 1
            if module_name in model.unit_layers:
                shapes[module_name] = output.shape
        return record

    for module_name, module in model.named_modules():
        module.register_forward_hook(hook(module_name))
    with torch.no_grad():
        out = model(example(name))
    return out.shape, model.unit_layers, shapes, calls


def test_every_registered_model_has_a_test_input():
    assert set(list_models()) == set(SPECS)


@pytest.mark.parametrize("name,width", RUNS)
def test_forward_gives_scores_and_hookable_unit_layers(name, width):
    out_shape, unit_layers, shapes, calls = traced(name, width)
    assert out_shape == (2, SPECS[name][1])
    assert unit_layers and set(shapes) == set(unit_layers)
    for layer, shape in shapes.items():
        assert len(shape) >= 2 and shape[0] == 2, layer  # (N, C, ...): units on axis 1
    # Every module runs exactly once, so each has one output to measure (no shared ReLU, nothing unused).
    assert set(calls.values()) == {1}, {m: c for m, c in calls.items() if c != 1}


@pytest.mark.parametrize("name", SPECS)
def test_unit_layer_channels_scale_with_width(name):
    one = {layer: shape[1] for layer, shape in traced(name, 1.0)[2].items()}
    scaled = {"Mixed_5d"} if name == "inception_v3_mixed5d" else set(one)
    for width in (0.25, 4.0) if name in CHEAP_AT_4X else (0.25,):
        channels = {layer: shape[1] for layer, shape in traced(name, width)[2].items()}
        # Every 1x count of the zoo is a multiple of 4, so 1/4x and 4x are exact.
        assert channels == {layer: c * width if layer in scaled else c for layer, c in one.items()}


@pytest.mark.parametrize("name", SPECS)
def test_parameter_count_grows_with_width(name):
    counts = [n_params(name, w) for w in WIDTHS]
    assert all(a < b for a, b in zip(counts, counts[1:])), counts


def test_parameter_counts_at_1x_known_answers():
    # AlexNet: conv1 5·5·3·96 + 96; conv2 5·5·96·256 + 256; fc1 (256 · 8 · 8)·384 + 384 after two 3×3/2 pools
    # of 32×32 (32 → 16 → 8); fc2 384·192 + 192; readout 192·10 + 10.
    alexnet = (5 * 5 * 3 * 96 + 96) + (5 * 5 * 96 * 256 + 256) + (256 * 8 * 8 * 384 + 384) + (384 * 192 + 192) \
        + (192 * 10 + 10)
    assert n_params("alexnet_cifar", 1.0) == alexnet == 6_989_642

    # ResNet56: bias-free convs, BN has 2 parameters per channel; a block of c → c is 2 · 9c² + 2 · 2c.
    def block(cin, c):
        projection = cin * c + 2 * c if cin != c else 0  # 1×1 conv + BN where the shape changes (option B)
        return 9 * cin * c + 2 * c + 9 * c * c + 2 * c + projection

    stem = 9 * 3 * 16 + 2 * 16
    stages = 9 * block(16, 16) + block(16, 32) + 8 * block(32, 32) + block(32, 64) + 8 * block(64, 64)
    assert n_params("resnet56_cifar", 1.0) == stem + stages + (64 * 10 + 10) == 855_770
    # torchvision's resnet18() and inception_v3(aux_logits=False, init_weights=False) have these counts.
    assert n_params("resnet18_imagenet", 1.0) == 11_689_512
    assert n_params("inception_v3", 1.0) == 23_834_568
    assert n_params("inception_v3", 4.0) == 356_338_536  # counted on the meta device: no memory


def test_lrn_matches_tensorflows_formula():
    x = 60 * torch.randn(2, 7, 3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for radius, alpha, beta, bias in ((2, 2e-5, 0.75, 1.0), (1, 1e-3, 0.5, 2.0)):
        # TF: sqr_sum[c] = Σ_{j = c − r}^{c + r} x[j]² (channels beyond the edges absent); x / (bias + α sqr_sum)^β
        sqr = x.square()
        sqr_sum = torch.stack([sqr[:, max(0, c - radius):c + radius + 1].sum(1) for c in range(x.shape[1])], dim=1)
        expected = x / (bias + alpha * sqr_sum) ** beta
        torch.testing.assert_close(tf_local_response_norm(radius, alpha, beta, bias)(x), expected,
                                   rtol=1e-12, atol=0)
        assert not torch.allclose(expected, x, rtol=0.05)  # the inputs are large enough for LRN to matter


@pytest.mark.parametrize("width", [0.25, 4.0])
def test_mixed5d_variant_changes_only_mixed5d_and_the_inputs_reading_it(width):
    with torch.device("meta"):
        base = {n: p.shape for n, p in create_model("inception_v3", 1.0).named_parameters()}
        variant = create_model("inception_v3_mixed5d", width)
    shapes = {n: p.shape for n, p in variant.named_parameters()}
    assert variant.Mixed_5d.out_channels == 288 * width
    assert shapes.keys() == base.keys()
    changed = {n for n in base if shapes[n] != base[n]}
    assert {n.split(".")[0] for n in changed} == {"Mixed_5d", "Mixed_6a", "Mixed_6b"}
    for n in changed - {n for n in changed if n.startswith("Mixed_5d.")}:
        # Mixed_6a's max-pool branch passes Mixed_5d's channels on, so Mixed_6b's input widens too; only the
        # input-channel axis of the convs reading them differs.
        assert n.endswith(".conv.weight") and shapes[n][0] == base[n][0] and shapes[n][2:] == base[n][2:], n
    assert variant.Mixed_6b.out_channels == 768


@pytest.mark.parametrize("name", [n for n in SPECS if n != "mlp"])
def test_every_declared_cut_resumes_the_forward_pass_exactly(name):
    model = create_model(name, 0.25, seed=0).double().eval()
    x = example(name, torch.float64)
    assert set(model.unit_layers) <= set(model.cut_layers)
    captured = {}
    handles = [getattr(model, layer).register_forward_hook(
        lambda module, args, output, layer=layer: captured.__setitem__(layer, output)) for layer in model.cut_layers]
    with torch.no_grad():
        out = model(x)
        for handle in handles:
            handle.remove()
        for layer in model.cut_layers:
            assert torch.equal(model.forward_from(layer, captured[layer]), out), layer
    with pytest.raises(WidthlabError, match="not a cut"):
        model.forward_from("no_such_layer", x)


def test_zoo_cuts_take_the_batched_ablation_path():
    for name, layer, layers in (("alexnet_cifar", "all", None), ("resnet56_cifar", "stage2", None)):
        model = create_model(name, 0.25, seed=0).double()
        x = torch.randn(6, *SPECS[name][0], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        kw = dict(layers=layers, levels=[0.0, 0.5, 1.0], samplings=2)
        batched, full = (perturbation_curve(model, x, layer, path=path, **kw) for path in ("auto", "full"))
        assert batched.path == "batched"
        np.testing.assert_array_equal(batched.unchanged, full.unchanged)


@pytest.mark.parametrize("name", SPECS)
def test_every_init_scheme_initialises_every_model(name):
    for scheme in INIT_SCHEMES:
        sigma = 0.05 if scheme in ("normal", "truncated_normal") else None
        model = create_model(name, 0.25, init=scheme, sigma=sigma, seed=0)
        for module_name, module in model.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                assert torch.isfinite(module.weight).all() and module.weight.std() > 0, (scheme, module_name)
                assert module.bias is None or not module.bias.any(), (scheme, module_name)
            elif isinstance(module, nn.BatchNorm2d):
                assert (module.weight == 1).all() and not module.bias.any(), (scheme, module_name)


def test_alexnet_options():
    model = create_model("alexnet_cifar", 0.5, input_size=28, seed=0)
    assert model.fc1.in_features == 128 * 7 * 7  # 28 → 14 → 7
    assert model(torch.randn(2, 3, 28, 28)).shape == (2, 10)
    model = create_model("alexnet_cifar", 0.25, dropout=0.5, seed=0)
    x = example("alexnet_cifar")
    assert not torch.equal(model.train()(x), model(x))  # dropout is active in training
    assert torch.equal(model.eval()(x), model(x))
    assert len(create_model("resnet56_cifar", 0.25, depth=20).stage3) == 3  # (20 − 2) / 6 blocks


@pytest.mark.parametrize("name,kw,match", [
    ("alexnet_cifar", {"dropout": 1.0}, "dropout must be a probability"),
    ("alexnet_cifar", {"input_size": 0}, "input_size must be a positive integer"),
    ("resnet56_cifar", {"depth": 57}, "depth must be 6n"),
    ("resnet18_imagenet", {"num_classes": 0}, "num_classes must be a positive integer"),
    ("inception_v3", {"dropout": -0.1}, "dropout must be a probability"),
])
def test_bad_architecture_options_are_clear_errors(name, kw, match):
    with pytest.raises(WidthlabError, match=match):
        create_model(name, **kw)


def test_scale_only_names_a_layer_of_the_network():
    with pytest.raises(WidthlabError, match="scale_only must be one of.*Mixed_5d"):
        InceptionV3(10, 2.0, scale_only="Mixed_9z")


def test_models_command_lists_every_model_at_every_width(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + len(list_models())
    assert "4x" in lines[0]
    assert any(line.startswith("inception_v3 ") and line.endswith("356,338,536") for line in lines)
