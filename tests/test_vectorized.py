"""Runs trained as one stacked model (`fit_group`) give the numbers of training them one by one (`fit`)."""

import contextlib
import copy
import dataclasses

import pandas as pd
import pytest
import torch
from torch import nn

from widthlab import create_model, load_data
from widthlab.data.base import ArrayDataset
from widthlab.study import load_config, load_results, run_study
from widthlab.study.runner import plan_runs
from widthlab.study.runs import group_runs
from widthlab.train import TrainConfig, fit
from widthlab.train.mixed import load_members, member_models, member_state, stack_mixed
from widthlab.train.stacked import check_stacked, stack_models, stackable
from widthlab.train.vectorized import NotStackable, activation_bytes, fit_group, member_bytes


def _splits(dtype=torch.float32, **options):
    splits = load_data("synthetic", input_dim=10, n_train=200, n_val=100, n_test=100, seed=0, **options)
    if dtype == torch.float32:
        return splits

    def cast(part):
        return ArrayDataset(part.x.to(dtype), part.y)

    return dataclasses.replace(splits, train=cast(splits.train), val=cast(splits.val), test=cast(splits.test))


def _mlps(count, dtype, width=0.25):
    # Different initialisation variances and seeds: a replicate and σ-variant group of one study cell.
    return [create_model("mlp", width, init="normal", sigma=(0.01, 0.1, 1.0)[r % 3], seed=r, input_dim=10).to(dtype)
            for r in range(count)]


def _alone(models, splits, cfgs, **kwargs):
    copies = [copy.deepcopy(m) for m in models]
    return copies, [fit(m, splits, c, **kwargs) for m, c in zip(copies, cfgs)]


def _same_results(alone, together, exact=True):
    for a, b in zip(alone, together):
        assert (a.status, a.best_epoch, a.diverged_epoch) == (b.status, b.best_epoch, b.diverged_epoch)
        assert len(a.history) == len(b.history)
        for x, y in zip(a.history, b.history):
            for key in x:
                assert x[key] == y[key] if exact else x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-7)
        for split in ("train_acc", "val_acc", "test_acc"):
            same = getattr(a, split) == getattr(b, split)
            assert same or (pd.isna(getattr(a, split)) and pd.isna(getattr(b, split)))


def _same_weights(models_a, models_b, exact=True):
    for a, b in zip(models_a, models_b):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            if exact:
                assert torch.equal(x, y), name
            else:
                torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("optimizer, extra", [("momentum", {"early_stopping": True}),
                                              ("adam", {"weight_decay": 1e-3}),
                                              ("rmsprop", {"schedule": "step", "lr_decay": 0.5})])
def test_float64_bit_identical_to_one_by_one(one_thread, optimizer, extra):
    splits = _splits(torch.float64)
    models = _mlps(3, torch.float64)
    cfgs = [TrainConfig(optimizer=optimizer, lr=0.02, epochs=4, seed=r, **extra) for r in range(3)]
    alone_models, alone = _alone(models, splits, cfgs)
    together = fit_group(models, splits, cfgs)
    _same_results(alone, together)
    _same_weights(alone_models, models)


def test_float32_equal_to_rounding_mlp_and_alexnet(one_thread):
    splits = _splits()
    models = _mlps(3, torch.float32)
    cfgs = [TrainConfig(lr=0.05, epochs=3, seed=r) for r in range(3)]
    alone_models, alone = _alone(models, splits, cfgs)
    _same_results(alone, fit_group(models, splits, cfgs), exact=False)
    _same_weights(alone_models, models, exact=False)

    digits = load_data("digits", image_size=16, n_train=96, n_val=48, n_test=48, seed=0)
    nets = [create_model("alexnet_cifar", 0.125, input_size=16, seed=r) for r in range(2)]
    cfgs = [TrainConfig(lr=0.01, epochs=2, batch_size=32, seed=r) for r in range(2)]
    alone_nets, alone = _alone(nets, digits, cfgs)
    _same_results(alone, fit_group(nets, digits, cfgs), exact=False)
    _same_weights(alone_nets, nets, exact=False)


