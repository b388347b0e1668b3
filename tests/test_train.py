"""The trainer: it learns, it is deterministic, each optimiser works, divergence is recorded."""

import math

import pytest
import torch
from pydantic import ValidationError

from widthlab import TrainConfig, create_model, fit, load_data
from widthlab.train import make_optimizer


@pytest.fixture(scope="module")
def splits():
    return load_data("synthetic", seed=0, n_train=400, n_val=200, n_test=200)


def test_momentum_learns_the_teacher(splits):
    model = create_model("mlp", 1, init="normal", sigma=0.1, seed=0)
    result = fit(model, splits, TrainConfig(epochs=15))
    assert result.status == "done" and len(result.history) == 15
    assert result.test_acc > 0.8 and result.train_acc >= result.test_acc - 0.05
    assert {"epoch", "loss", "train_acc", "val_acc"} <= set(result.history[0])
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_same_seed_same_weights_other_seed_differs(splits):
    def train(seed):
        model = create_model("mlp", 0.5, init="normal", sigma=0.1, seed=0)
        fit(model, splits, TrainConfig(epochs=2, seed=seed))
        return model.fc1.weight.detach().clone()

    assert torch.equal(train(0), train(0))
    assert not torch.equal(train(0), train(1))


@pytest.mark.parametrize("optimizer,cls", [("momentum", torch.optim.SGD), ("sgd", torch.optim.SGD),
                                           ("adam", torch.optim.Adam), ("rmsprop", torch.optim.RMSprop)])
def test_each_optimizer_trains(splits, optimizer, cls):
    model = create_model("mlp", 0.5, init="normal", sigma=0.1, seed=0)
    cfg = TrainConfig(optimizer=optimizer, lr=0.01 if optimizer != "sgd" else 0.1, epochs=5)
    opt = make_optimizer(model.parameters(), cfg)
    assert isinstance(opt, cls)
    assert opt.param_groups[0].get("momentum", 0) == (0.9 if optimizer == "momentum" else 0)
    assert fit(model, splits, cfg).test_acc > 0.7


def test_lr_batch_factor_scales_both():
    cfg = TrainConfig(lr=0.01, batch_size=32, lr_batch_factor=4)
    assert cfg.effective_lr == pytest.approx(0.04) and cfg.effective_batch_size == 128
    quarter = TrainConfig(lr=0.01, batch_size=32, lr_batch_factor=0.25)
    assert quarter.effective_batch_size == 8


def test_divergence_is_recorded_not_raised(splits):
    model = create_model("mlp", 1, init="normal", sigma=1.0, seed=0)
    result = fit(model, splits, TrainConfig(optimizer="sgd", lr=1e30, epochs=3))
    assert result.status == "diverged" and result.diverged_epoch == 1
    assert math.isnan(result.test_acc)


def test_early_stopping_restores_the_best_validation_epoch(splits):
    model = create_model("mlp", 1, init="normal", sigma=0.1, seed=0)
    result = fit(model, splits, TrainConfig(optimizer="adam", lr=0.05, epochs=8, early_stopping=True))
    best = max(h["val_acc"] for h in result.history)
    assert result.history[result.best_epoch - 1]["val_acc"] == best
    assert result.val_acc == pytest.approx(best)


def test_unknown_key_and_bad_values_are_rejected():
    with pytest.raises(ValidationError, match="learning_rate"):
        TrainConfig(learning_rate=0.1)
    with pytest.raises(ValidationError):
        TrainConfig(lr=-1)
    with pytest.raises(ValidationError):
        TrainConfig(optimizer="lbfgs")


def test_fit_leaves_global_rng_untouched(splits):
    torch.manual_seed(42)
    expected = torch.rand(3)
    torch.manual_seed(42)
    model = create_model("mlp", 0.25, seed=0)  # seeded construction keeps the global RNG too
    fit(model, splits, TrainConfig(epochs=1))
    assert torch.equal(torch.rand(3), expected)


def test_augmentation_applies_to_training_batches_only(splits):
    from dataclasses import replace

    seen = []

    def augment(x, generator):
        seen.append(len(x))
        return x + 0.01 * torch.randn(x.shape, generator=generator)

    model = create_model("mlp", 0.5, init="normal", sigma=0.1, seed=0)
    result = fit(model, replace(splits, augment=augment), TrainConfig(epochs=2, batch_size=100))
    assert seen == [100] * 8  # 400 training rows, 2 epochs; evaluation never augments
    again = create_model("mlp", 0.5, init="normal", sigma=0.1, seed=0)
    fit(again, replace(splits, augment=augment), TrainConfig(epochs=2, batch_size=100))
    assert torch.equal(model.fc1.weight, again.fc1.weight) and result.status == "done"


