"""widthlab on torchvision and timm models: default layers, unit axes, `analyze` and `widthlab analyze NAME`.

Every model is built with random weights (nothing is downloaded), seeded with ``torch.manual_seed(0)``, in eval
mode. These tests need torchvision and timm, which do not import beside the main environment's torch: they skip
there, and CI runs them in their own environment (`.venv-hub`, see `.ci/run`) with ``pytest -m hub``.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

import widthlab
from widthlab.cli import main

pytestmark = [pytest.mark.hub, pytest.mark.usefixtures("one_thread")]  # one_thread: conftest.py

# hub:name -> side of the square test images (the CNNs run at 64 to stay fast; timm's ViT needs its 224).
SIDES = {
    "torchvision:resnet18": 64,
    "torchvision:mobilenet_v3_small": 64,
    "timm:resnet18": 64,
    "timm:vit_tiny_patch16_224": 224,
}
SPECS = list(SIDES)
N = 4  # images per test input


def hub_package(hub: str):
    """The imported hub package, or a skip: not installed, or installed for another torch (fails at import)."""
    try:
        return pytest.importorskip(hub)
    except Exception as exc:  # e.g. torchvision built for another torch raises a RuntimeError at import
        pytest.skip(f"{hub} is installed but does not import here ({type(exc).__name__}: {exc})")


@functools.cache
def _build(spec: str) -> nn.Module:
    hub, name = spec.split(":")
    package = hub_package(hub)
    torch.manual_seed(0)
    if hub == "torchvision":
        model = package.models.get_model(name, weights=None)
    else:
        model = package.create_model(name, pretrained=False)
    return model.eval()


def case(spec: str) -> tuple[nn.Module, torch.Tensor]:
    """The model named by `spec` (built once per session) and N random images of its side."""
    side = SIDES[spec]
    x = torch.randn(N, 3, side, side, generator=torch.Generator().manual_seed(1))
    return _build(spec), x


def expected_layers(spec: str, model: nn.Module) -> list[str]:
    """The layers `default_layers` should find, in module order."""
    if spec == "torchvision:resnet18":
        # BasicBlock applies its one ReLU module twice; the block's output (that ReLU after the sum) stands in.
        return ["relu"] + [f"layer{stage}.{block}" for stage in range(1, 5) for block in range(2)]
    if spec == "torchvision:mobilenet_v3_small":
        from torchvision.ops.misc import SqueezeExcitation

        # Squeeze-excitation activations act on (N, C, 1, 1) pooled gates, not on units: left out.
        gates = [name for name, module in model.named_modules() if isinstance(module, SqueezeExcitation)]
        return [name for name, module in model.named_modules()
                if isinstance(module, (nn.Hardswish, nn.ReLU)) and not any(name.startswith(g + ".") for g in gates)]
    if spec == "timm:resnet18":
        # timm's BasicBlock has separate act1 / act2 modules (act2 after the residual sum).
        return ["act1"] + [f"layer{stage}.{block}.act{k}" for stage in range(1, 5) for block in range(2)
                           for k in (1, 2)]
    if spec == "timm:vit_tiny_patch16_224":
        return [f"blocks.{i}.mlp.act" for i in range(12)]
    raise AssertionError(spec)


def layer_outputs(model: nn.Module, x: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
    """Each layer's output on `x`, read with plain forward hooks (the reference for `capture`)."""
    outputs: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(
        lambda module, args, output, name=name: outputs.__setitem__(name, output.detach().clone()))
        for name in layers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def as_rows(output: torch.Tensor) -> torch.Tensor:
    """The (rows, units) matrix the unit-axis rule gives: axis 1 of conv maps (N, C, H, W), else the last axis."""
    if output.dim() == 4:
        return output.movedim(1, -1).reshape(-1, output.shape[1])
    return output.reshape(-1, output.shape[-1])


@pytest.mark.parametrize("spec", SPECS)
def test_default_layers_of_hub_models(spec):
    model, x = case(spec)
    expected = expected_layers(spec, model)
    if spec == "torchvision:mobilenet_v3_small":
        assert len(expected) == 24 and expected[0] == "features.0.2" and expected[-1] == "classifier.1"
        assert not any("activation" in name for name in expected)  # SqueezeExcitation.activation / scale_activation
    assert widthlab.measure.default_layers(model, x) == expected


