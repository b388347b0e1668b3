"""The GPU path's switches (bf16 autocast, channels_last, torch.compile, data on the device).

On the CPU every switch can be turned ``on``: these tests prove each one is really applied and keeps the
trainer's semantics. The tests marked ``cuda`` run the automatic GPU path itself (on one: ``pytest -m cuda``);
without a GPU those that can run through the CPU standing in for CUDA (the ``cuda_path`` fixture), the rest
are skipped.
"""

import pytest
import torch

import widthlab.train.batching as batching
import widthlab.train.loop as loop
from widthlab import TrainConfig, analyze, create_model, fit, load_data
from widthlab.data import ArrayDataset, Splits
from widthlab.train.loop import Speed

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def images():
    """Noisy images of 10 fixed random patterns, labelled by pattern: learnable in a few epochs, not trivially."""
    gen = torch.Generator().manual_seed(0)
    patterns = torch.randn(10, 3, 16, 16, generator=gen)
    y = torch.randint(0, 10, (300,), generator=gen)
    x = torch.randn(300, 3, 16, 16, generator=gen) + 0.5 * patterns[y]
    return Splits(ArrayDataset(x[:200], y[:200]), ArrayDataset(x[200:250], y[200:250]),
                  ArrayDataset(x[250:], y[250:]), num_classes=10, input_shape=(3, 16, 16))


def alexnet():
    return create_model("alexnet_cifar", 0.25, input_size=16, seed=0)


def train(splits, model=None, **switches):
    model = alexnet() if model is None else model
    cfg = TrainConfig(lr=0.01, batch_size=64, epochs=2, **switches)  # 200 examples: 3 full batches and one of 8
    return model, fit(model, splits, cfg)


def weights(model):
    return torch.cat([p.detach().flatten().float().cpu() for p in model.parameters()])


def test_auto_switches_are_on_for_cuda_and_off_for_the_cpu():
    auto = TrainConfig()
    cuda = Speed.resolve(auto, torch.device("cuda"))
    assert (cuda.amp, cuda.channels_last, cuda.compile, cuda.data_on_device, cuda.pin_memory) == (True,) * 5
    assert 1 <= cuda.workers <= 8  # decoding processes for lazy data sets
    assert Speed.resolve(auto, torch.device("cpu")) == Speed(False, False, False, False, workers=0, pin_memory=False)
    # compile: auto only pays for long runs (compilation costs tens of seconds per run)
    assert not Speed.resolve(auto, torch.device("cuda"), steps=loop.COMPILE_MIN_STEPS - 1).compile
    assert Speed.resolve(auto, torch.device("cuda"), steps=loop.COMPILE_MIN_STEPS).compile
    assert Speed.resolve(TrainConfig(compile="on"), torch.device("cuda"), steps=10).compile
    assert Speed.resolve(auto, torch.device("cuda"), steps=10).amp  # the other switches do not depend on it
    forced = TrainConfig(amp="on", channels_last="off", compile="on", data_on_device="off", num_workers=3)
    assert Speed.resolve(forced, torch.device("cpu")) == Speed(True, False, True, False, workers=3)
    assert Speed.resolve(forced, torch.device("cuda")) == Speed(True, False, True, False, workers=3, pin_memory=True)


def test_batch_plan_shards_partition_every_global_batch():
    order = torch.randperm(23, generator=torch.Generator().manual_seed(0))
    seeds = torch.arange(100, 123)
    plans = [list(batching.BatchPlan(order, 8, (rank, 3), seeds)) for rank in range(3)]
    assert all(len(plan) == 3 for plan in plans)  # ceil(23 / 8) global batches on every process
    for b in range(3):
        shares = [plan[b] for plan in plans]
        assert [i for share in shares for i, _ in share] == order[8 * b:8 * b + 8].tolist()
        assert all(s == 100 + i for share in shares for i, s in share)  # each item keeps its own seed
    assert list(batching.BatchPlan(order, 8, (0, 1), None))[0] == order[:8].tolist()


