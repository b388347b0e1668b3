"""Benchmark (not a test): the extra memory of analysing one 64-channel 32×32 conv layer at growing input counts.

The layer is the ReLU after a 3→64 3×3 convolution on 3×32×32 inputs (each example gives 1,024 rows of 64 units).
`analyze` measures its redundancy (``perturbations=()``: principal components, similarity, the unit census and the
similarity permutation null on 20,000 sampled rows) with the default batch of 256 examples. Streaming keeps that
cost independent of the number of inputs: memory grows with the batch and the units, not with the rows.

Extra memory is the process's peak resident set (VmHWM) during `analyze` minus its resident set just before,
after the model and the inputs exist (so the inputs themselves are not counted). Resident memory, not
``tracemalloc``, because most of the memory is torch's and numpy's native buffers, which ``tracemalloc`` does not
see, and torch keeps no allocation statistics for the CPU. The peak is reset (``/proc/self/clear_refs``) before
`analyze` starts, and each input count runs in a fresh process, so imports and the other counts do not leak in.
Linux only.

Usage:
    python benchmarks/streaming_memory.py                       # 500, 5,000 and 50,000 inputs
    python benchmarks/streaming_memory.py --inputs 500 5000     # other counts
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

import torch
from torch import nn

UNITS, SIZE, BATCH = 64, 32, 256


def status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def measure(inputs: int, threads: int) -> dict:
    """Extra peak memory (MiB) and seconds of `analyze` on the conv layer for `inputs` random examples."""
    from widthlab.measure import analyze

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, UNITS, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(UNITS, 10)).eval()
    x = torch.randn(inputs, 3, SIZE, SIZE)
    with torch.no_grad():
        model(x[:2])  # libraries initialised before the baseline: their one-off buffers are not the analysis's
    before = status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current resident set
    start = time.perf_counter()
    frame = analyze(model, x, layers=["1"], perturbations=(), batch_size=BATCH)
    seconds = time.perf_counter() - start
    peak = status_mib("VmHWM")
    pcs = frame[(frame.metric == "pcs_needed")].value.iloc[0]
    return {"extra": peak - before, "seconds": seconds, "rows": inputs * SIZE * SIZE, "pcs": int(pcs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, nargs="+", default=[500, 5_000, 50_000],
                        help="input counts, one fresh process each (default 500 5000 50000)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    results = []
    for inputs in args.inputs:
        with context.Pool(1) as pool:
            results.append(pool.apply(measure, (inputs, args.threads)))
    print(f"analyze(perturbations=()) of a {UNITS}-channel {SIZE}x{SIZE} conv layer (ReLU output), batch {BATCH}, "
          f"{args.threads} threads")
    width = 12
    print(f"{'inputs':>16s}" + "".join(f"{n:>{width},d}" for n in args.inputs))
    print(f"{'rows':>16s}" + "".join(f"{r['rows']:>{width},d}" for r in results))
    print(f"{'extra MiB':>16s}" + "".join(f"{r['extra']:>{width}.0f}" for r in results))
    print(f"{'seconds':>16s}" + "".join(f"{r['seconds']:>{width}.1f}" for r in results))
    print(f"{'pcs_needed':>16s}" + "".join(f"{r['pcs']:>{width}d}" for r in results))


if __name__ == "__main__":
    main()
