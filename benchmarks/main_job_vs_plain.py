"""Benchmark (not a test): widthlab's main job against a plain PyTorch script doing the same study.

In one invocation it runs, each in its own subprocess and with the same torch thread count (and the same
OMP/MKL/OpenBLAS thread count, so NumPy's eigensolvers are pinned too):

- main:  ``widthlab run mlp-10d --set grid.select=null --set threads=N --out TMP --quiet`` — 45 trainings
         (5 widths × 3 σ × 3 replicates, 50 epochs of momentum SGD), every measurement of the preset (zero and
         mean ablation, 11 levels × 3 samplings, redundancy, similarity null, selectivity), the SQLite store,
         figures, HTML report and verdict, with the job's default settings (local executor);
- main (processes, 2 workers): the same with ``--executor processes --workers 2`` (with ``--processes``);
- plain: ``benchmarks/plain_mlp10d.py``, a single-file PyTorch script that trains the same grid and computes the
         same metrics on the test split, writing CSVs (see its header for what it does and does not do).

It prints each command's wall seconds and CPU seconds (user + system of the process and its children) side by
side, the ratio main / plain (widthlab aims at ≤ 0.5: half the time of a careful script), the machine's load average around each command (on a shared
machine other work inflates wall time; CPU time is less affected), and a sanity table of the headline numbers
per width from both: mean test accuracy, zero-ablation robustness (area under the curve, mean over runs and
samplings), compressibility and similarity. The two use different random streams (teacher, data, initial
weights, batch orders), so their numbers agree in kind and trend, not digit for digit.

Usage:
    python benchmarks/main_job_vs_plain.py                  # the full 45-run study, 1 thread each
    python benchmarks/main_job_vs_plain.py --processes      # adds a row for --executor processes --workers 2
    python benchmarks/main_job_vs_plain.py --quick          # 5 epochs, widths 1/4 and 1, 1 replicate: a sanity run
    python benchmarks/main_job_vs_plain.py --threads 2 --epochs 10 --widths 0.25 0.5 --replicates 2 --keep
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
PLAIN = HERE / "plain_mlp10d.py"
WIDTHS = [0.25, 0.5, 1, 2, 4]
# The main job and the harness's reading of its store run this checkout's code, not whichever widthlab the
# interpreter has installed (an editable install of another worktree would otherwise be measured).
SRC = HERE.parent / "src"
sys.path.insert(0, str(SRC))


def widthlab_cli() -> list[str]:
    """The `widthlab` command of this checkout: this interpreter running ``widthlab.cli`` from its src/ (see
    `checkout_env`)."""
    return [sys.executable, "-m", "widthlab.cli"]


def checkout_env(env: dict) -> dict:
    """`env` with this checkout's src/ first on PYTHONPATH, so ``-m widthlab.cli`` imports its code."""
    rest = env.get("PYTHONPATH")
    return dict(env, PYTHONPATH=str(SRC) + (os.pathsep + rest if rest else ""))


def revision() -> str:
    """The checkout's git revision, with "+dirty" when src/ has uncommitted edits (the main job runs that code)."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=HERE.parent, capture_output=True, text=True).stdout.strip()
    rev = git("rev-parse", "--short", "HEAD") or "unknown"
    return rev + ("+dirty" if git("status", "--porcelain", "--", "src") else "")


def timed(label: str, cmd: list[str], threads: int) -> dict:
    """Run `cmd`; its wall and CPU seconds and the 1-minute load average before and after."""
    env = checkout_env(dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                            OPENBLAS_NUM_THREADS=str(threads)))
    print(f"[{label}] {' '.join(cmd)}", flush=True)
    load_before = os.getloadavg()[0]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"[{label}] failed with exit status {proc.returncode}")
    return {"label": label, "wall": wall, "cpu": cpu, "load_before": load_before, "load_after": os.getloadavg()[0]}


def main_headline(directory: Path) -> pd.DataFrame:
    """Per width: test accuracy, zero-ablation AUC, compressibility and similarity of the main job's runs."""
    from widthlab import load_results  # the harness may read widthlab's store; the plain script never imports it

    results = load_results(directory)
    runs = results.runs.query("status == 'done'")
    m = results.metrics[results.metrics["layer"] == "relu1"]
    if "epoch" in m:
        m = m[m["epoch"].isna()]
    auc = m.query("metric == 'auc' and perturbation == 'zero'").groupby("width")["value"].mean()
    comp = m.query("metric == 'compressibility'").groupby("width")["value"].mean()
    sim = m.query("metric == 'similarity'").groupby("width")["value"].mean()
    return pd.DataFrame({"runs": runs.groupby("width").size(), "test_acc": runs.groupby("width")["test_acc"].mean(),
                         "robustness": auc, "compressibility": comp, "similarity": sim})


