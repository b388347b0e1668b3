"""The CUDA path proven without a GPU: every decision a GPU takes, taken on the CPU standing in for it.

``WIDTHLAB_CUDA_STANDIN=1`` (`widthlab.train.standin`) makes the ``auto`` switches, the stacked-training rules
and the stacked check's tolerance resolve as on CUDA while the tensors stay on the CPU, and `emulate_tf32` gives
the CPU the GPU's TF32 rounding. torch.compile runs with the ``eager`` / ``aot_eager`` backends or a counting one
here: what is tested is which runs compile, and how often, not inductor's kernels.
"""

import copy
import logging

import pytest
import torch

import widthlab.train.loop as loop
from widthlab import create_model, fit, load_data
from widthlab.study import load_config, load_results, run_study
from widthlab.train import TrainConfig
from widthlab.train.loop import Speed
from widthlab.train.stacked import check_stacked, stack_models
from widthlab.train.standin import STANDIN_ENV, emulate_tf32, round_tf32, uses_tf32

LIMIT = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"


def test_tf32_rounding_keeps_ten_mantissa_bits():
    x = torch.tensor([1.0, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 1 + 2 ** -10, -(1 + 2 ** -12), torch.finfo(torch.float32).max, float("inf"),
                      float("nan")])
    rounded = round_tf32(x)
    # ties go to even; one unit in the 10th bit is kept; the largest floats round up to infinity as TF32 has it
    assert rounded[:5].tolist() == [1.0, 1.0, 1 + 2 ** -9, 1 + 2 ** -10, -1.0]
    assert rounded[5] == float("inf") and rounded[6] == float("inf") and rounded[7].isnan()
    a, b = torch.randn(2, 64, 64, generator=torch.Generator().manual_seed(0))
    with emulate_tf32():
        product = a @ b
    assert torch.equal(product, round_tf32(a) @ round_tf32(b)) and not torch.equal(product, a @ b)


def test_standin_resolves_every_auto_switch_as_cuda(monkeypatch):
    auto, cpu, cuda = TrainConfig(), torch.device("cpu"), torch.device("cuda")
    assert Speed.resolve(auto, cpu) == Speed(False, False, False, False, workers=0, pin_memory=False)
    monkeypatch.setenv(STANDIN_ENV, "1")
    for steps in (None, 10, loop.COMPILE_MIN_STEPS):
        assert Speed.resolve(auto, cpu, steps=steps) == Speed.resolve(auto, cuda, steps=steps)
    assert Speed.resolve(auto, cpu).pin_memory and Speed.resolve(auto, cpu).amp
    assert uses_tf32(cpu)
    monkeypatch.setenv(STANDIN_ENV, "0")
    assert not Speed.resolve(auto, cpu).amp and not uses_tf32(cpu)


def test_tf32_follows_torch_settings_on_cuda(monkeypatch):
    cuda, matmul = torch.device("cuda"), torch.backends.cuda.matmul
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    before = matmul.allow_tf32
    try:
        matmul.allow_tf32 = False
        assert not uses_tf32(cuda)
        matmul.allow_tf32 = True
        assert uses_tf32(cuda)
        matmul.allow_tf32 = False
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # torch's default: TF32 convolutions
        assert uses_tf32(cuda)
    finally:
        matmul.allow_tf32 = before


def _alexnets(count, seed=0):
    return [create_model("alexnet_cifar", 0.25, input_size=16, seed=seed + r) for r in range(count)]


