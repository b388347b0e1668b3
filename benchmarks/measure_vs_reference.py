"""Benchmark (not a test): widthlab's measurement engine against a replica of the reference algorithm.

The replica follows the paper's reference scripts: it extracts each unit layer's activations over the evaluation set, keeps 50,000
rows, computes ``np.cov`` + ``np.linalg.eigh`` (principal components) and ``np.corrcoef`` (similarity); then, for
each layer and for all layers at once, each level and each sampling, it runs the whole network over the
evaluation set with the layer's output multiplied by a 0/1 mask, and compares predictions with the unperturbed
ones. It uses widthlab's masks and rows, so both sides measure the same thing and their numbers should agree:
redundancy to round-off, curves up to predictions that flip on float near-ties (the engine stacks copies into
other batch shapes, and ``skip_zero_inputs`` sums in another order).

widthlab runs ``analyze`` (zero ablation, ``max_rows=50000``) twice: exact, and with ``skip_zero_inputs``.
Each run happens in its own fresh process, so its peak resident memory (ru_maxrss, minus the memory after
building the model and inputs) is its own. Printed differences: the largest |difference| of the redundancy
numbers of sampling 0's rows (pcs_needed, compressibility, similarity, similarity_live, similar_fraction and the
|r| histogram), and the predictions that differ, counted as the summed |difference| of the unchanged counts over
all curve points (both sides use the same masks, so each is a flipped prediction).

Usage:
    python benchmarks/measure_vs_reference.py                # 1,000 inputs of 3×28×28, 11 levels, 3 samplings
    python benchmarks/measure_vs_reference.py --inputs 2000
    python benchmarks/measure_vs_reference.py --quick        # 100 inputs, 3 levels, 2 samplings: a sanity run
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time

import numpy as np
import torch

ROWS = 50_000  # the reference code's cap on activation rows
ENERGY, THRESHOLD = 0.95, 0.5
COMPARED = ("pcs_needed", "compressibility", "similarity", "similarity_live", "similar_fraction")


def setup(cfg: dict):
    """The 1x CIFAR AlexNet (random weights, seeded) and random inputs, identical in every process."""
    from widthlab import create_model

    torch.set_num_threads(cfg["threads"])
    model = create_model("alexnet_cifar", cfg["width"], input_size=28, seed=cfg["seed"]).eval()
    x = torch.randn(cfg["inputs"], 3, 28, 28, generator=torch.Generator().manual_seed(cfg["seed"]))
    return model, x


def rss_mib() -> float:
    """Current resident memory of this process in MiB."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# The replica ------------------------------------------------------------------------------------------------------

def reference_redundancy(acts: np.ndarray) -> dict:
    """docs/metrics.md redundancy of a (rows, units) float32 matrix the reference way: np.cov, eigh, np.corrcoef."""
    units = acts.shape[1]
    eig = np.clip(np.linalg.eigh(np.cov(acts, rowvar=False))[0], 0, None)[::-1]
    share = np.cumsum(eig) / eig.sum()
    pcs = int(np.argmax(share >= ENERGY - 1e-12)) + 1 if eig.sum() > 0 else 0
    std = acts.std(0, dtype=np.float64)
    live = std > 1e-6 * std.max() if std.max() > 0 else np.zeros(units, bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        abs_r = np.abs(np.corrcoef(acts[:, live], rowvar=False)).reshape(live.sum(), live.sum())
    counts = (abs_r >= THRESHOLD).sum(1) - 1
    hist = np.histogram(np.clip(abs_r[np.triu_indices(live.sum(), 1)], 0, 1), bins=50, range=(0, 1))[0]
    return {"pcs_needed": pcs, "compressibility": 1 - pcs / units, "similarity": counts.sum() / units,
            "similarity_live": counts.sum() / max(live.sum(), 1),
            "similar_fraction": counts.sum() / units / (units - 1), "abs_r_count": hist}


def predict(model, x, batch_size, masks=None):
    """(N,) argmax of a whole forward pass; `masks` {module: (C,) 0/1} multiply those outputs (the fed mask)."""
    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(
        lambda module, args, out, m=mask: out * m.view(1, -1, *[1] * (out.dim() - 2)))
        for name, mask in (masks or {}).items()]
    try:
        with torch.no_grad():
            return torch.cat([model(chunk).argmax(1) for chunk in x.split(batch_size)])
    finally:
        for handle in handles:
            handle.remove()


