"""Training throughput: a plain eager fp32 PyTorch loop with a DataLoader versus widthlab's trainer.

Part 1 trains `alexnet_cifar` (28×28 inputs, batch 128, momentum SGD) at several widths on random CIFAR-shaped
data and prints seconds per epoch and images per second for the plain loop and for each widthlab variant, side
by side, with the ratio to the plain loop. Variants (`--variants`) are `widthlab.TrainConfig` switch settings:

- ``fp32``: widthlab's trainer with every GPU switch off (the data pipeline alone differs from the plain loop);
- ``eager``: data resident on the device, bf16 autocast, channels_last; no compilation;
- ``compiled``: ``eager`` + torch.compile (default mode; ``compile: auto`` compiles runs of 20,000 steps or more);
- ``graphs``: ``compiled`` with ``compile_mode=reduce-overhead`` (CUDA graphs).

The fastest epoch after the first counts; the first epoch's excess (compilation, cuDNN autotuning) is printed
as warm-up seconds, since a study of many short runs pays it once per run.

Part 2 (``--study``) times a whole fixed-length width study through `widthlab.run_study`: `alexnet_cifar` on a
CIFAR-10-format folder of random images written to a temporary directory (50,000 training images → the paper's
45,000 / 5,000 split), 5 widths × 3 replicates, `--study-epochs` epochs, zero-ablation measurement, with the
``processes`` executor packing `--workers` runs onto the device at once, the GPU switches at their automatic
settings unless `--study-set KEY=VALUE` (a `train.` field, repeatable) overrides them.

    python benchmarks/train_throughput.py                                  # CPU: 2,048 images, fp32 variant
    python benchmarks/train_throughput.py --device cuda --images 45000 --epochs 3
    python benchmarks/train_throughput.py --device cuda --study --workers 5 --study-epochs 30 --skip-throughput
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from widthlab import TrainConfig, create_model, fit, run_study
from widthlab.data import ArrayDataset, Splits

VARIANTS = {
    "fp32": {"amp": "off", "channels_last": "off", "compile": "off", "data_on_device": "off"},
    "eager": {"amp": "on", "channels_last": "on", "compile": "off", "data_on_device": "on"},
    "compiled": {"amp": "on", "channels_last": "on", "compile": "on", "data_on_device": "on"},
    "graphs": {"amp": "on", "channels_last": "on", "compile": "on", "data_on_device": "on",
               "compile_mode": "reduce-overhead"},
}


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def plain_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, device: str) -> list[float]:
    """Seconds of each epoch of the textbook loop: DataLoader, host-to-device copies, fp32 eager."""
    loader = DataLoader(TensorDataset(x, y), batch_size=128, shuffle=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    model.to(device).train()
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            opt.zero_grad()
            loss_fn(model(xb), yb).backward()
            opt.step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def widthlab_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, device: str,
                  switches: dict) -> list[float]:
    """Seconds of each epoch of `widthlab.fit` (its per-epoch validation pass on 128 images included)."""
    small = ArrayDataset(x[:128], y[:128])
    splits = Splits(ArrayDataset(x, y), small, small, num_classes=10, input_shape=tuple(x.shape[1:]))
    stamps = []

    def on_epoch(_record):
        synchronize(device)
        stamps.append(time.perf_counter())

    cfg = TrainConfig(lr=0.01, batch_size=128, epochs=epochs, device=device, **switches)
    start = time.perf_counter()
    fit(model, splits, cfg, on_epoch=on_epoch)
    return [b - a for a, b in zip([start, *stamps[:-1]], stamps)]


def steady(times: list[float]) -> tuple[float, float]:
    """(fastest epoch after the first, the first epoch's excess over it): the steady state and the warm-up."""
    best = min(times[1:] or times)
    return best, times[0] - best


def throughput(args) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.images, 3, 28, 28, generator=gen)
    y = torch.randint(0, 10, (args.images,), generator=gen)
    variants = args.variants.split(",")
    print(f"alexnet_cifar, {args.images} images of 3x28x28, batch 128, device {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; s/epoch (img/s) [warm-up s]")
    header = f"{'width':>6} {'plain':>24}" + "".join(f" {name:>31}" for name in variants)
    print(header)
    for width in (float(w) for w in args.widths.split(",")):
        plain, plain_warm = steady(plain_loop(create_model("alexnet_cifar", width, input_size=28, seed=0), x, y,
                                              args.epochs, args.device))
        row = f"{width:>6g} {plain:>8.3f} ({args.images / plain:>6.0f}) [{plain_warm:>4.1f}]"
        for name in variants:
            ours, warm = steady(widthlab_loop(create_model("alexnet_cifar", width, input_size=28, seed=0), x, y,
                                              args.epochs, args.device, VARIANTS[name]))
            row += f" {ours:>8.3f} ({args.images / ours:>6.0f}) [{warm:>4.1f}] {plain / ours:>5.2f}x"
        print(row, flush=True)