WIDTHS = [0.25, 0.25, 0.5, 1.0, 1.0]  # three widths, consecutive: one stacked part each (widthlab.train.mixed)


def _mixed(dtype, widths=WIDTHS):
    return [create_model("mlp", w, init="normal", sigma=(0.01, 0.1, 1.0)[r % 3], seed=r, input_dim=10).to(dtype)
            for r, w in enumerate(widths)]


@pytest.mark.parametrize("optimizer, extra", [("momentum", {"early_stopping": True, "weight_decay": 1e-3}),
                                              ("adam", {"schedule": "step", "lr_decay": 0.5})])
def test_mixed_widths_float64_bit_identical_to_one_by_one(one_thread, optimizer, extra):
    splits = _splits(torch.float64)
    models = _mixed(torch.float64)
    cfgs = [TrainConfig(optimizer=optimizer, lr=0.02, epochs=3, seed=r, **extra) for r in range(len(models))]
    alone_models, alone = _alone(models, splits, cfgs)
    together = fit_group(models, splits, cfgs)
    _same_results(alone, together)
    _same_weights(alone_models, models)  # each model has its own width's shapes again
    assert [m.fc1.weight.shape[0] for m in models] == [32, 32, 64, 128, 128]


def test_mixed_widths_float32_equal_to_stacking_each_width_alone(one_thread):
    # Each width's part runs the kernels of that width's own group on the same shapes: the same float32 bits.
    splits = _splits()
    models = _mixed(torch.float32)
    cfgs = [TrainConfig(lr=0.05, epochs=3, seed=r) for r in range(len(models))]
    per_width = [copy.deepcopy(m) for m in models]
    apart = [*fit_group(per_width[:2], splits, cfgs[:2]), fit(per_width[2], splits, cfgs[2]),
             *fit_group(per_width[3:], splits, cfgs[3:])]
    together = fit_group(models, splits, cfgs)
    _same_results(apart[:2] + apart[3:], together[:2] + together[3:])
    _same_weights(per_width[:2] + per_width[3:], models[:2] + models[3:])
    _same_results([apart[2]], [together[2]], exact=False)  # a lone run's matmuls are not batched: to rounding
    _same_weights([per_width[2]], [models[2]], exact=False)


def test_mixed_width_checkpoints_are_each_runs_own(one_thread, tmp_path):
    splits = _splits(torch.float64)
    cfgs = [TrainConfig(lr=0.02, epochs=3, seed=r) for r in range(len(WIDTHS))]
    paths = [tmp_path / f"run{r}.pt" for r in range(len(WIDTHS))]
    uninterrupted = _mixed(torch.float64)
    clean = fit_group(uninterrupted, splits, cfgs)

    def crash(index, record):
        if record["epoch"] == 2 and index == len(WIDTHS) - 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_group(_mixed(torch.float64), splits, cfgs, on_epoch=crash, checkpoints=paths)
    backup = [p.read_bytes() for p in paths]
    resumed_models = _mixed(torch.float64)
    resumed = fit_group(resumed_models, splits, cfgs, checkpoints=paths)
    assert [r.resumed_from for r in resumed] == [2] * len(WIDTHS)
    _same_results(clean, resumed)
    _same_weights(uninterrupted, resumed_models)
    for p, data in zip(paths, backup):  # the middle width's checkpoint, in its own shapes, resumes it alone
        p.write_bytes(data)
    alone_model = _mixed(torch.float64)[2]
    alone = fit(alone_model, splits, cfgs[2], checkpoint=paths[2])
    assert alone.resumed_from == 2
    _same_results([clean[2]], [alone])
    _same_weights([uninterrupted[2]], [alone_model])


