"""A plain PyTorch script for the MLP 10-d width study: train every cell of the grid, measure it, write CSVs.

This is the baseline `benchmarks/main_job_vs_plain.py` times widthlab against: what a careful researcher would write
by hand, in one file, with no widthlab import. It does the work of ``widthlab run mlp-10d --set grid.select=null``:

Data   a random teacher MLP (10 → 32 ReLU → 2; Glorot-normal weights, hidden biases N(0, 1), readout bias 0)
       labels N(0, I) inputs by argmax; the teacher is redrawn until each label is 40–60% of 20,000 random
       inputs; 1,000 train / 1,000 validation / 1,000 test examples; one teacher and one data set for the study.
Model  10 → round(128·w) ReLU → 2, weights N(0, σ²), biases 0, seeded by the replicate.
Grid   widths 1/4, 1/2, 1, 2, 4 × σ ∈ {0.001, 0.01, 0.1} × replicates 0, 1, 2 = 45 trainings.
Train  SGD, momentum 0.9, lr 0.01, batch 32 (a shuffled order per epoch, the last batch of 8 kept),
       cross-entropy, 50 epochs (72,000 optimiser steps in all); validation accuracy after every epoch;
       train / validation / test accuracy of the final weights.
Measure, on the test split's 1,000 hidden-layer rows (the hidden ReLU is the only unit layer):
       - redundancy from the float64 covariance of all rows, once: pcs_needed (smallest k whose top-k
         eigenvalues hold 95% of the variance), compressibility = 1 − k/C; similarity (mean over all C units of
         the number of other non-flat units with |Pearson r| ≥ 0.5; flat units, std ≤ 1e-6 × the largest, count
         0), similarity over live units, similar_fraction, the 50-bin |r| histogram, silent and constant unit
         shares;
       - the similarity permutation null (each unit's rows shuffled independently, one permutation) and
         observed − null;
       - class selectivity per unit (class k* of the largest mean on the training split, evaluated on test);
       - ablation curves for `zero` and `mean` perturbations: 3 samplings, each one random unit order; at each of
         11 levels p = 0, 0.1, …, 1 the first ⌊p·C + 0.5⌋ units of that order are zeroed (or set to their test
         mean), the readout is applied, and the share of test predictions equal to the unperturbed ones and the
         accuracy are recorded; robustness = trapezoid area under the curve; prunability x* = where the zero
         curve first falls below 0.8 (linear interpolation; 1 if never).
Output <out>/runs.csv (one row per training: accuracies, redundancy, null, selectivity, robustness per
       perturbation as mean and std over samplings, timings) and <out>/curves.csv (every curve point).

What it does not do (and widthlab's main job does): no result store, resumption, checkpoints, progress bar,
figures, HTML report or statistical verdict; the ablated hidden layer is perturbed once and only the readout is
re-run (the hidden layer is a cut of this network), as widthlab's engine also does. Its random streams are its
own (plain `torch.Generator` seeds), so the teacher, data, initial weights, batch orders and unit orders differ
from widthlab's and its numbers agree with widthlab's only statistically, not bit for bit.

Usage:
    python benchmarks/plain_mlp10d.py --out /tmp/plain                     # the full 45-run study
    python benchmarks/plain_mlp10d.py --out /tmp/plain --epochs 5 --widths 0.25 1 --threads 1
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import time

import numpy as np
import torch
from torch import nn

INPUT_DIM, TEACHER_HIDDEN, CLASSES = 10, 32, 2
N_TRAIN = N_VAL = N_TEST = 1000
BALANCE_INPUTS, BALANCE = 20_000, (0.4, 0.6)
LR, MOMENTUM, BATCH = 0.01, 0.9, 32
LEVELS = np.linspace(0.0, 1.0, 11)
SAMPLINGS = 3
ENERGY, THRESHOLD, BINS = 0.95, 0.5, 50
FLAT_RTOL, CONSTANT_RTOL, SILENT_SHARE = 1e-6, 1e-3, 0.01
PRUNE_THETA = 0.8


def mlp(hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(INPUT_DIM, hidden), nn.ReLU(), nn.Linear(hidden, CLASSES))


@torch.no_grad()
def make_data(seed: int):
    """Teacher-labelled Gaussian inputs: (x, y) for train, validation and test."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(1000):
        teacher = mlp(TEACHER_HIDDEN)
        for layer in (teacher[0], teacher[2]):
            fan_out, fan_in = layer.weight.shape
            layer.weight.normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)), generator=gen)
            layer.bias.zero_()
        teacher[0].bias.normal_(0.0, 1.0, generator=gen)
        share = teacher(torch.randn(BALANCE_INPUTS, INPUT_DIM, generator=gen)).argmax(1).float().mean().item()
        if BALANCE[0] <= share <= BALANCE[1]:
            break
    else:
        raise RuntimeError("no balanced teacher")
    splits = []
    for n in (N_TRAIN, N_VAL, N_TEST):
        x = torch.randn(n, INPUT_DIM, generator=gen)
        splits.append((x, teacher(x).argmax(1)))
    return splits


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model(x).argmax(1) == y).float().mean().item()


