"""Training throughput: a plain eager fp32 PyTorch loop with a DataLoader versus widthlab's trainer.

Trains `alexnet_cifar` (28×28 inputs, batch 128, momentum SGD) at several widths on random CIFAR-shaped data
and prints images per second and epoch time for both, side by side, with their ratio. On CUDA widthlab's
automatic GPU path applies (data resident on the device, bf16 autocast, channels_last, torch.compile); on the
CPU both run the same fp32 arithmetic, so the ratio shows only the data-pipeline overhead.

    python benchmarks/train_throughput.py                        # CPU: 2,048 images, widths 1/4, 1, 4
    python benchmarks/train_throughput.py --device cuda --images 45000 --epochs 3
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from widthlab import TrainConfig, create_model, fit
from widthlab.data import ArrayDataset, Splits


def plain_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, device: torch.device) -> float:
    """Seconds per epoch of the textbook loop: DataLoader, host-to-device copies, fp32 eager."""
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
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times[1:] or times)  # the first epoch pays for warm-up (cuDNN autotuning)


def widthlab_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, device: str) -> float:
    """Seconds per epoch of `widthlab.fit` (its per-epoch validation pass on 128 images included)."""
    small = ArrayDataset(x[:128], y[:128])
    splits = Splits(ArrayDataset(x, y), small, small, num_classes=10, input_shape=tuple(x.shape[1:]))
    stamps = []

    def on_epoch(_record):
        if device == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    start = time.perf_counter()
    fit(model, splits, TrainConfig(lr=0.01, batch_size=128, epochs=epochs, device=device), on_epoch=on_epoch)
    gaps = [b - a for a, b in zip([start, *stamps[:-1]], stamps)]
    return min(gaps[1:] or gaps)  # the first epoch pays for compilation / warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per measurement (the fastest one counts)")
    parser.add_argument("--widths", default="0.25,1,4")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.images, 3, 28, 28, generator=gen)
    y = torch.randint(0, 10, (args.images,), generator=gen)
    device = torch.device(args.device)
    print(f"alexnet_cifar, {args.images} images of 3x28x28, batch 128, device {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'width':>6} {'plain s/epoch':>14} {'plain img/s':>12} {'widthlab s/epoch':>17} {'widthlab img/s':>15} "
          f"{'speed-up':>9}")
    for width in (float(w) for w in args.widths.split(",")):
        plain = plain_loop(create_model("alexnet_cifar", width, input_size=28, seed=0), x, y, args.epochs, device)
        ours = widthlab_loop(create_model("alexnet_cifar", width, input_size=28, seed=0), x, y, args.epochs,
                             args.device)
        print(f"{width:>6g} {plain:>14.3f} {args.images / plain:>12.0f} {ours:>17.3f} {args.images / ours:>15.0f} "
              f"{plain / ours:>8.2f}x")


if __name__ == "__main__":
    main()
