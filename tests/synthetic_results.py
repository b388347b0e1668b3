"""Synthetic runs/metrics tables with known trends, and a study store filled with them, for the report tests.

Plain builders, not fixtures: the tests call them with the trends and sizes they need, and fixtures and helpers of
those modules build on them. (A helper module, not a test module: test modules import this, not one another.)"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import yaml

from widthlab.study.store import Store

WIDTHS = (0.25, 0.5, 1.0, 2.0, 4.0)
LEVELS = np.round(np.linspace(0, 1, 11), 10)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def flat_value(width, layer_index):
    return 0.5


def rising(width, layer_index):
    return 0.5 + 0.1 * math.log2(width)


def falling(width, layer_index):
    return 0.5 - 0.1 * math.log2(width)


def make_tables(
    trends,
    *,
    widths=WIDTHS,
    replicates=3,
    layers=("h1", "h2"),
    samplings=2,
    noise=0.005,
    seed=0,
):
    """Synthetic runs/metrics where every metric of variant v is trends[v](width, layer_index) + noise.

    The joint scope "all" gets absurd values (100) so a test sees at once whether it leaks into averages.
    """
    rng = np.random.default_rng(seed)
    runs, rows = [], []
    for variant, trend in trends.items():
        for width in widths:
            for replicate in range(replicates):
                run_id = f"{variant}-w{width}-r{replicate}"
                runs.append(dict(run_id=run_id, variant=variant, width=width, replicate=replicate, status="done",
                                 seconds=1.0, train_acc=1.0,
                                 val_acc=trend(width, 0) + rng.normal(0, noise),
                                 test_acc=trend(width, 0) + rng.normal(0, noise), epochs=5))
                key = dict(run_id=run_id, variant=variant, width=width, replicate=replicate)
                for index, layer in enumerate([*layers, "all"]):
                    for sampling in range(samplings):
                        def value():
                            if layer == "all":
                                return 100.0
                            return trend(width, index) + rng.normal(0, noise)

                        for metric in ("compressibility", "similarity", "similar_fraction", "pcs_needed"):
                            rows.append(dict(key, layer=layer, metric=metric, perturbation="", level=np.nan,
                                             sampling=sampling, value=value()))
                        for perturbation in ("zero", "mean"):
                            rows.append(dict(key, layer=layer, metric="auc", perturbation=perturbation,
                                             level=np.nan, sampling=sampling, value=value()))
                        auc = value()
                        for level in LEVELS:
                            # A straight curve from 1 down to 2·auc − 1 has area auc.
                            rows.append(dict(key, layer=layer, metric="unchanged", perturbation="zero",
                                             level=level, sampling=sampling,
                                             value=1 - level * (2 - 2 * auc)))
    return pd.DataFrame(runs), pd.DataFrame(rows)


BIN_CENTRES = (np.arange(50) + 0.5) / 50


def with_calibration(metrics, runs, *, null, excess, fraction):
    """Add the permutation-null metrics and set similar_fraction: each a function of (variant, width)."""
    width = metrics["run_id"].map(runs.set_index("run_id")["width"])
    variant = metrics["run_id"].map(runs.set_index("run_id")["variant"])
    sims = metrics[metrics["metric"] == "similarity"]
    extra = []
    for name, fn in (("similarity_null", null), ("similar_fraction_null", lambda v, w: null(v, w) / 50),
                     ("similarity_excess", excess)):
        values = [fn(v, w) if layer != "all" else 100.0
                  for v, w, layer in zip(variant[sims.index], width[sims.index], sims["layer"])]
        extra.append(sims.assign(metric=name, value=values))
    is_fraction = metrics["metric"] == "similar_fraction"
    metrics = metrics.copy()
    metrics.loc[is_fraction, "value"] = [fraction(v, w) for v, w in zip(variant[is_fraction], width[is_fraction])]
    return pd.concat([metrics, *extra], ignore_index=True)


def with_histograms(metrics, runs):
    """abs_r_count rows whose tail grows with width: counts ∝ exp(−|r| / scale), scale rising with log2(width)."""
    rows = []
    for run in runs.itertuples(index=False):
        scale = 0.08 * (1 + 0.4 * (math.log2(run.width) + 2))
        counts = np.round(5000 * np.exp(-BIN_CENTRES / scale))
        for layer in ("h1", "h2"):
            for sampling in range(2):
                rows += [dict(run_id=run.run_id, variant=run.variant, width=run.width, replicate=run.replicate,
                              layer=layer, metric="abs_r_count", perturbation="", level=c, sampling=sampling,
                              value=float(n)) for c, n in zip(BIN_CENTRES, counts)]
    return pd.concat([metrics, pd.DataFrame(rows)], ignore_index=True)


def with_snapshots(metrics, epochs=(1, 2, 3)):
    """Snapshot copies of the final rows at each epoch, the value offset by −0.01 per epoch before the last."""
    final = metrics.assign(epoch=np.nan)
    core = final[final["metric"].isin(["auc", "compressibility", "similarity"])]
    snaps = [core.assign(epoch=float(e), value=core["value"] - 0.01 * (epochs[-1] - e)) for e in epochs]
    return pd.concat([final, *snaps], ignore_index=True)


def history_of(runs, epochs=(1, 2, 3)):
    return pd.DataFrame([dict(run_id=r, epoch=e, loss=1.0 / e, train_acc=0.9, val_acc=0.5 + 0.1 * e)
                         for r in runs["run_id"] for e in epochs])


MODEL = {"name": "mlp", "init": "normal", "sigma": 0.01, "input_dim": 10}


def fake_study(directory, name, trend):
    """A study directory whose store holds make_tables' runs and metrics, as `widthlab run` would leave it."""
    runs, metrics = make_tables({"v": trend}, widths=(0.5, 2), replicates=2, layers=("relu1",))
    directory.mkdir()
    (directory / "config.yaml").write_text(yaml.safe_dump({"name": name, "model": MODEL}))
    with Store(directory) as store:
        store.add_runs([dict(run_id=r.run_id, variant=r.variant, width=r.width, replicate=r.replicate,
                             config={"model": MODEL, "width": r.width}) for r in runs.itertuples(index=False)])
        for r in runs.itertuples(index=False):
            outcome = dict(status="done", seconds=r.seconds, train_acc=r.train_acc, val_acc=r.val_acc,
                           test_acc=r.test_acc, epochs=r.epochs, history=[])
            store.finish(r.run_id, outcome, metrics[metrics["run_id"] == r.run_id])
    return directory
