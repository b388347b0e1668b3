"""Benchmark (not a test): `widthlab.cka` between two ResNet18s against a straightforward CKA that keeps every
activation, side by side: wall time and extra peak memory.

Two `resnet18_imagenet` networks (width 1, 10 classes, random weights from seeds 0 and 1) on the first 1,000
training images of scikit-learn's digits resized to 64×64 (`load_data("digits", image_size=64)`, evaluation form),
all default layers (``stem, stage1..stage4``: conv maps flattened whole per example), the debiased estimator.

- **streaming**: ``cka(a, b, x, batch_size=250)``: per batch one forward pass per model, each layer reduced in its
  hook to a 250 × 250 float64 Gram matrix, the HSIC terms accumulated (memory O(layers × batch²));
- **naive**: `capture` every layer of both models on all inputs (the activations materialised), then Kornblith et
  al.'s full-sample debiased CKA from 1,000 × 1,000 Gram matrices (memory O(examples × activations)).

The two are different estimators of the same quantity (four minibatches against one full sample), so their values
agree to within the minibatch estimator's spread, not exactly; the largest difference is printed.

Extra memory is the peak resident set (VmHWM) during the call minus the resident set just before it, with the
models and inputs built and one small forward pass run (so neither the inputs nor library start-up count); each
method runs in a fresh process. Linux only.

Usage:
    python benchmarks/cka_vs_naive.py                  # 1,000 inputs, batch 250, torch's thread count
    python benchmarks/cka_vs_naive.py --inputs 500 --threads 1
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

import numpy as np
import torch


def status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def setup(inputs: int):
    from widthlab import create_model, load_data

    x = load_data("digits", image_size=64, augment=False, seed=0).split("train").x[:inputs]
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(create_model("resnet18_imagenet", 1.0, num_classes=10).eval())
    return models, x


def naive_cka(model_a, model_b, x) -> np.ndarray:
    """Every activation of both models materialised, then Kornblith's full-sample debiased linear CKA."""
    from widthlab.measure import capture

    def per_example(acts: dict[str, torch.Tensor]) -> list[np.ndarray]:
        return [rows.reshape(len(x), -1).double().numpy() for rows in acts.values()]  # (rows, C) -> (N, H·W·C)

    def centred(features: np.ndarray) -> np.ndarray:
        gram = features @ features.T
        n = len(gram)
        np.fill_diagonal(gram, 0)
        means = gram.sum(0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
        gram -= means[:, None]
        gram -= means[None, :]
        np.fill_diagonal(gram, 0)
        return gram

    layers_a, layers_b = model_a.unit_layers, model_b.unit_layers
    grams_a = [centred(f) for f in per_example(capture(model_a, x, layers_a, batch_size=250))]
    grams_b = [centred(f) for f in per_example(capture(model_b, x, layers_b, batch_size=250))]
    return np.array([[(ka * kb).sum() / (np.linalg.norm(ka) * np.linalg.norm(kb)) for kb in grams_b]
                     for ka in grams_a])


def measure(method: str, inputs: int, batch: int, threads: int) -> dict:
    from widthlab import cka

    torch.set_num_threads(threads)
    (model_a, model_b), x = setup(inputs)
    with torch.no_grad():
        model_a(x[:2]), model_b(x[:2])
    before = status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current resident set
    start = time.perf_counter()
    if method == "streaming":
        frame = cka(model_a, model_b, x, batch_size=batch)
        values = frame["cka"].to_numpy().reshape(len(model_a.unit_layers), len(model_b.unit_layers))
    else:
        values = naive_cka(model_a, model_b, x)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "extra": status_mib("VmHWM") - before, "values": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1000, help="digits training images (default 1000)")
    parser.add_argument("--batch", type=int, default=250, help="examples per batch of the streaming CKA (default 250)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    results = {}
    for method in ("streaming", "naive"):
        with context.Pool(1) as pool:
            results[method] = pool.apply(measure, (method, args.inputs, args.batch, args.threads))
    print(f"CKA of two resnet18_imagenet (64x64 digits, {args.inputs:,} inputs, 5 x 5 default layers, debiased), "
          f"{args.threads} threads")
    print(f"{'method':>10s}{'seconds':>10s}{'extra MiB':>12s}")
    for method, r in results.items():
        print(f"{method:>10s}{r['seconds']:>10.1f}{r['extra']:>12.0f}")
    gap = np.abs(results["streaming"]["values"] - results["naive"]["values"]).max()
    print(f"largest |streaming (batch {args.batch}) - naive (full sample)| over the 25 pairs: {gap:.4f}")
    print("streaming CKA (rows: model A's stem, stage1..4; columns: model B's):")
    print(np.array2string(results["streaming"]["values"], precision=3, suppress_small=True))


if __name__ == "__main__":
    main()