def test_member_models_compute_the_stacked_bits_and_follow_training(one_thread):
    # Validation on the CPU runs member by member (`member_models`): the stacked pass's float32 bits, for a mixed
    # stack of MLPs and a stack of convolutional nets, also after the weights change in place.
    x = torch.randn(300, 10)
    images = torch.randn(6, 3, 16, 16)
    for stacked, inputs, count in ((stack_mixed(_mixed(torch.float32)), x, len(WIDTHS)),
                                   (stack_mixed([create_model("alexnet_cifar", 0.125, input_size=16, seed=r)
                                                 for r in range(2)]), images, 2)):
        stacked.eval()
        for _ in range(2):
            with torch.no_grad():
                together = stacked(inputs.repeat(count, *[1] * (inputs.dim() - 1))).reshape(count, len(inputs), -1)
                alone = torch.stack([model(inputs) for model in member_models(stacked)])
            assert torch.equal(together, alone)
            optimizer = torch.optim.SGD(stacked.parameters(), lr=0.5)  # a step changes every weight in place
            stacked(inputs.repeat(count, *[1] * (inputs.dim() - 1))).square().sum().backward()
            optimizer.step()
        load_members(stacked, [member_state(stacked, r) for r in reversed(range(count))] if count == 2 else
                     [member_state(stacked, r) for r in range(count)])
        with torch.no_grad():
            together = stacked(inputs.repeat(count, *[1] * (inputs.dim() - 1))).reshape(count, len(inputs), -1)
            assert torch.equal(together, torch.stack([model(inputs) for model in member_models(stacked)]))


@pytest.mark.cuda
def test_stacked_training_on_cuda_matches_one_by_one(cuda_path, monkeypatch):
    """CUDA's stacked path (grouped convolutions, the TF32 check) trains each member as it trains alone, to what
    TF32 can promise. On the CPU the stand-in runs it, with TF32's rounding emulated in every convolution and
    matrix product of both sides. Training amplifies rounding (a member's weights drift to ~1e-3 apart after 16
    steps), so one step is compared tightly and a few steps by their losses."""
    from widthlab.train import vectorized
    from widthlab.train.standin import emulate_tf32

    grouped = []
    real = vectorized.stack_mixed
    monkeypatch.setattr(vectorized, "stack_mixed", lambda models, **k: grouped.append(k["grouped"]) or real(models, **k))
    digits = load_data("digits", image_size=16, n_train=256, n_val=64, n_test=64, seed=0)
    rounding = emulate_tf32() if cuda_path == "cpu" else contextlib.nullcontext()

    def train(cfgs):
        nets = [create_model("alexnet_cifar", 0.25, input_size=16, seed=r) for r in range(3)]
        start = [copy.deepcopy(n.state_dict()) for n in nets]
        with rounding:
            alone_nets, alone = _alone(nets, digits, cfgs)
            together = fit_group(nets, digits, cfgs)  # grouped convolutions: one launch for the three runs
        return start, alone_nets, alone, nets, together

    one = [TrainConfig(lr=0.01, epochs=1, max_steps=1, batch_size=32, seed=r, device=cuda_path, amp="off")
           for r in range(3)]
    start, alone_nets, _, nets, _ = train(one)
    for before, a, b in zip(start, alone_nets, nets):  # one step: each member's update agrees to TF32 rounding
        for key, w0 in before.items():
            step_alone = a.state_dict()[key].cpu() - w0
            step_together = b.state_dict()[key].cpu() - w0
            torch.testing.assert_close(step_together, step_alone, rtol=1e-2, atol=1e-2 * float(step_alone.abs().max()))
    few = [cfg.model_copy(update={"epochs": 2, "max_steps": None}) for cfg in one]
    _, _, alone, _, together = train(few)
    assert grouped == [True, True]
    for a, b in zip(alone, together):
        assert [h["loss"] for h in a.history] == pytest.approx([h["loss"] for h in b.history], rel=2e-3)
        assert a.train_acc == pytest.approx(b.train_acc, abs=0.05)  # near-ties: a few of 256 examples flip


