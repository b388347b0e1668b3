"""Merge vs pruning baselines across widths, on trained mlp-10d networks 1/4x ... 4x (synthetic teacher data).

    python benchmarks/compress_vs_baselines.py [STUDY_DIR] [--keep 8,16,32]

STUDY_DIR (default /tmp/widthlab-bench-small) is a study; when it has no store, a small mlp-10d study is run there
first (one variant sigma=0.01, widths 1/4x-4x, 3 replicates, lr 0.1, 30 epochs; about 40 s on two CPU cores).

Prints two tables, mean ± std over replicates:
1. test accuracy at equal kept units k (the same k at every width) for prune/random, prune/magnitude,
   prune/ablation and merge/ablation, beside the trained network's accuracy;
2. the compressed width (units kept at max_drop 0.01) vs width for the same four, and its growth per doubling g
   with the report's bootstrap interval. These rows are stored in the study (`compress_study`), so a second run
   of this script reads them back instead of computing them again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from widthlab import compress, compress_study, load_results
from widthlab.report.compression import compression_counts, compression_growth

LINES = (("prune", "random"), ("prune", "magnitude"), ("prune", "ablation"), ("merge", "ablation"))
SMALL = ["grid.select=null", "grid.variants={'sigma=0.01': {}}", "grid.replicates=3", "train.lr=0.1",
         "train.epochs=30", "measure.samplings=1", "measure.levels=6"]


def ensure_study(directory: Path) -> None:
    if (directory / "widthlab.sqlite").is_file():
        return
    from widthlab.study import load_config, run_study

    start = time.time()
    run_study(load_config("mlp-10d", SMALL), directory, progress=False, report=False)
    print(f"trained the small mlp-10d study in {time.time() - start:.0f} s: {directory}")


def mean_std(values) -> str:
    values = np.asarray(values, dtype=float)
    return f"{values.mean():.3f} ± {values.std():.3f}"


def equal_units(directory: Path, keeps: list[int]) -> pd.DataFrame:
    """Test accuracy of every done run compressed to k units by each line (no fine-tuning)."""
    from widthlab.data import load_data
    from widthlab.study.build import checkpoint_model
    from widthlab.train.checkpoint import load_checkpoint

    runs = load_results(directory).runs
    rows = []
    splits = None
    for run in runs[runs["status"] == "done"].itertuples(index=False):
        config = json.loads(run.config)
        if splits is None:
            data = dict(config["data"])
            splits = load_data(data.pop("name"), root=data.pop("root", None), seed=config["study_seed"], **data)
        model = checkpoint_model(load_checkpoint(directory / run.checkpoint), run.checkpoint, import_code=False)
        for k in keeps:
            for method, importance in LINES:
                table = compress(model.eval(), splits.train, keep=k, method=method, importance=importance,
                                 eval_inputs=splits.test, seed=int(run.replicate)).table.iloc[0]
                rows.append(dict(width=run.width, replicate=run.replicate, k=k, line=f"{method}/{importance}",
                                 units=int(table.units_before), accuracy=table.accuracy_after,
                                 trained=table.accuracy_before))
    return pd.DataFrame(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", nargs="?", default="/tmp/widthlab-bench-small")
    parser.add_argument("--keep", default="8,16,32", help="kept units per layer, comma-separated")
    args = parser.parse_args()
    directory = Path(args.study)
    ensure_study(directory)
    keeps = [int(k) for k in args.keep.split(",")]

    start = time.time()
    table = equal_units(directory, keeps)
    print(f"\n1. test accuracy at equal kept units (mean ± std over replicates; {time.time() - start:.0f} s)\n")
    for k, part in table.groupby("k"):
        print(f"k = {k}")
        print(f"{'width':>6} {'units':>6} {'trained':>14}" + "".join(f" {name:>16}" for name in
                                                                     (f"{m}/{i}" for m, i in LINES)))
        for width, group in part.groupby("width"):
            cells = [mean_std(group.loc[group["line"] == f"{m}/{i}", "accuracy"]) for m, i in LINES]
            trained = group.drop_duplicates("replicate")["trained"]
            print(f"{width:>6g} {int(group['units'].iloc[0]):>6} {mean_std(trained):>14}"
                  + "".join(f" {c:>16}" for c in cells))
        print()

    start = time.time()
    frames = []
    for method, importance in LINES:
        frames.append(compress_study(directory, max_drop=0.01, methods=(method,), importance=importance).rows)
    rows = pd.concat(frames, ignore_index=True)
    print(f"2. compressed width at max_drop 0.01 (units kept, mean ± std over replicates; {time.time() - start:.0f} s, "
          "stored in the study)\n")
    rows["line"] = rows["method"] + "/" + rows["importance"]
    print(f"{'width':>6} {'units':>6}" + "".join(f" {m + '/' + i:>18}" for m, i in LINES))
    for width, group in rows.groupby("width"):
        kept = [group.loc[group["line"] == f"{m}/{i}", "units_kept"].to_numpy(float) for m, i in LINES]
        cells = [f"{v.mean():.1f} ± {v.std():.1f}" for v in kept]
        print(f"{width:>6g} {int(group['units_before'].iloc[0]):>6}" + "".join(f" {c:>18}" for c in cells))
    runs = load_results(directory).runs
    print("\ngrowth per doubling g [95% bootstrap interval] (2 = in proportion to width):")
    for method, importance in LINES:
        mine = rows[(rows["method"] == method) & (rows["importance"] == importance)]
        growth = compression_growth(compression_counts(runs, mine), seed=0)
        for r in growth.itertuples(index=False):
            print(f"  {method}/{importance}: g = {r.g:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}] ({r.pace})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
