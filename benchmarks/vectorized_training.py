"""Training throughput of replicate runs: one stacked model (`widthlab.train.fit_group`) versus one by one (`fit`).

Two workloads, each trained both ways in one invocation, printed side by side with the speed-up:

- ``mlp``: 15 replicate MLPs of mlp-10d (width `--mlp-width`, 10-d synthetic teacher data, 1,000 training
  examples, batch 32, momentum SGD), `--mlp-epochs` epochs;
- ``widths``: mlp-10d's 5 widths × `--widths-runs` runs, `--mlp-epochs` epochs, stacked one group per width
  against all widths as one group (one stacked part per width, `widthlab.train.mixed`; the same numbers);
- ``alexnet``: 3 replicate `alexnet_cifar` at 1/4x on scikit-learn's digits resized to 32×32 (1,437 training
  images, batch 128), `--alexnet-epochs` epochs.

Both ways train the same runs from the same initial weights, so the script also checks that their test
accuracies agree (float32: to rounding). Throughput counts training examples per second summed over the runs.

    python benchmarks/vectorized_training.py                       # CPU, both workloads (about a minute)
    python benchmarks/vectorized_training.py --device cuda --mlp-epochs 50 --alexnet-epochs 10
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from widthlab import TrainConfig, create_model, fit, load_data
from widthlab.train.vectorized import fit_group


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def workload(name: str, models, splits, cfgs) -> dict:
    # Warm-up: both paths once on two runs for one step (first-call imports and kernel selection are not timed).
    short = [c.model_copy(update={"max_steps": 1, "epochs": 1}) for c in cfgs[:2]]
    fit(copy.deepcopy(models[0]), splits, short[0])
    fit_group([copy.deepcopy(m) for m in models[:2]], splits, short)
    alone_models = [copy.deepcopy(m) for m in models]
    alone: list = []
    t_alone = _time(lambda: alone.extend(fit(m, splits, c) for m, c in zip(alone_models, cfgs)))
    together: list = []
    t_together = _time(lambda: together.extend(fit_group(models, splits, cfgs)))
    examples = sum(len(r.history) for r in together) * len(splits.train)
    gap = max(abs(a.test_acc - b.test_acc) for a, b in zip(alone, together))
    return {"workload": name, "runs": len(models), "one_by_one_s": t_alone, "stacked_s": t_together,
            "one_by_one_ex_s": examples / t_alone, "stacked_ex_s": examples / t_together,
            "speedup": t_alone / t_together, "max_test_acc_gap": gap}


def widths_workload(args) -> dict:
    """mlp-10d's widths: each width's runs stacked as a group of their own ("one by one" column: one group after
    another) against every width in one group."""
    splits = load_data("synthetic", input_dim=10, n_train=1000, n_val=1000, n_test=1000, seed=0)
    widths = [0.25, 0.5, 1.0, 2.0, 4.0]
    models = [create_model("mlp", w, init="normal", sigma=0.01, seed=r, input_dim=10)
              for w in widths for r in range(args.widths_runs)]
    cfgs = [TrainConfig(lr=0.01, batch_size=32, epochs=args.mlp_epochs, seed=r, device=args.device)
            for r in range(len(models))]
    fit_group([copy.deepcopy(m) for m in models[:2]], splits,
              [c.model_copy(update={"max_steps": 1, "epochs": 1}) for c in cfgs[:2]])  # warm-up
    n = args.widths_runs
    per_width_models = [copy.deepcopy(m) for m in models]
    per_width: list = []
    t_apart = _time(lambda: [per_width.extend(fit_group(per_width_models[i:i + n], splits, cfgs[i:i + n]))
                             for i in range(0, len(models), n)])
    together: list = []
    t_together = _time(lambda: together.extend(fit_group(models, splits, cfgs)))
    examples = sum(len(r.history) for r in together) * len(splits.train)
    gap = max(abs(a.test_acc - b.test_acc) for a, b in zip(per_width, together))
    return {"workload": "mlp 5 widths", "runs": len(models), "one_by_one_s": t_apart, "stacked_s": t_together,
            "one_by_one_ex_s": examples / t_apart, "stacked_ex_s": examples / t_together,
            "speedup": t_apart / t_together, "max_test_acc_gap": gap}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one run's share)")
    parser.add_argument("--mlp-runs", type=int, default=15)
    parser.add_argument("--mlp-width", type=float, default=1.0)
    parser.add_argument("--mlp-epochs", type=int, default=10)
    parser.add_argument("--alexnet-runs", type=int, default=3)
    parser.add_argument("--alexnet-epochs", type=int, default=2)
    parser.add_argument("--widths-runs", type=int, default=3, help="runs per width of the widths workload")
    parser.add_argument("--only", choices=("mlp", "widths", "alexnet"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    if args.only in (None, "mlp"):
        splits = load_data("synthetic", input_dim=10, n_train=1000, n_val=1000, n_test=1000, seed=0)
        models = [create_model("mlp", args.mlp_width, init="normal", sigma=0.01, seed=r, input_dim=10)
                  for r in range(args.mlp_runs)]
        cfgs = [TrainConfig(lr=0.01, batch_size=32, epochs=args.mlp_epochs, seed=r, device=args.device)
                for r in range(args.mlp_runs)]
        rows.append(workload(f"mlp {args.mlp_width:g}x", models, splits, cfgs))
    if args.only in (None, "widths"):
        rows.append(widths_workload(args))
    if args.only in (None, "alexnet"):
        splits = load_data("digits", image_size=32, seed=0)
        models = [create_model("alexnet_cifar", 0.25, num_classes=splits.num_classes, seed=r)
                  for r in range(args.alexnet_runs)]
        cfgs = [TrainConfig(lr=0.01, batch_size=128, epochs=args.alexnet_epochs, seed=r, device=args.device)
                for r in range(args.alexnet_runs)]
        rows.append(workload("alexnet_cifar 1/4x", models, splits, cfgs))
    print(f"device {args.device}, torch {torch.__version__}, {args.threads} thread(s)")
    print(f"{'workload':<20}{'runs':>5}{'one by one s':>14}{'stacked s':>11}{'one by one ex/s':>17}"
          f"{'stacked ex/s':>14}{'speed-up':>10}{'test acc gap':>14}")
    for r in rows:
        print(f"{r['workload']:<20}{r['runs']:>5}{r['one_by_one_s']:>14.2f}{r['stacked_s']:>11.2f}"
              f"{r['one_by_one_ex_s']:>17,.0f}{r['stacked_ex_s']:>14,.0f}{r['speedup']:>9.1f}x"
              f"{r['max_test_acc_gap']:>14.2g}")


if __name__ == "__main__":
    main()