def test_resuming_from_a_checkpoint_matches_an_uninterrupted_run(splits, tmp_path):
    from widthlab.train.checkpoint import load_checkpoint

    cfg = TrainConfig(optimizer="adam", lr=0.01, epochs=6, early_stopping=True)
    straight = create_model("mlp", 0.5, init="normal", sigma=0.1, seed=0)
    expected = fit(straight, splits, cfg)

    path = tmp_path / "run.pt"
    first = create_model("mlp", 0.5, init="normal", sigma=0.1, seed=0)
    fit(first, splits, cfg.model_copy(update={"epochs": 3}), checkpoint=path)  # "crash" after epoch 3
    state = load_checkpoint(path)
    state["train_config"] = cfg.model_dump()  # the same run, now asked to go on to epoch 6
    torch.save(state, path)
    resumed_model = create_model("mlp", 0.5, init="normal", sigma=0.1, seed=0)
    resumed = fit(resumed_model, splits, cfg, checkpoint=path, meta={"model": "mlp"})
    assert [h["epoch"] for h in resumed.history] == list(range(1, 7))
    assert resumed.history == expected.history and resumed.best_epoch == expected.best_epoch
    assert torch.equal(resumed_model.fc1.weight, straight.fc1.weight)
    assert resumed.test_acc == expected.test_acc
    final = load_checkpoint(path)
    assert final["epoch"] == 6 and final["meta"] == {"model": "mlp"} and "torch" in final["versions"]


def test_checkpoint_of_another_config_is_refused(splits, tmp_path):
    from widthlab import WidthlabError

    path = tmp_path / "run.pt"
    fit(create_model("mlp", 0.25, seed=0), splits, TrainConfig(epochs=1), checkpoint=path)
    with pytest.raises(WidthlabError, match="another training config"):
        fit(create_model("mlp", 0.25, seed=0), splits, TrainConfig(epochs=2, lr=0.5), checkpoint=path)


def test_non_checkpoint_files_are_clear_errors(tmp_path):
    from widthlab import WidthlabError
    from widthlab.train.checkpoint import load_checkpoint

    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(WidthlabError, match="not a readable torch file"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(WidthlabError, match="not a widthlab checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_a_truncated_checkpoint_of_an_unfinished_run_names_the_file_and_what_to_do(splits, tmp_path):
    from widthlab import WidthlabError

    path = tmp_path / "run.pt"
    fit(create_model("mlp", 0.25, seed=0), splits, TrainConfig(epochs=1), checkpoint=path)
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])  # torn by a disk fault
    with pytest.raises(WidthlabError, match=r"cannot resume an unfinished run: '.*run\.pt' is not a readable torch "
                                            r"file .*; move that file away \(or delete it\) and rerun"):
        fit(create_model("mlp", 0.25, seed=0), splits, TrainConfig(epochs=2), checkpoint=path)
    path.unlink()  # as the message says: the run then trains from the start
    assert fit(create_model("mlp", 0.25, seed=0), splits, TrainConfig(epochs=2), checkpoint=path).status == "done"


def test_checkpoint_every_bounds_the_writes_and_keeps_the_last_epoch(splits, tmp_path, monkeypatch):
    import widthlab.train.loop as loop
    from widthlab import WidthlabError

    written = []
    real_save = loop.save_checkpoint
    monkeypatch.setattr(loop, "save_checkpoint", lambda path, state: (written.append(state["epoch"]),
                                                                      real_save(path, state)))
    cfg = TrainConfig(epochs=4)
    fit(create_model("mlp", 0.25, seed=0), splits, cfg, checkpoint=tmp_path / "a.pt")
    assert written == [1, 2, 3, 4]  # default 0 s: after every epoch
    written.clear()
    fit(create_model("mlp", 0.25, seed=0), splits, cfg, checkpoint=tmp_path / "b.pt", checkpoint_every=3600)
    assert written == [4]  # an hour apart: only the last epoch, so a finished run never retrains
    written.clear()
    fit(create_model("mlp", 0.25, seed=0), splits, TrainConfig(epochs=4, max_steps=26), checkpoint=tmp_path / "c.pt",
        checkpoint_every=3600)
    assert written == [2]  # 400 examples / 32 = 13 steps an epoch: max_steps ends training after epoch 2
    with pytest.raises(WidthlabError, match="checkpoint_every"):
        fit(create_model("mlp", 0.25, seed=0), splits, cfg, checkpoint=tmp_path / "d.pt", checkpoint_every=-1)


def test_time_triggered_checkpoints_resume_exactly(splits, tmp_path, monkeypatch):
    """With a clock that makes only some epochs reach the interval, the run is checkpointed mid-way; resuming
    from such a checkpoint ends with the uninterrupted run's weights."""
    import itertools
    import shutil
    import types

    import widthlab.train.loop as loop

    cfg = TrainConfig(epochs=8)
    straight = create_model("mlp", 0.5, init="normal", sigma=0.1, seed=0)
    fit(straight, splits, cfg)
    ticks = itertools.count()
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    written = []
    real_save = loop.save_checkpoint
    mid_run = tmp_path / "mid-run.pt"

    def save(path, state):
        real_save(path, state)
        if not written:  # keep the first checkpoint: a crash right after it would resume from there
            shutil.copy(path, mid_run)
        written.append(state["epoch"])

    monkeypatch.setattr(loop, "save_checkpoint", save)
    fit(create_model("mlp", 0.5, init="normal", sigma=0.1, seed=0), splits, cfg, checkpoint=tmp_path / "run.pt",
        checkpoint_every=4)
    assert 1 < len(written) < 8 and written[-1] == 8  # some epochs, not all, and the last
    assert written[0] < 8  # a save the clock triggered mid-run
    resumed = create_model("mlp", 0.5, init="normal", sigma=0.1, seed=0)
    assert fit(resumed, splits, cfg, checkpoint=mid_run, checkpoint_every=4).resumed_from == written[0]
    assert torch.equal(resumed.fc1.weight, straight.fc1.weight)
