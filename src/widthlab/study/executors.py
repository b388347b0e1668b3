"""Executors: where a study's runs are computed. Each yields (spec, RunResult) as runs finish; only the
driver writes the store.

- ``local``: one run after another in this process (with a per-epoch progress bar).
- ``processes``: N worker processes on this machine (``spawn``); with several GPUs, worker i uses visible GPU
  i mod n, so more workers than GPUs packs several small runs per GPU.
- ``ray``: each run a Ray task declaring its CPUs (the run's pinned thread count) and GPUs, on an existing
  cluster (``address``) or a local one. Needs ``pip install 'widthlab[ray]'``.

Every run pins its torch thread count (`StudyConfig.threads`), so all three give identical numbers on CPU.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from widthlab.errors import WidthlabError
from widthlab.files import file_name
from widthlab.study.runs import execute_runs, group_runs

EXECUTORS = ("local", "processes", "ray")


def check_executor(name: str) -> str:
    """`name` if it is an executor (`EXECUTORS`), else one error naming it and the valid ones."""
    if name not in EXECUTORS:
        raise WidthlabError(f"unknown executor {name!r}; valid: {', '.join(EXECUTORS)}")
    return name


@dataclass
class RunResult:
    """What a worker hands back: ``ok`` (outcome + metrics), ``failed`` (a broken run: the study goes on) or
    ``user_error`` (a mistake in the config or data: the study stops with that message)."""

    kind: str
    outcome: dict | None = None
    metrics: pd.DataFrame | None = None
    error: str | None = None


_WORKER_CACHE: dict = {}  # one data set per worker process, reused across its runs


def run_group(specs, checkpoints: Path, on_epoch=None, cache: dict | None = None,
              checkpoint_every: float = 0.0) -> list[RunResult]:
    """Execute a group of runs (`group_runs`: trained as one stacked model when they can be), one `RunResult`
    per run, every exception turned into one (exceptions need not cross processes). A run that breaks alone
    (its measurement, its own training) fails alone; an exception of the stacked training, or before any run
    starts, fails every run of the group (a rerun resumes each from its checkpoint)."""
    try:
        done = execute_runs(specs, data_cache=_WORKER_CACHE if cache is None else cache, on_epoch=on_epoch,
                            checkpoints=[_checkpoint(checkpoints, spec) for spec in specs],
                            checkpoint_every=checkpoint_every)
    except Exception as exc:  # a broken group must not sink the study; its traceback goes to the log
        return [_result(exc) for _ in specs]
    return [_result(item) for item in done]


def _result(item) -> RunResult:
    """A run's `RunResult` from what `execute_runs` handed back, (outcome, metrics), or from an exception:
    ``user_error`` for a WidthlabError (a mistake in the config or data), else ``failed`` with its traceback."""
    if isinstance(item, WidthlabError):
        return RunResult("user_error", error=str(item))
    if isinstance(item, Exception):
        trace = "".join(traceback.format_exception(item))
        return RunResult("failed", error=f"{type(item).__name__}: {item}\n{trace}")
    return RunResult("ok", *item)


def gpu_for_worker(worker: int, n_gpus: int, visible: str | None = None) -> str | None:
    """The CUDA_VISIBLE_DEVICES of worker `worker`: GPUs dealt round-robin (None without GPUs). `visible` is the
    driver's own CUDA_VISIBLE_DEVICES, if set: workers then share out those GPUs, not the machine's first ones."""
    if n_gpus == 0:
        return None
    ids = [part.strip() for part in visible.split(",") if part.strip()] if visible else []
    ids = ids[:n_gpus] if len(ids) >= n_gpus else [str(i) for i in range(n_gpus)]
    return ids[worker % n_gpus]


def _exit_with_parent(driver: int) -> None:
    """End this worker when the driver dies, even by SIGKILL: the kernel's parent-death signal on Linux, and a
    watchdog thread everywhere (a worker left alive would hold its memory, and the resource tracker, forever)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        pass
    if os.getppid() != driver:  # the driver died before the signal was armed (a worker starts in seconds)
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != driver:
                os._exit(1)

    threading.Thread(target=watch, name="widthlab-parent-watch", daemon=True).start()