@pytest.mark.parametrize("spec", SPECS)
def test_capture_decides_the_unit_axis_by_rule(spec):
    model, x = case(spec)
    layers = expected_layers(spec, model)
    reference = layer_outputs(model, x, layers)
    got = widthlab.capture(model, x, layers)
    assert list(got) == layers
    for name in layers:
        want = as_rows(reference[name])
        assert tuple(got[name].shape) == tuple(want.shape), name
        torch.testing.assert_close(got[name], want, rtol=1e-5, atol=1e-5, msg=name)
    side = SIDES[spec]
    if spec == "timm:vit_tiny_patch16_224":
        # fc1 -> GELU: the last axis is the unit axis; rows are the 196 patch tokens plus the class token.
        assert tuple(got["blocks.0.mlp.act"].shape) == (N * 197, 768)
    elif spec == "torchvision:resnet18":
        assert tuple(got["relu"].shape) == (N * (side // 2) ** 2, 64)
        assert tuple(got["layer1.0"].shape) == (N * (side // 4) ** 2, 64)
        assert tuple(got["layer4.1"].shape) == (N * (side // 32) ** 2, 512)
    elif spec == "timm:resnet18":
        assert tuple(got["layer1.0.act2"].shape) == (N * (side // 4) ** 2, 64)
    elif spec == "torchvision:mobilenet_v3_small":
        assert tuple(got["features.0.2"].shape) == (N * (side // 2) ** 2, 16)
        assert tuple(got["classifier.1"].shape) == (N, 1024)


@pytest.mark.parametrize("spec", SPECS)
def test_analyze_hub_models(spec):
    model, x = case(spec)
    layers = expected_layers(spec, model)
    frame = widthlab.analyze(model, x, samplings=1, levels=[0, 0.5, 1], null_rows=None)
    assert set(frame["layer"]) == {*layers, "all"}
    units = {name: as_rows(out).shape[1] for name, out in layer_outputs(model, x, layers).items()}
    n_units = frame.query("metric == 'n_units'").set_index("layer")["value"]
    assert n_units.to_dict() == {name: float(u) for name, u in units.items()}
    auc = frame.query("metric == 'auc'").set_index("layer")["value"]
    assert set(auc.index) == {*layers, "all"}
    assert all(0 <= v <= 1 for v in auc)
    unchanged = frame.query("metric == 'unchanged'")
    assert sorted(set(unchanged["level"])) == [0, 0.5, 1]
    assert len(unchanged) == 3 * (len(layers) + 1)
    assert all(0 <= v <= 1 for v in unchanged["value"])
    assert all(math.isfinite(v) for v in frame.query("metric == 'compressibility'")["value"])


def test_cli_analyze_hub_model_is_seeded(tmp_path):
    """`widthlab analyze torchvision:resnet18 --seed 0` twice: the same CSV, whatever torch's global RNG holds."""
    hub_package("torchvision")
    args = ["analyze", "torchvision:resnet18", "--data", "digits", "--data-opt", "image_size=64",
            "--data-opt", "n_test=20", "--levels", "3", "--samplings", "1", "--seed", "0"]
    tables = []
    for run, global_seed in enumerate((1, 2)):
        torch.manual_seed(global_seed)  # the hub model's random weights must come from --seed, not from here
        out = tmp_path / f"run{run}"
        assert main([*args, "--out", str(out)]) == 0
        tables.append((out / "analysis.csv").read_text())
    assert tables[0] == tables[1]
    assert "layer1.0" in tables[0] and "layer4.1" in tables[0]


@pytest.mark.parametrize("spec", SPECS)
def test_cka_of_hub_models_takes_the_default_layers_and_their_reduction(spec):
    """`widthlab.cka` on torchvision/timm models: the layers `analyze` measures, conv maps flattened and ViT token
    layers averaged over tokens, each layer CKA 1 with itself and the matrix symmetric."""
    model, x = case(spec)
    x = torch.cat([x, x.flip(0) * 0.5])  # 8 images: two batches of 4, the smallest the estimator takes
    layers = expected_layers(spec, model)
    frame = widthlab.cka(model, None, x, batch_size=4)
    assert set(frame["layer_a"]) == set(layers) and len(frame) == len(layers) ** 2
    reductions = set(frame["reduction_a"])
    expected = "token_mean" if "vit" in spec else "flatten"  # pooled heads give (N, C) rows: "example"
    assert expected in reductions and reductions <= {expected, "example"}
    table = frame.pivot(index="layer_a", columns="layer_b", values="cka")
    diagonal = [table.loc[name, name] for name in layers]
    assert all(abs(v - 1) < 1e-6 for v in diagonal)
    assert (table - table.T).abs().max().max() < 1e-9


def test_compress_a_torchvision_resnet18_through_its_residual_couplings():
    """A real residual model: torchvision's ResNet18 compressed (channels coupled by the residual adds go through
    Torch-Pruning) runs, has fewer parameters, and its table's agreement is the returned model's, checked by hand."""
    pytest.importorskip("torch_pruning")
    model, _ = case("torchvision:resnet18")
    x = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    result = widthlab.compress(model, x, keep=0.5, method="prune", importance="magnitude")  # analyze's layers
    table = result.table
    assert (table["units_after"] < table["units_before"]).any()
    assert int(table["params_after"].iloc[0]) < int(table["params_before"].iloc[0])
    assert sum(p.numel() for p in result.model.parameters()) == int(table["params_after"].iloc[0])
    with torch.no_grad():
        agreement = float((result.model.eval()(x).argmax(1) == model(x).argmax(1)).float().mean())
    assert table["agreement"].iloc[0] == pytest.approx(agreement)
