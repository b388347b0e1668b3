"""The GPU session's one table: widthlab's trainer against a plain fp32 PyTorch loop on the AlexNet width study,
and widthlab's measurement engine against the reference algorithm, printed side by side and written to a file.

Training (per width factor, `--replicates` runs of `alexnet_cifar` on `--images` random CIFAR-shaped images of
3×28×28 with random labels, batch 128, momentum SGD, `--epochs` epochs each; wall seconds include everything a
study pays per run: compilation, cuDNN autotuning, the per-epoch validation pass on `--val` images):

- ``plain``: the airbench-style textbook loop: the data set resident on the device, a random permutation per
  epoch sliced into batches, fp32 eager, no validation; the baseline every other column is divided by;
- ``one by one``: `widthlab.fit` per run with its automatic GPU switches (bf16 autocast, channels_last, data on
  the device; no compilation);
- ``stacked``: `widthlab.train.fit_group`, the replicates trained as one model (grouped convolutions on CUDA);
- ``compiled``: `widthlab.fit` per run with ``compile: on`` (torch.compile's default mode, compiled per run).

Each cell is ``wall s / images per s / × plain`` (images per second: replicates × epochs × images over the wall
time; ``× plain``: plain's wall time over the cell's, above 1 is faster). A cell that cannot run says why in one
word (``no``: the runs cannot train stacked, the reason printed below the table; ``skipped``: `--budget` was
spent). The width rows run from the narrowest, so a budget cuts the widest.

Measurement: `benchmarks/measure_vs_reference.py` (AlexNet 1x, 1,000 inputs, zero ablation at 11 levels × 3
samplings, redundancy) run as it is; its lines are appended to the table.

    python benchmarks/gpu_table.py                          # CUDA when there is one: ~8 minutes on one H100
    python benchmarks/gpu_table.py --out table.txt --budget 420
    python benchmarks/gpu_table.py --device cpu --quick     # every column on the CPU, tiny: a sanity run (minutes: compilation)
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from widthlab import TrainConfig, create_model, fit
from widthlab.data import ArrayDataset, Splits
from widthlab.train.vectorized import NotStackable, fit_group

HERE = Path(__file__).resolve().parent
COLUMNS = ("plain", "one by one", "stacked", "compiled")


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def plain_runs(models: list[nn.Module], x: torch.Tensor, y: torch.Tensor, epochs: int, device: str) -> None:
    """The airbench-style fp32 loop, run by run: data on the device, one permutation per epoch."""
    loss_fn = nn.CrossEntropyLoss()
    for seed, model in enumerate(models):
        model.to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        gen = torch.Generator(device=device).manual_seed(seed)
        for _ in range(epochs):
            order = torch.randperm(len(x), device=device, generator=gen)
            for batch in order.split(128):
                opt.zero_grad(set_to_none=True)
                loss_fn(model(x[batch]), y[batch]).backward()
                opt.step()


def splits_on(x: torch.Tensor, y: torch.Tensor, val: int) -> Splits:
    small = ArrayDataset(x[:val].cpu(), y[:val].cpu())
    return Splits(ArrayDataset(x.cpu(), y.cpu()), small, small, num_classes=10, input_shape=tuple(x.shape[1:]))


def configs(args, **switches) -> list[TrainConfig]:
    return [TrainConfig(lr=0.01, batch_size=128, epochs=args.epochs, seed=r, device=args.device,
                        eval_batch_size=1024, **switches) for r in range(args.replicates)]


def timed(fn, device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def width_row(width: float, args, x, y, splits, deadline: float, notes: list[str]) -> dict[str, float | str]:
    """Wall seconds of each column at `width` (or a word saying why a cell did not run)."""
    models = [create_model("alexnet_cifar", width, input_size=28, seed=r) for r in range(args.replicates)]
    fresh = lambda: [copy.deepcopy(m) for m in models]  # noqa: E731 - every column starts from the same weights
    cells: dict[str, float | str] = {}
    runs = {
        "plain": lambda: plain_runs(fresh(), x, y, args.epochs, args.device),
        "one by one": lambda: [fit(m, splits, c) for m, c in zip(fresh(), configs(args, compile="off"))],
        "stacked": lambda: fit_group(fresh(), splits, configs(args, compile="off")),
        "compiled": lambda: [fit(m, splits, c) for m, c in zip(fresh(), configs(args, compile="on"))],
    }
    for column in COLUMNS:
        if time.perf_counter() > deadline:
            cells[column] = "skipped"
            continue
        try:
            cells[column] = timed(runs[column], args.device)
        except NotStackable as err:
            cells[column] = "no"
            notes.append(f"{width:g}x stacked: {err}")
    return cells


def cell(value: float | str, plain: float | str, work: float) -> str:
    if isinstance(value, str):
        return value
    ratio = f"{plain / value:5.2f}x" if isinstance(plain, float) else "  -  "
    return f"{value:7.1f} s {work / value:9.0f}/s {ratio}"


def measurement_lines(args) -> list[str]:
    """measure_vs_reference.py's result lines (engine vs reference on AlexNet 1x), run as it is."""
    cmd = [sys.executable, str(HERE / "measure_vs_reference.py"), *(["--quick"] if args.quick else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0:
        lines.append(f"measure_vs_reference.py failed (exit {proc.returncode}): {proc.stderr.strip()[-400:]}")
    return [f"$ python benchmarks/measure_vs_reference.py{' --quick' if args.quick else ''}", *lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--widths", default="0.25,0.5,1,2,4")
    parser.add_argument("--replicates", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--images", type=int, default=45_000, help="training images (default 45,000: CIFAR-10's)")
    parser.add_argument("--val", type=int, default=5_000, help="validation images evaluated after every epoch")
    parser.add_argument("--budget", type=float, default=480, help="seconds for the training rows (default 480)")
    parser.add_argument("--quick", action="store_true", help="512 images, widths 1/4 and 1, 2 replicates, 1 epoch")
    parser.add_argument("--out", default="gpu-table.txt", help="file the table is written to (default gpu-table.txt)")
    args = parser.parse_args()
    if args.quick:
        args.images, args.val, args.widths, args.replicates, args.epochs = 512, 128, "0.25,1", 2, 1
    widths = [float(w) for w in args.widths.split(",")]
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    out = Path(args.out)
    lines: list[str] = []

    def emit(line: str = "") -> None:  # the file is rewritten after every line: a cut run keeps its rows
        print(line, flush=True)
        lines.append(line)
        out.write_text("\n".join(lines) + "\n")

    emit(f"alexnet_cifar width study on {name} (torch {torch.__version__}): {args.replicates} runs × {args.epochs} "
         f"epochs × {args.images:,} images of 3x28x28 per width, batch 128; each cell: wall s, images/s, × plain")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.images, 3, 28, 28, generator=gen).to(args.device)
    y = torch.randint(0, 10, (args.images,), generator=gen).to(args.device)
    splits = splits_on(x, y, args.val)
    plain_runs([create_model("alexnet_cifar", 0.25, input_size=28, seed=0)], x[:256], y[:256], 1, args.device)
    emit(f"{'width':>6}" + "".join(f" | {c:^28}" for c in COLUMNS))
    deadline = time.perf_counter() + args.budget
    notes: list[str] = []
    work = args.replicates * args.epochs * args.images
    for width in widths:
        cells = width_row(width, args, x, y, splits, deadline, notes)
        emit(f"{width:>6g}" + "".join(f" | {cell(cells[c], cells['plain'], work):>28}" for c in COLUMNS))
    for note in notes:
        emit(f"  {note}")
    emit()
    for line in measurement_lines(args):
        emit(line)
    print(f"(written to {out})")


if __name__ == "__main__":
    main()