def _init_worker(counter, n_gpus: int, driver: int) -> None:
    _exit_with_parent(driver)
    with counter.get_lock():
        worker = counter.value
        counter.value += 1
    gpu = gpu_for_worker(worker, n_gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if gpu is not None:  # before torch initialises CUDA in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def _checkpoint(checkpoints: Path, spec) -> str:
    """The run's checkpoint file: its escaped run id (a variant may be named ``k=1/4``) inside `checkpoints`."""
    return str(checkpoints / f"{file_name(spec.run_id)}.pt")


def run_local(groups, checkpoints: Path, progress: bool | None, started, every: float = 0.0,
              cache: dict | None = None) -> Iterator:
    """Groups one after another in this process, with a bar per group (epoch, loss, accuracy of its runs)."""
    from tqdm.auto import tqdm

    cache = {} if cache is None else cache
    for group in groups:
        epochs = group[0].config.train.epochs
        desc = group[0].run_id if len(group) == 1 else f"{group[0].run_id} (+{len(group) - 1} of its group)"
        bar = tqdm(total=epochs, desc=desc, unit="epoch", leave=False, position=1, dynamic_ncols=True,
                   disable=None if progress is None else not progress)

        def on_epoch(index, record, bar=bar):
            if index == 0:
                bar.n = record["epoch"]
                bar.set_postfix(loss=f"{record['loss']:.4f}", train=f"{record['train_acc']:.3f}",
                                val=f"{record['val_acc']:.3f}")

        for spec in group:
            started(spec)
        try:
            yield from zip(group, run_group(group, checkpoints, on_epoch, cache, every))
        finally:
            bar.close()


WORKER_DIED = ("its worker process died twice while running it (killed, or out of memory: see the system log); "
               "the study went on without it")


def run_processes(groups, checkpoints: Path, workers: int, started, every: float = 0.0,
                  stopped=lambda spec: None) -> Iterator:
    """Groups of runs on `workers` spawned processes, yielded run by run as their groups finish.

    At most `workers` groups are handed to the pool at a time, so a run is `started` when a worker takes it, not
    when it is queued. A worker that dies (SIGKILL, the out-of-memory killer) breaks the pool: its groups, and
    the others then in flight, go back to the queue (`stopped`) and are retried once on a fresh pool (from their
    checkpoints); a run whose worker dies twice is yielded as failed with that cause, and the study goes on.
    Workers exit when the driver dies.
    """
    import torch

    n_gpus = torch.cuda.device_count()
    context = multiprocessing.get_context("spawn")  # fork after torch initialises threads/CUDA is unsafe
    retried: set[str] = set()
    queue = list(groups)
    while queue:
        counter = context.Value("i", 0)
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                   initargs=(counter, n_gpus, os.getpid()))
        pending: dict = {}
        broken = False
        try:
            while pending or (queue and not broken):
                while queue and not broken and len(pending) < workers:
                    try:
                        future = pool.submit(run_group, queue[0], checkpoints, checkpoint_every=every)
                    except BrokenProcessPool:  # a worker died since the last wait: this pool takes no more
                        broken = True
                        break
                    pending[future] = group = queue.pop(0)
                    for spec in group:
                        started(spec)
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    group = pending.pop(future)
                    try:
                        results = future.result()
                    except BrokenProcessPool:
                        broken = True
                        if group[0].run_id in retried:
                            yield from ((spec, RunResult("failed", error=WORKER_DIED)) for spec in group)
                        else:  # retried run by run: a group too big for memory must not be killed again
                            retried.update(spec.run_id for spec in group)
                            for spec in group:
                                stopped(spec)
                            queue[:0] = [[spec] for spec in group]
                        continue
                    yield from zip(group, results)
        except BaseException:
            _stop(pool)  # Ctrl-C, SIGTERM or an error: the workers stop with the driver, not after their runs
            raise
        pool.shutdown(wait=True)