def test_a_last_batch_too_small_to_share_is_skipped_under_several_processes():
    order = torch.arange(17)  # batches of 8, 8 and 1: the 1 cannot be shared by 3 processes
    assert [len(list(batching.BatchPlan(order, 8, (rank, 3), None))) for rank in range(3)] == [2, 2, 2]
    assert len(list(batching.BatchPlan(order, 8, (0, 1), None))) == 3  # one process keeps every example
    assert list(batching.global_batches(19, 8, 3)) == [0, 8, 16]  # 3 left over: one each
    data = ArrayDataset(torch.randn(17, 2), torch.arange(17))
    shares = [list(batching.iterate_batches(data, 8, shuffle=False, shard=(rank, 3))) for rank in range(3)]
    assert all(len(batches) == 2 for batches in shares)
    assert sorted(int(y) for batches in shares for _, ys in batches for y in ys) == list(range(16))


def test_bad_compile_mode_is_rejected():
    with pytest.raises(ValueError, match="compile_mode"):
        TrainConfig(compile_mode="fastest")


def test_data_on_device_gives_the_same_weights(images, monkeypatch):
    from widthlab.train import loop

    moved = []
    real = loop.on_device

    def spy(dataset, device):
        out = real(dataset, device)
        moved.append((dataset, out, device))
        return out

    monkeypatch.setattr(loop, "on_device", spy)
    plain, _ = train(images)
    assert moved == []  # `auto` is off on the CPU
    resident, _ = train(images, data_on_device="on")
    (source, out, device), = moved  # the training split, moved once to the training device
    assert source is images.train and out is not source and out.x.device == device
    assert torch.equal(out.x, source.x) and torch.equal(out.y, source.y)
    assert torch.equal(weights(plain), weights(resident))
    lazy = torch.utils.data.TensorDataset(source.x, source.y)
    assert real(lazy, device) is lazy  # a data set not held as x/y tensors is left as it is


def test_channels_last_is_applied_and_keeps_the_numbers(images):
    plain, expected = train(images)
    model, result = train(images, channels_last="on")
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert result.status == "done"
    # Other summation orders in the convolutions: equal up to round-off grown over 8 steps, not bit for bit.
    torch.testing.assert_close(weights(model), weights(plain), rtol=1e-3, atol=1e-3)
    for ours, reference in zip(result.history, expected.history):
        assert ours["loss"] == pytest.approx(reference["loss"], rel=1e-4)


def test_bf16_autocast_runs_the_convolutions_in_bf16_and_trains(images):
    dtypes = []
    model = alexnet()
    model.conv1.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype) if module.training else None)
    _, fp32 = train(images)
    _, result = train(images, model=model, amp="on")
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    assert result.status == "done"
    # bf16 has 8 mantissa bits: the epoch losses agree with fp32 to about 1%, not exactly.
    for ours, reference in zip(result.history, fp32.history):
        assert ours["loss"] == pytest.approx(reference["loss"], rel=0.02)


def test_compile_serves_full_batches_and_the_last_batch_runs_eagerly(images, monkeypatch):
    """Only full batches reach the compiled module (one shape: no recompilation); the mode is passed on."""
    seen = {}

    def fake_compile(module, backend, mode):
        assert backend == "inductor"
        seen["mode"], seen["sizes"] = mode, []

        def compiled(x):
            seen["sizes"].append(len(x))
            return module(x)
        return compiled

    monkeypatch.setattr(loop.torch, "compile", fake_compile)
    model, _ = train(images, compile="on", compile_mode="reduce-overhead")
    assert seen["mode"] == "reduce-overhead"
    assert seen["sizes"] == [64] * 6  # 3 full batches per epoch, 2 epochs; the 8-example batches ran eagerly
    plain, _ = train(images)
    assert torch.equal(weights(model), weights(plain))


