"""One study trained with DistributedDataParallel under torchrun: 2 CPU processes (gloo) match one process."""

import socket
import subprocess
import sys

import pytest
import torch
import yaml

from widthlab import load_results, run_study
from widthlab.study.config import load_config
from widthlab.train.checkpoint import load_checkpoint

# Batches of 32 split 16 + 16: the mean of the two shards' mean gradients is the whole batch's mean gradient.
DDP = {"name": "ddp", "data": {"name": "synthetic", "n_train": 256, "n_val": 64, "n_test": 128},
       "model": {"name": "mlp", "init": "normal", "sigma": 0.1}, "train": {"epochs": 3, "batch_size": 32},
       "measure": {"levels": 5, "samplings": 1}, "grid": {"widths": [0.5, 1], "replicates": 1}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path):
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(DDP))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={_free_port()}", "-m", "widthlab.cli", "run", str(config), "--out", str(tmp_path / "ddp"),
         "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_study(load_config(DDP), tmp_path / "single", progress=False, report=False)

    ddp, single = load_results(tmp_path / "ddp"), load_results(tmp_path / "single")
    assert len(ddp.runs) == 2 and set(ddp.runs["status"]) == {"done"}
    for run_id in single.runs["run_id"]:
        a = load_checkpoint(tmp_path / "ddp" / "checkpoints" / f"{run_id}.pt")["model"]
        b = load_checkpoint(tmp_path / "single" / "checkpoints" / f"{run_id}.pt")["model"]
        for name in b:
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6)
    # The record of an epoch covers both processes' shards: the same examples as the single process saw.
    assert ddp.history["train_acc"].tolist() == pytest.approx(single.history["train_acc"].tolist(), abs=1 / 256)
    assert ddp.runs["test_acc"].tolist() == pytest.approx(single.runs["test_acc"].tolist(), abs=2 / 128)
