"""Models: width scaling, unit layers, and the initialisation schemes' known variances."""

import math
import sys
import textwrap

import pytest
import torch

from widthlab import WidthlabError, create_model, list_models
from widthlab.models import INIT_SCHEMES
from widthlab.init_schemes import init_tensor_
from widthlab.registry import Registry, call_user, check_kwargs, resolve_callable


@pytest.mark.parametrize("width,hidden", [(0.25, 32), (0.5, 64), (1, 128), (2, 256), (4, 512)])
def test_mlp_hidden_units_scale_with_width(width, hidden):
    model = create_model("mlp", width, input_dim=10)
    assert model.fc1.out_features == hidden
    assert model.unit_layers == ["relu1"]
    assert model(torch.randn(5, 10)).shape == (5, 2)
    assert sum(p.numel() for p in model.parameters()) == 10 * hidden + hidden + hidden * 2 + 2


def test_registry_lists_mlp():
    assert "mlp" in list_models()


@pytest.mark.parametrize("width", [0, -1, float("nan"), float("inf"), "2", True])
def test_bad_width_is_a_clear_error(width):
    with pytest.raises(WidthlabError, match="width must be a positive"):
        create_model("mlp", width)


def test_unknown_model_lists_registered():
    with pytest.raises(WidthlabError, match=r"unknown model 'mlpx'.*mlp"):
        create_model("mlpx")


def test_unknown_option_names_it_and_the_valid_ones():
    with pytest.raises(WidthlabError, match=r"'depth'.*valid: .*input_dim"):
        create_model("mlp", depth=3)


# Expected weight std for a (fan_out=400, fan_in=600) Linear weight under each scheme.
FAN_IN, FAN_OUT = 600, 400
EXPECTED_STD = {
    "normal": 0.05, "truncated_normal": 0.05 * 0.8796,  # std of N(0,1) truncated at ±2 is 0.8796
    "glorot_normal": math.sqrt(2 / (FAN_IN + FAN_OUT)), "glorot_uniform": math.sqrt(2 / (FAN_IN + FAN_OUT)),
    "lecun_normal": math.sqrt(1 / FAN_IN), "lecun_uniform": math.sqrt(1 / FAN_IN),
    "he_normal": math.sqrt(2 / FAN_IN), "he_uniform": math.sqrt(2 / FAN_IN),
}


@pytest.mark.parametrize("scheme", INIT_SCHEMES)
def test_init_scheme_has_its_standard_variance(scheme):
    weight = torch.empty(FAN_OUT, FAN_IN)
    sigma = 0.05 if scheme in ("normal", "truncated_normal") else None
    init_tensor_(weight, scheme, sigma, torch.Generator().manual_seed(0))
    assert weight.std().item() == pytest.approx(EXPECTED_STD[scheme], rel=0.02)
    assert weight.mean().item() == pytest.approx(0, abs=0.01 * EXPECTED_STD[scheme] * 10)
    if scheme.endswith("uniform"):
        assert weight.abs().max().item() <= math.sqrt(3) * EXPECTED_STD[scheme] + 1e-7
    if scheme == "truncated_normal":
        assert weight.abs().max().item() <= 2 * 0.05


def test_conv_fans_count_the_receptive_field():
    weight = torch.empty(64, 32, 5, 5)
    init_tensor_(weight, "he_normal", None, torch.Generator().manual_seed(0))
    assert weight.std().item() == pytest.approx(math.sqrt(2 / (32 * 25)), rel=0.02)


def test_init_is_seeded_and_biases_start_at_zero():
    a = create_model("mlp", 1, init="normal", sigma=0.1, seed=3)
    b = create_model("mlp", 1, init="normal", sigma=0.1, seed=3)
    c = create_model("mlp", 1, init="normal", sigma=0.1, seed=4)
    assert torch.equal(a.fc1.weight, b.fc1.weight)
    assert not torch.equal(a.fc1.weight, c.fc1.weight)
    assert a.fc1.weight.std().item() == pytest.approx(0.1, rel=0.05)
    assert torch.count_nonzero(a.fc1.bias) == 0 and torch.count_nonzero(a.readout.bias) == 0


def test_default_sigma_is_001():
    model = create_model("mlp", 4, init="normal", input_dim=100, seed=0)
    assert model.fc1.weight.std().item() == pytest.approx(0.01, rel=0.05)


@pytest.mark.parametrize("init,sigma,match", [("xavier", None, "unknown init 'xavier'"),
                                              ("he_normal", 0.1, "only applies"),
                                              ("normal", -0.1, "positive")])
def test_bad_init_is_a_clear_error(init, sigma, match):
    with pytest.raises(WidthlabError, match=match):
        create_model("mlp", init=init, sigma=sigma)


def test_user_model_by_module_function(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(textwrap.dedent("""
        from torch import nn
        def tiny(width=1.0, num_classes=3):
            model = nn.Sequential(nn.Linear(4, round(8 * width)), nn.ReLU(), nn.Linear(round(8 * width), num_classes))
            model.unit_layers = ["1"]
            return model
        def no_units(width=1.0):
            return nn.Linear(4, 2)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    model = create_model("my_models:tiny", 2.0, num_classes=3, init="he_uniform", seed=0)
    assert model[0].out_features == 16 and model(torch.randn(2, 4)).shape == (2, 3)
    with pytest.raises(WidthlabError, match="declares no `unit_layers`"):
        create_model("my_models:no_units")
    with pytest.raises(WidthlabError, match="no callable 'missing'"):
        create_model("my_models:missing")
    with pytest.raises(WidthlabError, match="cannot import module"):
        create_model("no_such_module_xyz:fn")
    sys.modules.pop("my_models", None)


def test_registry_registers_looks_up_and_lists_names():
    reg = Registry("widget")

    @reg.register
    def gadget(size=1):
        return size

    assert reg.lookup("gadget") is gadget and "gadget" in reg and reg.names() == ["gadget"]
    assert reg.lookup("math:sqrt") is math.sqrt  # a user's module:function resolves without registering
    with pytest.raises(WidthlabError, match=r"unknown widget 'gizmo'; registered: gadget \(or 'module:function'\)"):
        reg.lookup("gizmo")
    with pytest.raises(WidthlabError, match=r"widget 'gadget': unknown option\(s\) 'colour'; valid: size"):
        check_kwargs(gadget, {"colour": "red"}, "widget 'gadget'")
    with pytest.raises(WidthlabError, match="neither registered nor of the form 'module:function'"):
        resolve_callable(":sqrt", "widget")


def test_call_user_names_the_user_function_that_raised():
    def broken():
        raise KeyError("no such key")

    with pytest.raises(WidthlabError, match=r"widget 'mine:broken' raised KeyError: 'no such key'"):
        call_user(broken, "mine:broken", "widget")
    with pytest.raises(KeyError):  # a registered function's own error is a bug of ours: left as it is
        call_user(broken, "broken", "widget")