def test_channels_last_survives_augmentation(images):
    """Augmentation gathers into a fresh tensor; the batch reaching the model must still be channels_last."""
    from dataclasses import replace

    from widthlab.data.transforms import RandomCropFlip

    layouts = []
    model = alexnet()
    model.conv1.register_forward_pre_hook(
        lambda module, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
        if module.training else None)
    fit(model, replace(images, augment=RandomCropFlip(16, padding=2)),
        TrainConfig(lr=0.01, batch_size=64, epochs=1, channels_last="on"))
    assert layouts and all(layouts)


def test_data_parallel_needs_an_example_per_process(images, monkeypatch):
    from widthlab import WidthlabError

    monkeypatch.setattr(loop, "distributed_shard", lambda: (0, 4))
    with pytest.raises(WidthlabError, match="4 processes need at least 4 examples per batch.*batch size 2"):
        fit(alexnet(), images, TrainConfig(batch_size=2, epochs=1))


def test_max_autotune_counts_as_cuda_graphs():
    import torch._inductor

    for mode in ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"):
        uses_graphs = bool(torch._inductor.list_mode_options(mode).get("triton.cudagraphs"))
        assert (mode in loop.CUDA_GRAPH_MODES) == uses_graphs, mode


@pytest.mark.slow
def test_torch_compile_trains_like_eager():
    """A real torch.compile (inductor on the CPU) gives the eager run's weights up to round-off."""
    splits = load_data("synthetic", seed=0, n_train=200, n_val=50, n_test=50)
    eager = create_model("mlp", 0.5, init="normal", sigma=0.1, seed=0)
    compiled = create_model("mlp", 0.5, init="normal", sigma=0.1, seed=0)
    cfg = TrainConfig(batch_size=64, epochs=2)
    fit(eager, splits, cfg)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    result = fit(compiled, splits, cfg.model_copy(update={"compile": "on"}))
    assert result.status == "done"
    # Dynamo really captured the model, once: the 8-example last batch did not compile a second graph.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    torch.testing.assert_close(weights(compiled), weights(eager), rtol=1e-4, atol=1e-6)


@pytest.mark.cuda
@needs_cuda
def test_cuda_auto_path_learns_and_measures(images):
    """The automatic GPU path (every switch on) learns; measuring the trained model on the GPU matches the CPU."""
    model = alexnet()
    autotuned = []
    result = fit(model, images, TrainConfig(lr=0.01, batch_size=64, epochs=30, device="cuda", compile="on"),
                 on_epoch=lambda record: autotuned.append(torch.backends.cudnn.benchmark))
    assert all(autotuned) and not torch.backends.cudnn.benchmark  # on while training, restored after
    assert result.status == "done" and next(model.parameters()).is_cuda
    assert result.train_acc > 0.5  # 10 classes: chance is 0.1
    x = images.test.x
    on_gpu = analyze(model, x, perturbations=("zero",), samplings=2, null_rows=None)
    on_cpu = analyze(model.cpu().to(memory_format=torch.contiguous_format), x, perturbations=("zero",), samplings=2,
                     null_rows=None)
    key = ["layer", "metric", "perturbation", "level", "sampling"]
    merged = on_gpu.merge(on_cpu, on=key, suffixes=("_gpu", "_cpu"))
    assert len(merged) == len(on_gpu) == len(on_cpu)
    # cuDNN's TF32 convolutions round differently from the CPU's fp32: close, not equal. 50 test images: one
    # flipped prediction moves a curve point by 0.02.
    def gap(*metrics):
        rows = merged[merged.metric.isin(metrics)]
        return (rows.value_gpu - rows.value_cpu).abs()

    assert gap("n_units").max() == 0 and gap("pcs_needed").max() <= 2
    assert gap("compressibility").max() < 0.02
    assert gap("auc", "unchanged").mean() < 0.03 and gap("auc", "unchanged").max() < 0.1