def plain_headline(directory: Path) -> pd.DataFrame:
    runs = pd.read_csv(directory / "runs.csv")
    g = runs.groupby("width")
    return pd.DataFrame({"runs": g.size(), "test_acc": g["test_acc"].mean(), "robustness": g["robustness_zero"].mean(),
                         "compressibility": g["compressibility"].mean(), "similarity": g["similarity"].mean()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 epochs, widths 1/4 and 1, 1 replicate")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default 50; --quick 5)")
    parser.add_argument("--widths", type=float, nargs="+", default=None, help="width factors (default 1/4 … 4)")
    parser.add_argument("--replicates", type=int, default=None, help="replicates (default 3; --quick 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every run (default 1)")
    parser.add_argument("--processes", action="store_true", help="also time --executor processes --workers 2")
    parser.add_argument("--keep", action="store_true", help="keep the output folders (printed)")
    args = parser.parse_args()
    epochs = args.epochs or (5 if args.quick else 50)
    widths = args.widths or ([0.25, 1.0] if args.quick else WIDTHS)
    replicates = args.replicates or (1 if args.quick else 3)

    work = Path(tempfile.mkdtemp(prefix="widthlab-vs-plain-"))
    overrides = ["--set", "grid.select=null", "--set", f"threads={args.threads}"]
    if epochs != 50:
        overrides += ["--set", f"train.epochs={epochs}"]
    if widths != WIDTHS:
        overrides += ["--set", f"grid.widths=[{','.join(f'{w:g}' for w in widths)}]"]
    if replicates != 3:
        overrides += ["--set", f"grid.replicates={replicates}"]
    cli = widthlab_cli()
    print(f"grid: widths {widths} × 3 sigma × {replicates} replicates = {len(widths) * 3 * replicates} runs, "
          f"{epochs} epochs; torch threads {args.threads}; {os.cpu_count()} CPUs; code {SRC} at revision "
          f"{revision()}; work folder {work}")
    timings = [timed("main", [*cli, "run", "mlp-10d", *overrides, "--out", str(work / "main"), "--quiet"],
                     args.threads)]
    timings.append(timed("plain", [sys.executable, str(PLAIN), "--out", str(work / "plain"), "--epochs", str(epochs),
                                   "--widths", *map(str, widths), "--replicates", str(replicates),
                                   "--threads", str(args.threads)], args.threads))
    if args.processes:
        timings.append(timed("main --executor processes --workers 2",
                             [*cli, "run", "mlp-10d", *overrides, "--out", str(work / "main-processes"), "--quiet",
                              "--executor", "processes", "--workers", "2"], args.threads))

    plain = next(t for t in timings if t["label"] == "plain")
    print()
    print(f"{'':40s} {'wall s':>8s} {'cpu s':>8s} {'wall/plain':>10s} {'cpu/plain':>9s} {'load before→after':>18s}")
    for t in timings:
        print(f"{t['label']:40s} {t['wall']:8.1f} {t['cpu']:8.1f} {t['wall'] / plain['wall']:10.2f} "
              f"{t['cpu'] / plain['cpu']:9.2f} {t['load_before']:8.2f} → {t['load_after']:.2f}")
    ratio = timings[0]["wall"] / plain["wall"]
    print(f"ratio main / plain (wall) = {ratio:.2f} (aim ≤ 0.5): "
          f"{'met' if ratio <= 0.5 else 'not met'}")

    from widthlab import load_results

    main_runs = load_results(work / "main").runs["seconds"].sum()
    plain_runs = pd.read_csv(work / "plain" / "runs.csv")[["train_seconds", "measure_seconds"]].sum().sum()
    print(f"inside the runs (training + measuring, as each records it): main {main_runs:.1f} s, plain "
          f"{plain_runs:.1f} s; the rest of main's wall time ({timings[0]['wall'] - main_runs:.1f} s) is start-up, "
          f"the store, figures and the report (plain: {plain['wall'] - plain_runs:.1f} s of start-up and CSVs)")

    both = pd.concat({"main": main_headline(work / "main"), "plain": plain_headline(work / "plain")}, axis=1)
    both = both.swaplevel(axis=1)[[(m, who) for m in ("runs", "test_acc", "robustness", "compressibility",
                                                     "similarity") for who in ("main", "plain")]]
    print("\nheadline numbers per width (means over variants, replicates and samplings; robustness = zero-ablation "
          "AUC of the hidden layer)")
    with pd.option_context("display.width", 160, "display.precision", 3):
        print(both.to_string())
    if revision().endswith("+dirty"):
        print("\nnote: src/ has uncommitted edits; the main job ran the working tree as it was at each start")
    if args.keep:
        print(f"\noutputs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