# Seconds a terminated worker has to exit before it is killed (a run's checkpoint is written atomically, so
# killing one mid-write loses nothing but the epochs since its last checkpoint).
STOP_GRACE = 5.0


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel the queued runs and end the workers of `pool` within `STOP_GRACE` seconds: SIGTERM, SIGCONT (a
    stopped worker acts on neither SIGTERM nor the driver's exit until it is continued), then SIGKILL for any
    still alive. Otherwise the driver would print its exit line and then hang in the pool's exit handler."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)
    deadline = time.monotonic() + STOP_GRACE
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()


def check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """A WidthlabError within `timeout` seconds when a ``host:port`` (or ``ray://host:port``) Ray address does not
    accept connections; Ray itself retries such an address for minutes before it gives up."""
    if not address or address in ("auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as exc:
        raise WidthlabError(f"no Ray cluster answers at {address!r} ({exc.strerror or exc}); start one with "
                            "`ray start --head`, or check the address") from None


def task_gpus(devices, cluster_gpus: float) -> float:
    """The GPUs a Ray task declares by default: one when a run trains on ``cuda``, or on ``auto`` in a cluster
    with GPUs; else none. A task that declares none sees none (Ray empties its CUDA_VISIBLE_DEVICES), so an
    ``auto`` run given no GPU would train on the CPU of a GPU node."""
    devices = list(devices)
    if any(device.startswith("cuda") for device in devices):
        return 1.0
    return 1.0 if cluster_gpus > 0 and "auto" in devices else 0.0


def run_ray(groups, checkpoints: Path, address: str | None, gpus_per_run: float | None, started,
            every: float = 0.0) -> Iterator:
    """Groups of runs as Ray tasks on the cluster at `address` (a local one when None), yielded as they finish.
    `gpus_per_run` None: `task_gpus`, decided once the cluster's resources are known.

    Checkpoints are written by the tasks, so on a multi-node cluster the study directory must be on a file
    system every node sees (or checkpoints only help runs that resume on the same node).
    """
    try:
        import ray
    except ImportError:
        raise WidthlabError("the ray executor needs Ray: pip install 'widthlab[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        check_reachable(address)
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, ignore_reinit_error=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {address!r}" if address else "a local Ray cluster"
            raise WidthlabError(f"cannot start or reach {where}: {str(exc).splitlines()[0]} (for a ray:// "
                                "address install ray[client]; for 'auto' start one with `ray start --head`)") from None
    groups = list(groups)
    if gpus_per_run is None:
        gpus_per_run = task_gpus((spec.config.train.device for group in groups for spec in group),
                                 ray.cluster_resources().get("GPU", 0))
    remote = ray.remote(run_group)
    refs: dict = {}
    try:
        for group in groups:
            options = remote.options(num_cpus=group[0].config.threads, num_gpus=gpus_per_run)
            refs[options.remote(group, checkpoints, checkpoint_every=every)] = group
            for spec in group:
                started(spec)
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                yield from zip(refs.pop(ref), ray.get(ref))
    finally:
        for ref in refs:
            ray.cancel(ref)
        if started_here:
            ray.shutdown()


def execute(executor: str, specs, checkpoints: Path, *, workers: int = 2, address: str | None = None,
            gpus_per_run: float | None = None, progress: bool | None = None, started=lambda spec: None,
            stopped=lambda spec: None, checkpoint_every: float = 0.0, data_cache: dict | None = None) -> Iterator:
    """Dispatch to the named executor; yields (spec, RunResult) as runs finish. `started(spec)` is called when
    a run starts (local, processes) or is handed to the cluster (ray); `gpus_per_run`: the GPUs a Ray task
    declares (None: `task_gpus`); `stopped(spec)` when a started run goes
    back to the queue without a result (processes: its worker died); runs write a checkpoint at most
    every `checkpoint_every` seconds (and after their last epoch). `data_cache` holds data sets the driver has
    loaded already; the local executor reuses them. Runs that can train as one stacked model are packed into
    groups first (`widthlab.study.runs.group_runs`); each group is one unit of work."""
    check_executor(executor)
    # One process computes the local executor's groups one after another: all widths in one group train fastest.
    # The others compute groups in parallel: one group per width keeps their workers busy.
    groups = group_runs(list(specs), widths_together=executor == "local")
    if executor == "local":
        return run_local(groups, checkpoints, progress, started, checkpoint_every, data_cache)
    if executor == "processes":
        return run_processes(groups, checkpoints, workers, started, checkpoint_every, stopped)
    return run_ray(groups, checkpoints, address, gpus_per_run, started, checkpoint_every)