def test_grouped_convolution_computes_each_member():
    nets = [create_model("alexnet_cifar", 0.125, input_size=16, seed=r) for r in range(3)]
    x = torch.randn(12, 3, 16, 16, requires_grad=True)
    outs = [stack_models(nets, grouped=grouped)(x) for grouped in (False, True)]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    grads = [torch.autograd.grad(out.square().sum(), x)[0] for out in outs]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    assert check_stacked(stack_models(nets, grouped=True), nets, x.detach()) is None


def test_a_diverging_member_leaves_the_others_alone(one_thread):
    splits = _splits(torch.float64)
    models = _mlps(3, torch.float64)
    with torch.no_grad():
        models[1].fc1.weight[0, 0] = float("nan")  # member 1's loss is NaN from its first step
    cfgs = [TrainConfig(lr=0.02, epochs=3, seed=r) for r in range(3)]
    alone_models, alone = _alone(models, splits, cfgs)
    together = fit_group(models, splits, cfgs)
    assert [r.status for r in together] == ["done", "diverged", "done"] and together[1].diverged_epoch == 1
    _same_results(alone, together)
    _same_weights(alone_models[::2], models[::2])


def test_each_member_stops_at_its_target_accuracy(one_thread):
    splits = _splits(torch.float64)
    models = _mlps(3, torch.float64)
    cfgs = [TrainConfig(lr=0.05, epochs=8, seed=r, target_train_acc=0.85) for r in range(3)]
    alone_models, alone = _alone(models, splits, cfgs)
    together = fit_group(models, splits, cfgs)
    assert len({len(r.history) for r in together}) > 1  # the members stopped at different epochs
    _same_results(alone, together)
    _same_weights(alone_models, models)


def test_group_checkpoints_resume_as_a_group_and_alone(one_thread, tmp_path):
    splits = _splits(torch.float64)
    cfgs = [TrainConfig(lr=0.02, epochs=4, seed=r, snapshot_epochs=(2,)) for r in range(3)]
    paths = [tmp_path / f"run{r}.pt" for r in range(3)]
    uninterrupted = _mlps(3, torch.float64)
    clean = fit_group(uninterrupted, splits, cfgs)

    def crash(index, record):
        if record["epoch"] == 2 and index == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_group(_mlps(3, torch.float64), splits, cfgs, on_epoch=crash, checkpoints=paths)
    resumed_models = _mlps(3, torch.float64)
    backup = [p.read_bytes() for p in paths]
    resumed = fit_group(resumed_models, splits, cfgs, checkpoints=paths)
    assert [r.resumed_from for r in resumed] == [2, 2, 2]
    _same_results(clean, resumed)
    _same_weights(uninterrupted, resumed_models)
    for a, b in zip(clean, resumed):
        for epoch in a.snapshots:
            assert all(torch.equal(a.snapshots[epoch][k], b.snapshots[epoch][k]) for k in a.snapshots[epoch])

    for p, data in zip(paths, backup):  # a group's checkpoint is fit's own: one run resumes alone from it
        p.write_bytes(data)
    alone_model = _mlps(3, torch.float64)[1]
    alone = fit(alone_model, splits, cfgs[1], checkpoint=paths[1])
    assert alone.resumed_from == 2
    _same_results([clean[1]], [alone])
    _same_weights([uninterrupted[1]], [alone_model])

    # Checkpoints at different epochs: the group refuses, and the caller trains its runs one by one.
    paths[0].unlink()
    with pytest.raises(NotStackable, match="only some runs"):
        fit_group(_mlps(3, torch.float64), splits, cfgs, checkpoints=paths)