def train(hidden: int, sigma: float, replicate: int, data, epochs: int) -> tuple[nn.Module, dict]:
    (xtr, ytr), (xva, yva), (xte, yte) = data
    torch.manual_seed(replicate)
    model = mlp(hidden)
    gen = torch.Generator().manual_seed(replicate)
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.normal_(0.0, sigma, generator=gen)
            layer.bias.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    loss_fn = nn.CrossEntropyLoss()
    order_gen = torch.Generator().manual_seed(1000 + replicate)
    best_val, best_epoch, last_loss = -1.0, 0, math.nan
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(N_TRAIN, generator=order_gen)
        loss_sum = torch.zeros((), dtype=torch.float64)
        for start in range(0, N_TRAIN, BATCH):
            idx = order[start:start + BATCH]
            loss = loss_fn(model(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach().double() * len(idx)
        last_loss = loss_sum.item() / N_TRAIN
        if not math.isfinite(last_loss):
            raise RuntimeError(f"diverged: width {hidden}, sigma {sigma}, replicate {replicate}, epoch {epoch}")
        model.eval()
        val = accuracy(model, xva, yva)
        if val > best_val:
            best_val, best_epoch = val, epoch
    model.eval()
    return model, {"train_acc": accuracy(model, xtr, ytr), "val_acc": accuracy(model, xva, yva),
                   "test_acc": accuracy(model, xte, yte), "best_epoch": best_epoch, "final_loss": last_loss}


def redundancy(acts: np.ndarray) -> dict:
    """pcs_needed, compressibility, similarity and the unit census of a (rows, units) float64 matrix."""
    units = acts.shape[1]
    cov = np.cov(acts, rowvar=False).reshape(units, units)
    eig = np.clip(np.linalg.eigvalsh(cov), 0.0, None)[::-1]
    total = eig.sum()
    pcs = 0 if total <= 0 else min(int(np.searchsorted(np.cumsum(eig) / total, ENERGY - 1e-12)) + 1, units)
    std = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    flat = np.ones(units, bool) if std.max() == 0 else std <= FLAT_RTOL * std.max()
    live = np.flatnonzero(~flat)
    sub = cov[np.ix_(live, live)]
    abs_r = np.clip(np.abs(sub / np.outer(std[live], std[live])), 0.0, 1.0)
    similar = abs_r >= THRESHOLD
    np.fill_diagonal(similar, False)
    counts = similar.sum(1)
    hist = np.histogram(abs_r[np.triu_indices(len(live), 1)], bins=BINS, range=(0.0, 1.0))[0]
    constant = std <= CONSTANT_RTOL * np.median(std[live]) if len(live) else np.ones(units, bool)
    sim = counts.sum() / units
    return {"n_units": units, "pcs_needed": pcs, "compressibility": 1.0 - pcs / units, "similarity": sim,
            "similarity_live": counts.sum() / len(live) if len(live) else 0.0,
            "similar_fraction": sim / (units - 1) if units > 1 else 0.0,
            "silent_fraction": float(((acts > 0).sum(0) < SILENT_SHARE * len(acts)).mean()),
            "constant_fraction": float(constant.mean()), "flat": flat, "hist": hist}


def selectivity(h_train: np.ndarray, y_train: np.ndarray, h_test: np.ndarray, y_test: np.ndarray,
                skip: np.ndarray) -> float:
    """Mean over units of (μ_k* − μ_rest)/(μ_k* + μ_rest) on test, k* from train; flat/silent units count 0."""
    def class_means(h, y):
        return np.stack([h[y == c].mean(0) for c in range(CLASSES)])  # (classes, C)
    best = class_means(h_train, y_train).argmax(0)
    means = class_means(h_test, y_test)
    top = means[best, np.arange(means.shape[1])]
    rest = (means.sum(0) - top) / (CLASSES - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sel = np.where(top + rest > 0, (top - rest) / (top + rest), 0.0)
    sel[skip] = 0.0
    return float(sel.mean())


@torch.no_grad()
def ablation_curves(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, seed: int):
    """{perturbation: (unchanged (S, L), accuracy (S, L))} for zero and mean ablation of the hidden layer."""
    hidden = model[1](model[0](x))
    readout = model[2]
    clean = readout(hidden).argmax(1)
    units = hidden.shape[1]
    mean = hidden.mean(0)
    gen = torch.Generator().manual_seed(10_000 + seed)
    orders = [torch.randperm(units, generator=gen) for _ in range(SAMPLINGS)]
    out = {}
    for name in ("zero", "mean"):
        unchanged = np.zeros((SAMPLINGS, len(LEVELS)))
        acc = np.zeros((SAMPLINGS, len(LEVELS)))
        for s, order in enumerate(orders):
            for i, p in enumerate(LEVELS):
                k = int(math.floor(p * units + 0.5 + 1e-9))
                h = hidden.clone()
                if k:
                    cut = order[:k]
                    h[:, cut] = 0.0 if name == "zero" else mean[cut]
                pred = readout(h).argmax(1)
                unchanged[s, i] = (pred == clean).float().mean().item()
                acc[s, i] = (pred == y).float().mean().item()
        out[name] = (unchanged, acc)
    return out


def prunability(levels: np.ndarray, curve: np.ndarray) -> float:
    below = np.flatnonzero(curve < PRUNE_THETA)
    if not len(below):
        return 1.0
    i = below[0]
    if i == 0:
        return float(levels[0])
    x0, x1, c0, c1 = levels[i - 1], levels[i], curve[i - 1], curve[i]
    return float(x0 + (c0 - PRUNE_THETA) / (c0 - c1) * (x1 - x0))


def measure(model: nn.Sequential, data, seed: int) -> tuple[dict, dict]:
    (xtr, ytr), _, (xte, yte) = data
    with torch.no_grad():
        h_test = model[1](model[0](xte)).double().numpy()
        h_train = model[1](model[0](xtr)).double().numpy()
    red = redundancy(h_test)
    shuffled = np.random.default_rng(20_000 + seed).permuted(h_test, axis=0)
    null = redundancy(shuffled)["similarity"]
    row = {k: v for k, v in red.items() if k not in ("flat", "hist")}
    row.update(similarity_null=null, similarity_excess=red["similarity"] - null,
               selectivity=selectivity(h_train, ytr.numpy(), h_test, yte.numpy(),
                                       red["flat"] | ((h_test > 0).sum(0) < SILENT_SHARE * len(h_test))))
    curves = ablation_curves(model, xte, yte, seed)
    for name, (unchanged, _) in curves.items():
        auc = np.trapezoid(unchanged, LEVELS, axis=1) if hasattr(np, "trapezoid") else np.trapz(unchanged, LEVELS, axis=1)
        row[f"robustness_{name}"] = float(auc.mean())
        row[f"robustness_{name}_std"] = float(auc.std())
    row["prunability"] = float(np.mean([prunability(LEVELS, c) for c in curves["zero"][0]]))
    return row, curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for runs.csv and curves.csv")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--widths", type=float, nargs="+", default=[0.25, 0.5, 1, 2, 4])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.001, 0.01, 0.1])
    parser.add_argument("--replicates", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="seed of the teacher and data")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)

    start = time.perf_counter()
    data = make_data(args.seed)
    rows, points = [], []
    for sigma in args.sigmas:
        for width in args.widths:
            hidden = max(1, int(math.floor(128 * width + 0.5)))
            for replicate in range(args.replicates):
                t0 = time.perf_counter()
                model, result = train(hidden, sigma, replicate, data, args.epochs)
                t1 = time.perf_counter()
                metrics, curves = measure(model, data, replicate)
                t2 = time.perf_counter()
                rows.append({"variant": f"sigma={sigma:g}", "sigma": sigma, "width": width, "hidden": hidden,
                             "replicate": replicate, **result, **metrics,
                             "train_seconds": t1 - t0, "measure_seconds": t2 - t1})
                for name, (unchanged, acc) in curves.items():
                    for s in range(SAMPLINGS):
                        for i, level in enumerate(LEVELS):
                            points.append({"variant": f"sigma={sigma:g}", "width": width, "replicate": replicate,
                                           "perturbation": name, "sampling": s, "level": float(level),
                                           "unchanged": unchanged[s, i], "accuracy": acc[s, i]})
    for name, table in (("runs", rows), ("curves", points)):
        with open(os.path.join(args.out, f"{name}.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    print(f"plain: {len(rows)} runs in {time.perf_counter() - start:.1f} s -> {args.out}/runs.csv, curves.csv")


if __name__ == "__main__":
    main()
