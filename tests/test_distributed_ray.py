"""The GPUs a Ray task declares by default: with ``train.device: auto`` one per task when the cluster has GPUs
(Ray hides every GPU from a task that declares none, and auto then trains on the CPU), none when it has none.
One local cluster declaring a GPU (Ray accepts ``num_gpus=1`` on a CPU machine) serves the module."""

import importlib.util
import json
import os

import pytest

from widthlab import run_study
from widthlab.study.config import load_config
from widthlab.study.executors import task_gpus

from conftest import TINY_STUDY

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="ray is an optional extra (widthlab[ray])")

# A model that writes down, from the process building it, the GPUs Ray assigned and what CUDA can see there.
RECORDING_MODEL = """
import json, os
from widthlab.models import create_model


def build(width, num_classes=None, **options):
    import ray

    if ray.is_initialized() and ray.get_runtime_context().get_task_id() is not None:  # inside a Ray task
        with open(os.environ["GPU_LOG"], "a") as log:
            log.write(json.dumps([ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")]) + "\\n")
    return create_model("mlp", width, num_classes=num_classes, **options)
"""


@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory):
    """A local Ray cluster of 2 CPUs and 1 (declared) GPU whose workers import the recording model."""
    import ray

    folder = tmp_path_factory.mktemp("ray-gpu")
    (folder / "gpumodel.py").write_text(RECORDING_MODEL)
    log = folder / "gpus.jsonl"
    path = os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "GPU_LOG": str(log)}})
    os.environ["GPU_LOG"] = str(log)
    try:
        yield folder, log
    finally:
        ray.shutdown()
        os.environ.pop("GPU_LOG", None)


def _task_gpus(folder, log, tmp_path, monkeypatch, device: str) -> list:
    """[assigned GPU ids, CUDA_VISIBLE_DEVICES] in the Ray task of a one-run study on `device`."""
    monkeypatch.syspath_prepend(str(folder))  # the driver builds the model too (its preflight)
    log.unlink(missing_ok=True)
    cfg = load_config("mlp-10d", TINY_STUDY + ["model.name=gpumodel:build", f"train.device={device}"])
    outcome = run_study(cfg, tmp_path / device, executor="ray", progress=False, report=False)
    assert outcome.runs["status"].tolist() == ["done"]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records and all(record == records[0] for record in records)
    return records[0]


@pytest.mark.slow
def test_auto_takes_a_gpu_per_task_in_a_cluster_with_gpus(gpu_cluster, tmp_path, monkeypatch):
    # Before: the task declared no GPU, Ray hid it (CUDA_VISIBLE_DEVICES=""), and auto trained on the CPU.
    assert _task_gpus(*gpu_cluster, tmp_path, monkeypatch, "auto") == [[0], "0"]


@pytest.mark.slow
def test_cpu_takes_no_gpu_even_where_the_cluster_has_one(gpu_cluster, tmp_path, monkeypatch):
    assert _task_gpus(*gpu_cluster, tmp_path, monkeypatch, "cpu")[0] == []


def test_auto_takes_no_gpu_in_a_cluster_without_gpus():
    assert task_gpus(["auto", "auto"], 0) == 0.0 and task_gpus(["cpu", "auto"], 0.0) == 0.0
    assert task_gpus(["auto"], 2) == 1.0 and task_gpus(["cuda"], 0) == 1.0 and task_gpus(["cuda:1", "cpu"], 0) == 1.0
    assert task_gpus(["cpu"], 4) == 0.0