def test_stacked_check_takes_tf32_rounding_and_still_catches_wrong_weights(monkeypatch):
    nets = _alexnets(3)
    x = torch.randn(24, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    stacked = stack_models(nets, grouped=True)  # one grouped convolution for all members: CUDA's form
    with emulate_tf32():
        # float32's promise (1e-5) is more than TF32 keeps: one rounding step is 2^-11 of an input
        assert "member 0 differs" in check_stacked(stacked, nets, x)
        monkeypatch.setenv(STANDIN_ENV, "1")  # now the device says TF32: the check promises what TF32 keeps
        assert check_stacked(stacked, nets, x) is None
        wrong = [nets[0], _alexnets(1, seed=7)[0], nets[2]]  # member 1 computed with another net's weights
        assert "member 1 differs" in check_stacked(stacked, wrong, x)
        nudged = copy.deepcopy(nets)
        with torch.no_grad():
            nudged[2].fc2.weight.mul_(1.05)  # a 5% error in one layer is caught too
        assert "member 2 differs" in check_stacked(stacked, nudged, x)


def _synthetic():
    return load_data("synthetic", input_dim=10, n_train=96, n_val=32, n_test=32, seed=0)


def test_every_run_compiles_its_own_graph(monkeypatch, caplog):
    """Parameter shapes are guards: without a fresh start per run, Dynamo stops compiling at its recompile limit
    (8 graphs of one code object; 2 here) and trains every later width eagerly, silently."""
    compiled = []

    def counting(gm, example_inputs):
        compiled[-1] += 1
        return gm.forward

    monkeypatch.setattr(loop, "_compile_backend", counting)
    splits = _synthetic()
    with caplog.at_level(logging.INFO, logger="widthlab"), torch._dynamo.config.patch(**{LIMIT: 2}):
        for width in (0.25, 0.5, 0.75, 1.0):
            compiled.append(0)
            fit(create_model("mlp", width, input_dim=10), splits, TrainConfig(epochs=1, batch_size=32, compile="on"))
    assert all(count >= 1 for count in compiled), compiled
    assert [r.getMessage() for r in caplog.records].count("torch.compile: the run's full batches ran compiled") == 4


class _NoGraph(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(10, 2)

    @torch.compiler.disable
    def forward(self, x):
        return self.fc(x)


def test_a_run_asked_to_compile_that_runs_eagerly_says_so(monkeypatch, caplog):
    monkeypatch.setattr(loop, "_compile_backend", "eager")
    with caplog.at_level(logging.INFO, logger="widthlab"):
        result = fit(_NoGraph(), _synthetic(), TrainConfig(epochs=1, batch_size=32, compile="on"))
    assert result.status == "done"
    assert any("ran eagerly" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


STANDIN_ALEXNETS = ["data={name: digits, image_size: 16, n_train: 64, n_val: 32, n_test: 32, augment: false}",
                    "model={name: alexnet_cifar, input_size: 16}", "grid.widths=[0.125]", "grid.replicates=2",
                    "grid.variants={'default': {}}", "grid.select=null", "train.epochs=1", "train.batch_size=32",
                    "train.eval_batch_size=32", "measure.levels=3", "measure.samplings=1", "measure.max_rows=200"]


def test_a_tiny_study_through_the_cuda_standin(cuda_path, monkeypatch, tmp_path, caplog):
    """Every CUDA branch at once on the CPU: bf16 autocast, data on the device, compile: auto's step rule, two
    replicate AlexNets stacked with grouped convolutions past the TF32 check, compiled as one model; then the
    same runs one by one (channels_last, each run compiled)."""
    from widthlab.study import runs

    stacked = []
    real = runs.fit_group
    monkeypatch.setattr(runs, "fit_group", lambda models, *a, **k: stacked.append(len(models)) or real(models, *a, **k))
    monkeypatch.setattr(loop, "COMPILE_MIN_STEPS", 2)  # the tiny run's 2 steps count as long: compile: auto compiles
    monkeypatch.setattr(loop, "_compile_backend", "eager")
    with caplog.at_level(logging.INFO, logger="widthlab"):
        run_study(load_config("alexnet-inits", [*STANDIN_ALEXNETS, f"train.device={cuda_path}"]), tmp_path / "s",
                  progress=False, report=False)
    messages = [r.getMessage() for r in caplog.records]
    assert stacked == [2], messages
    assert any("train stacked" in m and "compiled" in m for m in messages), messages
    runs_frame = load_results(tmp_path / "s").runs
    assert (runs_frame.status == "done").all() and len(runs_frame) == 2
    assert not load_results(tmp_path / "s").metrics.empty

    layouts = []
    real_fit = runs.fit

    def spy_fit(model, *args, **kwargs):  # the batches reach the lone model's first convolution channels_last
        model.conv1.register_forward_pre_hook(
            lambda module, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
            if module.training else None)
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(runs, "fit", spy_fit)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="widthlab"):
        run_study(load_config("alexnet-inits", [*STANDIN_ALEXNETS, f"train.device={cuda_path}",
                                                "train.vectorize=off"]), tmp_path / "alone", progress=False,
                  report=False)
    messages = [r.getMessage() for r in caplog.records]
    assert stacked == [2] and layouts and all(layouts)
    assert messages.count("torch.compile: the run's full batches ran compiled") == 2, messages
    assert (load_results(tmp_path / "alone").runs.status == "done").all()


def test_a_compiled_group_trains_stacked_like_its_runs_alone(monkeypatch, caplog):
    """compile: auto compiles nearly every long CUDA run; stacking must not turn itself off for them: the stacked
    model is compiled (here with AOTAutograd's graphs, which take the stacked layers' own backward)."""
    from widthlab.train.vectorized import fit_group

    monkeypatch.setattr(loop, "_compile_backend", "aot_eager")
    splits = load_data("synthetic", input_dim=10, n_train=200, n_val=50, n_test=50, seed=0)
    models = [create_model("mlp", 0.25, init="normal", sigma=0.1, seed=r, input_dim=10) for r in range(3)]
    alone = [copy.deepcopy(m) for m in models]
    cfgs = [TrainConfig(lr=0.05, epochs=2, seed=r, compile="on") for r in range(3)]
    expected = [fit(m, splits, c.model_copy(update={"compile": "off"})) for m, c in zip(alone, cfgs)]
    with caplog.at_level(logging.INFO, logger="widthlab"):
        together = fit_group(models, splits, cfgs)
    messages = [r.getMessage() for r in caplog.records]
    assert "3 runs train stacked as one model, compiled (stacking and torch.compile compose)" in messages
    assert "torch.compile: the stacked runs' full batches ran compiled" in messages
    for a, b in zip(expected, together):
        assert [h["loss"] for h in a.history] == [pytest.approx(h["loss"], rel=1e-5) for h in b.history]
        assert a.test_acc == b.test_acc
    for a, b in zip(alone, models):
        for x, y in zip(a.state_dict().values(), b.state_dict().values()):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
