"""Evaluation under DistributedDataParallel is sharded: each of 2 gloo processes evaluates its share of every
split, and the summed counts give exactly the accuracy one process computes on the whole split."""

import pytest
import torch
import torch.multiprocessing as mp
from torch import distributed as dist

from widthlab.data import load_data
from widthlab.models import create_model
from widthlab.train import TrainConfig, fit
from widthlab.train.loop import accuracy

# Odd split sizes: the shares differ by one example, and none may be lost or counted twice.
DATA = dict(seed=0, n_train=64, n_val=37, n_test=29)
CFG = TrainConfig(batch_size=16, epochs=2, eval_batch_size=8)


def _fit_counting_evaluated() -> dict:
    """`fit` of a small MLP: the examples its model saw in eval mode during `fit` (validation and final
    accuracies), and each accuracy `fit` reported beside the one of the whole split on this process alone."""
    torch.set_num_threads(1)
    splits = load_data("synthetic", **DATA)
    model = create_model("mlp", 0.5, init="normal", sigma=0.1, seed=0)
    evaluated, counting = [], [True]
    model.register_forward_pre_hook(
        lambda module, args: None if module.training or not counting[0] else evaluated.append(len(args[0])))

    def whole(split: str) -> float:  # the unsharded accuracy, on this process alone (no collective)
        counting[0] = False
        try:
            return accuracy(model, splits.split(split), batch_size=CFG.eval_batch_size)
        finally:
            counting[0] = True

    val = []
    result = fit(model, splits, CFG, on_epoch=lambda record: val.append((record["val_acc"], whole("val"))))
    final = [(getattr(result, f"{split}_acc"), whole(split)) for split in ("train", "val", "test")]
    return {"evaluated": sum(evaluated), "val": val, "final": final}


def _rank(rank: int, world: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.save(_fit_counting_evaluated(), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_evaluate_their_shares_and_get_the_whole_splits_accuracy(tmp_path):
    mp.spawn(_rank, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    sizes = [DATA["n_val"]] * CFG.epochs + [DATA["n_train"], DATA["n_val"], DATA["n_test"]]
    assert _fit_counting_evaluated()["evaluated"] == sum(sizes)  # one process: every example of every evaluation
    # Each rank evaluated its half of every split (the other half on the other rank), not the whole split.
    assert [r["evaluated"] for r in ranks] == [sum(k // 2 for k in sizes), sum(k - k // 2 for k in sizes)]
    for r in ranks:
        assert len(r["val"]) == CFG.epochs and len(r["final"]) == 3
        for sharded, whole in r["val"] + r["final"]:
            assert sharded == whole