def run_reference(cfg: dict) -> dict:
    from widthlab.measure.analyze import redundancy_rows
    from widthlab.measure.perturbations import ablation_masks

    model, x = setup(cfg)
    layers, levels, samplings, seed = model.unit_layers, cfg["levels"], cfg["samplings"], cfg["seed"]
    base_rss = rss_mib()
    start = time.perf_counter()
    acts: dict[str, list] = {name: [] for name in layers}
    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(
        lambda module, args, out, name=name: acts[name].append(out.movedim(1, -1).reshape(-1, out.shape[1])))
        for name in layers]
    with torch.no_grad():
        for chunk in x.split(cfg["batch_size"]):
            model(chunk)
    for handle in handles:
        handle.remove()
    redundancy, units = {}, {}
    for name in layers:
        rows = torch.cat(acts.pop(name)).numpy()  # (N·H·W, C) every activation, as the reference extracts them
        units[name] = rows.shape[1]
        keep = redundancy_rows(seed, name, 0, len(rows), ROWS)  # widthlab's rows of sampling 0: the same matrix
        redundancy[name] = reference_redundancy(rows[keep])
    base = predict(model, x, cfg["batch_size"])
    masks = {name: ablation_masks(name, units[name], levels, samplings, seed) for name in layers}
    agree, seconds = {}, {}
    for scope in [*layers, "all"]:
        tic = time.perf_counter()
        scope_layers = layers if scope == "all" else [scope]
        counts = np.zeros((samplings, len(levels)), dtype=np.int64)
        for s in range(samplings):
            for i in range(len(levels)):
                fed = {name: (~masks[name][s, i]).float() for name in scope_layers}
                counts[s, i] = int((predict(model, x, cfg["batch_size"], fed) == base).sum())
        agree[scope], seconds[scope] = counts, time.perf_counter() - tic
    return {"seconds": time.perf_counter() - start, "peak": peak_mib() - base_rss, "redundancy": redundancy,
            "agree": agree, "scope_seconds": seconds}


# widthlab -------------------------------------------------------------------------------------------------------------

def run_widthlab(cfg: dict) -> dict:
    from widthlab.measure import analyze

    model, x = setup(cfg)
    base_rss = rss_mib()
    start = time.perf_counter()
    frame = analyze(model, x, perturbations=("zero",), levels=cfg["levels"], samplings=cfg["samplings"],
                    seed=cfg["seed"], max_rows=ROWS, batch_size=cfg["batch_size"],
                    skip_zero_inputs=cfg["skip_zero_inputs"])
    seconds = time.perf_counter() - start
    redundancy = {}
    for name in model.unit_layers:
        rows = frame[(frame.layer == name) & (frame.perturbation == "") & (frame.sampling == 0)]
        redundancy[name] = {metric: rows[rows.metric == metric].value.to_numpy() for metric in
                            (*COMPARED, "abs_r_count")}
    agree = {}
    for scope in [*model.unit_layers, "all"]:
        rows = frame[(frame.layer == scope) & (frame.metric == "unchanged")]
        table = rows.pivot(index="sampling", columns="level", values="value").to_numpy()
        agree[scope] = np.rint(table * len(x)).astype(np.int64)
    return {"seconds": seconds, "peak": peak_mib() - base_rss, "redundancy": redundancy, "agree": agree}


def in_fresh_process(fn, cfg: dict) -> dict:
    """Run `fn(cfg)` in a new spawned process (its own memory high-water mark) and return its result."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(fn, (cfg,))


def compare(reference: dict, ours: dict) -> tuple[float, int]:
    """(largest redundancy difference, predictions that differ)."""
    worst = 0.0
    for name, numbers in reference["redundancy"].items():
        for metric in (*COMPARED, "abs_r_count"):
            diff = np.abs(np.asarray(numbers[metric], dtype=np.float64) - ours["redundancy"][name][metric])
            worst = max(worst, float(diff.max()))
    # Same masks on both sides: a differing count at a curve point is a prediction that flipped.
    differ = sum(int(np.abs(reference["agree"][scope] - ours["agree"][scope]).sum()) for scope in reference["agree"])
    return worst, differ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1000, help="evaluation inputs of 3x28x28 (default 1000)")
    parser.add_argument("--width", type=float, default=1.0, help="AlexNet width factor (default 1.0)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads per run")
    parser.add_argument("--quick", action="store_true", help="100 inputs, 3 levels, 2 samplings")
    args = parser.parse_args()
    levels = [0.0, 0.5, 1.0] if args.quick else [i / 10 for i in range(11)]
    cfg = {"inputs": 100 if args.quick else args.inputs, "width": args.width, "seed": 0, "levels": levels,
           "samplings": 2 if args.quick else 3, "batch_size": 256, "threads": args.threads}
    print(f"alexnet_cifar {cfg['width']}x, {cfg['inputs']} inputs of 3x28x28, {len(levels)} levels, "
          f"{cfg['samplings']} samplings, 4 unit layers + 'all', zero ablation, {ROWS} rows, "
          f"{cfg['threads']} threads", flush=True)
    reference = in_fresh_process(run_reference, cfg)
    scopes = ", ".join(f"{scope} {sec:.1f}s" for scope, sec in reference["scope_seconds"].items())
    print(f"reference replica : {reference['seconds']:8.1f} s   peak +{reference['peak']:7.0f} MiB   ({scopes})",
          flush=True)
    passes = cfg["samplings"] * len(levels) * (len(reference["agree"]))
    for skip in (False, True):
        ours = in_fresh_process(run_widthlab, {**cfg, "skip_zero_inputs": skip})
        worst, differ = compare(reference, ours)
        label = "widthlab skip_zero" if skip else "widthlab exact"
        print(f"{label:18s}: {ours['seconds']:8.1f} s   peak +{ours['peak']:7.0f} MiB   "
              f"speed-up {reference['seconds'] / ours['seconds']:5.2f}x   max |redundancy diff| {worst:.2e}   "
              f"predictions differing {differ} of {passes * cfg['inputs']}", flush=True)


if __name__ == "__main__":
    main()