@pytest.mark.cuda
@needs_cuda
def test_cuda_checkpoint_resume_matches(images, tmp_path):
    """A run cut after epoch 2 and resumed on the GPU (CUDA RNG state included) ends where a whole run does."""
    from widthlab.train.checkpoint import load_checkpoint

    def dropout_alexnet():
        return create_model("alexnet_cifar", 0.25, input_size=16, dropout=0.5, seed=0)

    cfg = TrainConfig(lr=0.01, batch_size=64, epochs=4, device="cuda", compile="off")
    whole = dropout_alexnet()
    expected = fit(whole, images, cfg)
    path = tmp_path / "run.pt"
    fit(dropout_alexnet(), images, cfg.model_copy(update={"epochs": 2}), checkpoint=path)
    state = load_checkpoint(path)
    state["train_config"] = cfg.model_dump()  # the same run, now asked to go on to epoch 4
    torch.save(state, path)
    resumed = dropout_alexnet()
    result = fit(resumed, images, cfg, checkpoint=path)
    assert result.resumed_from == 2 and len(result.history) == 4
    # cuDNN's kernels may differ run to run in the last bits; a lost dropout stream would differ by far more.
    torch.testing.assert_close(weights(resumed), weights(whole), rtol=1e-3, atol=1e-4)
    assert result.history[-1]["loss"] == pytest.approx(expected.history[-1]["loss"], rel=1e-3)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_cuda_compiled_paths_learn_like_eager(images, mode, cuda_path):
    """torch.compile (and CUDA graphs) on the GPU's bf16 path: the same learning as the eager bf16 path. bf16
    keeps 8 bits: a fused kernel rounds its intermediates elsewhere than eager ops do, and 30 epochs amplify that
    (on the CPU, inductor's run ends at loss 0.054 where the eager one ends at 0.131), so the two are compared
    where bf16 can promise agreement: the first epoch's loss; after it, both learn. In float32 the compiled and
    eager runs agree closely: the compiler itself changes nothing. On the CPU the stand-in runs it with the
    aot_eager backend (Dynamo's and AOTAutograd's graphs, no kernels; bf16 is slow on a CPU: 2 epochs)."""
    gpu = cuda_path == "cuda"
    if not gpu and mode != "default":
        pytest.skip("CUDA graphs need a GPU (aot_eager takes no mode: the stand-in's run would be the default's)")
    epochs = 30 if gpu else 2
    cfg = TrainConfig(lr=0.01, batch_size=64, epochs=epochs, device=cuda_path, compile="off")
    assert Speed.resolve(cfg, torch.device(cuda_path)).amp  # amp: auto is bf16 on CUDA and on its stand-in

    def compiled(cfg):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        result = fit(alexnet(), images, cfg.model_copy(update={"compile": "on", "compile_mode": mode}))
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # really compiled, no eager fallback
        if cuda_path == "cuda":
            assert torch._dynamo.utils.counters["inductor"]["cudagraph_skips"] == 0  # graphs were not skipped
        return result

    eager, fast = fit(alexnet(), images, cfg), compiled(cfg)
    assert fast.status == "done"
    assert fast.history[0]["loss"] == pytest.approx(eager.history[0]["loss"], rel=0.02)
    if gpu:  # 30 epochs: both learn, the loss falls to well under half of the first epoch's
        assert fast.train_acc > 0.3  # 10 classes: chance is 0.1
        for run in (eager, fast):
            assert run.history[-1]["loss"] < 0.5 * run.history[0]["loss"]
    fp32 = cfg.model_copy(update={"amp": "off", "epochs": 3 if gpu else 2})
    eager32, fast32 = fit(alexnet(), images, fp32), compiled(fp32)
    assert [h["loss"] for h in fast32.history] == pytest.approx([h["loss"] for h in eager32.history], rel=1e-3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_one_clear_error(images, tmp_path):
    from widthlab import WidthlabError
    from widthlab.cli import main

    with pytest.raises(WidthlabError, match="device 'cuda'.*train on 'cpu'"):
        fit(alexnet(), images, TrainConfig(epochs=1, device="cuda"))
    code = main(["run", "mlp-10d", "--device", "cuda", "--out", str(tmp_path / "study"), "--quiet",
                 "--set", "grid.replicates=1", "--set", "grid.widths=[0.25]"])
    assert code == 2  # a user error: exit status 2, one line, no run marked failed