def write_cifar10_folder(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Random uint8 images in the CIFAR-10 python format (5 training batches and a test batch) under `root`."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = [n_train // 5 + (b < n_train % 5) for b in range(5)]
    for name, n in [*((f"data_batch_{b + 1}", size) for b, size in enumerate(sizes)), ("test_batch", n_test)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return root


def report_progress(out: Path, start: float, runs: int, finished: threading.Event, every: float = 30.0) -> None:
    """Print how many runs are stored every `every` seconds (a study cut short by a time limit still says
    how far it got)."""
    import sqlite3

    while not finished.wait(every):
        try:
            with sqlite3.connect(f"file:{out / 'widthlab.sqlite'}?mode=ro", uri=True) as db:
                done = db.execute("SELECT COUNT(*) FROM runs WHERE status = 'done'").fetchone()[0]
        except sqlite3.Error:
            done = 0
        print(f"  {time.perf_counter() - start:6.0f} s: {done}/{runs} runs stored", flush=True)


def study(args) -> None:
    import pandas as pd

    from widthlab import load_results

    widths = [float(w) for w in args.study_widths.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = write_cifar10_folder(Path(tmp) / "data", args.study_images, args.study_images // 5)
        n_val = args.study_images // 10
        config = {
            "name": "throughput-study", "seed": 0,
            "data": {"name": "cifar10", "root": str(root), "crop_size": 28, "augment": False, "n_val": n_val},
            "model": {"name": "alexnet_cifar", "init": "he_normal", "input_size": 28},
            "train": {"optimizer": "momentum", "lr": 0.01, "batch_size": 128, "epochs": args.study_epochs,
                      "schedule": "step", "lr_decay": 0.95, "device": args.device,
                      **dict(item.split("=", 1) for item in args.study_set)},
            "measure": {"perturbations": ["zero"], "levels": 11, "samplings": 1, "max_rows": 50_000},
            "grid": {"widths": widths, "replicates": args.replicates},
        }
        runs = len(widths) * args.replicates
        print(f"\nwidth study: alexnet_cifar on {args.study_images - n_val:,} random CIFAR-shaped training images, "
              f"{len(widths)} widths x {args.replicates} replicates x {args.study_epochs} epochs = {runs} runs, "
              f"executor {args.executor} ({args.workers} workers), device {args.device}", flush=True)
        start = time.perf_counter()
        finished = threading.Event()
        reporter = threading.Thread(target=report_progress, args=(Path(tmp) / "study", start, runs, finished),
                                    daemon=True)
        reporter.start()
        try:
            out = run_study(config, Path(tmp) / "study", executor=args.executor, workers=args.workers,
                            progress=False, report=False)
        finally:
            finished.set()
        wall = time.perf_counter() - start
        results = load_results(out)
        runs_frame = results.runs
        done = int((runs_frame.status == "done").sum())
        per_width = runs_frame.groupby("width").seconds.mean()
        print(f"wall {wall:.1f} s ({wall / 60:.2f} min) for {done}/{runs} runs done; training seconds per run "
              f"(mean by width): " + ", ".join(f"{w:g}x {s:.1f}" for w, s in per_width.items()))
        print(f"sum of per-run training seconds {runs_frame.seconds.sum():.1f} s; mean test accuracy "
              f"{pd.to_numeric(runs_frame.test_acc).mean():.3f} (random labels: chance is 0.1)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per measurement (the fastest after the first "
                                                             "counts)")
    parser.add_argument("--widths", default="0.25,1,4")
    parser.add_argument("--variants", default=None, help=f"comma-separated, of {', '.join(VARIANTS)} "
                                                         "(default: fp32 on the CPU, all on CUDA)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-throughput", action="store_true", help="run the study part only")
    parser.add_argument("--study", action="store_true", help="also time a whole width study (part 2)")
    parser.add_argument("--study-images", type=int, default=50_000, help="training-file images (1/10 is validation)")
    parser.add_argument("--study-epochs", type=int, default=30)
    parser.add_argument("--study-widths", default="0.25,0.5,1,2,4")
    parser.add_argument("--replicates", type=int, default=3)
    parser.add_argument("--study-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a train field for the study, e.g. compile=on or compile_mode=reduce-overhead")
    parser.add_argument("--executor", default="processes", choices=("local", "processes", "ray"))
    parser.add_argument("--workers", type=int, default=5)
    args = parser.parse_args()
    if args.variants is None:
        args.variants = "fp32" if args.device == "cpu" else ",".join(VARIANTS)
    unknown = sorted(set(args.variants.split(",")) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; valid: {', '.join(VARIANTS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this machine has no CUDA GPU")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.skip_throughput:
        throughput(args)
    if args.study:
        study(args)


if __name__ == "__main__":
    main()
