"""Evaluation under DistributedDataParallel is sharded: each of 2 gloo processes evaluates its share of every
split, and the summed counts give exactly the single process's accuracies."""

import pytest
import torch
import torch.multiprocessing as mp
from torch import distributed as dist

from widthlab.data import load_data
from widthlab.models import create_model
from widthlab.train import TrainConfig, fit

# Odd split sizes: the shares differ by one example, and none may be lost or counted twice.
DATA = dict(seed=0, n_train=64, n_val=37, n_test=29)
CFG = TrainConfig(batch_size=16, epochs=2, eval_batch_size=8)


def _fit_counting_evaluated():
    """`fit` of a small MLP, and the examples its model saw in eval mode (validation and final accuracies)."""
    torch.set_num_threads(1)
    model = create_model("mlp", 0.5, init="normal", sigma=0.1, seed=0)
    evaluated = []
    model.register_forward_pre_hook(lambda module, args: None if module.training else evaluated.append(len(args[0])))
    result = fit(model, load_data("synthetic", **DATA), CFG)
    return result, sum(evaluated)


def _rank(rank: int, world: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        result, evaluated = _fit_counting_evaluated()
        torch.save({"accuracies": [result.train_acc, result.val_acc, result.test_acc],
                    "val_acc": [record["val_acc"] for record in result.history], "evaluated": evaluated},
                   f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_evaluate_their_shares_and_match_one_process(tmp_path):
    mp.spawn(_rank, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    single, evaluated = _fit_counting_evaluated()
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    n = DATA["n_val"] * CFG.epochs + DATA["n_train"] + DATA["n_val"] + DATA["n_test"]
    assert evaluated == n
    # Each rank evaluated its half of every split (the other half on the other rank), not the whole split.
    assert [r["evaluated"] for r in ranks] == [sum(k // 2 for k in (37, 37, 64, 37, 29)),
                                               sum(k - k // 2 for k in (37, 37, 64, 37, 29))]
    for r in ranks:
        assert r["accuracies"] == [single.train_acc, single.val_acc, single.test_acc]
        assert r["val_acc"] == [record["val_acc"] for record in single.history]