class _Centred(nn.Module):
    """A forward that mixes the examples of a batch: it cannot be stacked, and nothing in its modules says so."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(10, 2)

    def forward(self, x):
        return self.fc(x - x.mean(0))


def test_what_cannot_be_stacked_is_named():
    assert stackable(create_model("alexnet_cifar", 0.125, dropout=0.5)) == "fc1_drop draws dropout masks (p=0.5)"
    assert "BatchNorm" in stackable(create_model("resnet56_cifar", 0.25))
    shared = nn.Linear(4, 4)
    assert "shared weights" in stackable(nn.Sequential(shared, nn.ReLU(), shared))
    assert stackable(create_model("alexnet_cifar", 0.125)) is None  # dropout p = 0 draws nothing
    models = [_Centred() for _ in range(2)]
    x = torch.randn(8, 10)
    assert "differs from the model trained alone" in check_stacked(stack_models(models), models, x)
    splits = _splits()
    with pytest.raises(NotStackable, match="differs from the model trained alone"):
        fit_group(models, splits, [TrainConfig(epochs=1, seed=r) for r in range(2)])
    with pytest.raises(NotStackable, match="differ in more than their seed"):
        fit_group(_mlps(2, torch.float32), splits, [TrainConfig(epochs=1, lr=lr) for lr in (0.1, 0.01)])
    with pytest.raises(NotStackable, match="vectorize is off"):
        fit_group(_mlps(2, torch.float32), splits, [TrainConfig(epochs=1, vectorize="off", seed=r) for r in range(2)])


TINY = ["data.n_train=96", "data.n_val=48", "data.n_test=48", "train.epochs=2", "grid.widths=[0.25,0.5]",
        "grid.replicates=2", "measure.levels=3", "measure.samplings=1"]


def test_group_runs_packs_replicates_and_init_variants():
    cfg = load_config("mlp-10d", TINY)  # with its lr selection: 4 candidates per cell
    specs = plan_runs(cfg)
    groups = group_runs(specs)
    # One group per candidate learning rate: 2 widths × 3 σ variants × 2 replicates, ordered by width.
    assert len(groups) == 4 and all(len(g) == 12 for g in groups)
    for group in groups:
        assert [s.width for s in group] == [0.25] * 6 + [0.5] * 6 and len({s.config.train.lr for s in group}) == 1
        assert len({s.variant for s in group}) == 3
    # For executors that run groups in parallel: one group per width and candidate learning rate.
    groups = group_runs(specs, widths_together=False)
    assert len(groups) == 2 * 4 and all(len(g) == 6 for g in groups)
    for group in groups:
        assert len({s.width for s in group}) == 1 and len({s.config.train.lr for s in group}) == 1
        assert len({s.variant for s in group}) == 3
    off = group_runs(plan_runs(load_config("mlp-10d", [*TINY, "train.vectorize=off"])))
    assert all(len(g) == 1 for g in off)


def test_study_numbers_do_not_depend_on_vectorize(tmp_path, monkeypatch):
    from widthlab.study import runs

    calls = []
    real = runs.fit_group

    def spy(models, *args, **kwargs):
        calls.append(len(models))
        return real(models, *args, **kwargs)

    monkeypatch.setattr(runs, "fit_group", spy)
    overrides = [*TINY, "grid.select=null"]
    run_study(load_config("mlp-10d", overrides), tmp_path / "auto", progress=False, report=False)
    assert calls == [12]  # both widths' 3 σ variants × 2 replicates trained as one model
    run_study(load_config("mlp-10d", [*overrides, "train.vectorize=off"]), tmp_path / "off", progress=False,
              report=False)
    assert calls == [12]
    auto, off = load_results(tmp_path / "auto"), load_results(tmp_path / "off")
    columns = ["run_id", "status", "train_acc", "val_acc", "test_acc", "epochs", "best_epoch"]
    pd.testing.assert_frame_equal(auto.runs[columns], off.runs[columns])
    pd.testing.assert_frame_equal(auto.metrics, off.metrics)
    # A speed switch is not part of a run's identity: the study resumes with the other setting.
    run_study(load_config("mlp-10d", [*overrides, "train.vectorize=off"]), tmp_path / "auto", progress=False,
              report=False)


def test_a_group_too_big_for_memory_trains_in_parts(tmp_path, monkeypatch):
    from widthlab.study import runs

    calls = []
    real = runs.fit_group
    monkeypatch.setattr(runs, "fit_group", lambda models, *a, **k: calls.append(len(models)) or real(models, *a, **k))
    overrides = [*TINY, "grid.select=null", "grid.widths=[0.25]"]
    cfg = load_config("mlp-10d", overrides)
    splits = load_data("synthetic", input_dim=10, n_train=96, n_val=48, n_test=48, seed=cfg.seed)
    per_run = member_bytes(create_model("mlp", 0.25, input_dim=10), splits, cfg.train, runs.WEIGHT_COPIES)
    monkeypatch.setattr(runs, "available_memory", lambda device: 2 * 2 * per_run + 1)  # half of it: 2 runs
    run_study(cfg, tmp_path / "parts", progress=False, report=False)
    assert calls == [2, 2, 2]
    run_study(load_config("mlp-10d", [*overrides, "train.vectorize=off"]), tmp_path / "off", progress=False,
              report=False)
    pd.testing.assert_frame_equal(load_results(tmp_path / "parts").metrics, load_results(tmp_path / "off").metrics)


def test_activation_bytes_count_each_layer():
    mlp = create_model("mlp", 0.25, input_dim=10)  # fc1 10 → 32, relu1, readout 32 → 2
    training, evaluation = activation_bytes(mlp, torch.zeros(10))
    assert training == 2 * (10 + 32 + 32 + 2) * 4  # every output kept for backward, and its gradient
    assert evaluation == (32 + 32) * 4  # the largest layer's input and output


def test_a_group_whose_evaluation_activations_do_not_fit_trains_in_parts(tmp_path, monkeypatch):
    """Weights are not all a stacked group holds: evaluating R members runs R × eval_batch_size examples at once."""
    from widthlab.study import runs

    calls = []
    real = runs.fit_group
    monkeypatch.setattr(runs, "fit_group", lambda models, *a, **k: calls.append(len(models)) or real(models, *a, **k))
    per_run = sum(p.numel() * 4 for p in create_model("mlp", 0.25, input_dim=10).parameters()) * runs.WEIGHT_COPIES
    # Evaluating the 96 training examples in one batch: the largest layer's input and output (fc1's 32 units
    # and their ReLU) take 64 floats per example and member.
    evaluation = 96 * 64 * 4
    assert 2 * evaluation > 6 * per_run  # by weights alone, all 6 runs would fit in half of it
    monkeypatch.setattr(runs, "available_memory", lambda device: 2 * 2 * (per_run + evaluation) + 1)
    overrides = [*TINY, "grid.select=null", "grid.widths=[0.25]"]
    run_study(load_config("mlp-10d", overrides), tmp_path / "parts", progress=False, report=False)
    assert calls == [2, 2, 2]


def test_a_run_that_breaks_alone_fails_alone(tmp_path, monkeypatch):
    from widthlab.study import runs

    real = runs._finish

    def finish(spec, *args):
        if spec.run_id == "sigma=0.01-w0.25-r1":
            raise RuntimeError("measurement broke")
        return real(spec, *args)

    monkeypatch.setattr(runs, "_finish", finish)
    run_study(load_config("mlp-10d", [*TINY, "grid.select=null", "grid.widths=[0.25]"]), tmp_path, progress=False,
              report=False)
    status = load_results(tmp_path).runs.set_index("run_id")["status"]
    assert status["sigma=0.01-w0.25-r1"] == "failed"
    assert (status.drop("sigma=0.01-w0.25-r1") == "done").all() and len(status) == 6
