"""The `widthlab` command: run studies, redraw reports, list presets and models.

Errors a user can cause print one line and exit with status 2 (argparse's own usage errors do the same).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from widthlab.errors import WidthlabError

DEFAULT_ROOT = Path("widthlab-runs")


def _cmd_run(args: argparse.Namespace) -> int:
    from widthlab.study.config import load_config
    from widthlab.study.runner import plan_runs, run_study
    from widthlab.study.store import load_results
    from widthlab.train.distributed import distributed_shard

    overrides = list(args.set or [])
    if args.device:
        overrides.append(f"train.device={args.device}")
    cfg = load_config(args.config, overrides)
    if args.smoke:
        from widthlab.study.smoke import smoke_config

        cfg = smoke_config(cfg)
    out = Path(args.out) if args.out else DEFAULT_ROOT / cfg.name
    specs = plan_runs(cfg)
    if args.dry_run:
        print(f"study {cfg.name}: {len(specs)} runs "
              f"({len(cfg.grid.variants)} variants × {len(cfg.grid.widths)} widths × {cfg.grid.replicates} replicates)"
              f" → {out}")
        for spec in specs:
            print(f"  {spec.run_id:<28} variant={spec.variant:<16} width={spec.width:g} replicate={spec.replicate}")
        return 0
    run_study(cfg, out, executor=args.executor, workers=args.workers, address=args.address,
              gpus_per_run=args.gpus_per_run, progress=None if not args.quiet else False,
              checkpoint_every=args.checkpoint_every)
    if distributed_shard()[0] != 0:  # under torchrun, rank 0 alone reports
        return 0
    _print_report(out)
    failed = (load_results(out).runs["status"] == "failed").sum()
    if failed:
        print(f"widthlab: {failed} run(s) failed; see `widthlab status {out}` and {out / 'widthlab.log'}",
              file=sys.stderr)
        return 1
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from widthlab.study.store import load_results

    runs = load_results(args.dir).runs
    counts = runs["status"].value_counts().to_dict()
    print(f"{len(runs)} runs: {', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}")
    columns = ["run_id", "status", "epochs", "test_acc", "seconds", "error"]
    table = runs[columns].copy()
    table["error"] = table["error"].fillna("")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-"))
    return 0


def _parse_options(items: list[str] | None, flag: str) -> dict:
    import yaml

    options = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise WidthlabError(f"{flag} expects key=value, got {item!r}")
        options[key] = yaml.safe_load(text)
    return options


def _cmd_analyze(args: argparse.Namespace) -> int:
    from widthlab.measure import analyze
    from widthlab.measure.perturbations import evenly_spaced_levels
    from widthlab.report.analysis import layer_table, write_layer_figures
    from widthlab.study.external import load_inputs, load_model

    model = load_model(args.model)
    inputs = load_inputs(args.data, split=args.split, seed=args.seed, root=args.root,
                         options=_parse_options(args.data_opt, "--data-opt"))
    layers = [name.strip() for name in args.layers.split(",")] if args.layers else None
    perturbations = tuple(p.strip() for p in args.perturbations.split(","))
    if args.levels < 2:
        raise WidthlabError(f"--levels must be at least 2, got {args.levels}")
    levels = {name: evenly_spaced_levels(args.levels, name) for name in perturbations}
    frame = analyze(model, inputs, layers, perturbations=perturbations, levels=levels, samplings=args.samplings,
                    seed=args.seed, max_rows=args.max_rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.format == "parquet":
        try:
            frame.to_parquet(out / "analysis.parquet", index=False)
        except ImportError:
            raise WidthlabError("--format parquet needs pyarrow (pip install pyarrow); use --format csv") from None
        written = out / "analysis.parquet"
    else:
        written = out / "analysis.csv"
        frame.to_csv(written, index=False)
    write_layer_figures(frame, out / "figures")
    print(layer_table(frame).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"measurements: {written}\nfigures:      {out / 'figures'}")
    return 0


def _print_report(out: Path, runs=None, report: dict | None = None) -> None:
    """Print the run census, the verdict table, the hypothesis and the calibration line of each variant.

    Without `report` (the dict `write_report` returns) they come from the study directory `out`: its store and
    the verdict.csv its report wrote (computed with the study's seed).
    """
    import pandas as pd

    from widthlab.report import calibration, format_verdict_table, hypothesis
    from widthlab.study.store import STORE_NAME, load_results

    if report is None:
        runs, table = load_results(out).runs, pd.read_csv(out / "verdict.csv")
    else:
        table = report["verdict"]
    counts = runs["status"].value_counts().to_dict()
    print(f"runs: {', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}")
    print(format_verdict_table(table))
    for row in hypothesis(table).itertuples(index=False):
        print(f"hypothesis {'holds' if row.holds else 'does not hold'} for {row.variant}: {row.reason}")
    for row in calibration(table).itertuples(index=False):
        print(f"similarity trend survives calibration for {row.variant}: {row.survives} ({row.reason})")
    print(f"summary: {out / 'summary.md'}\nfigures: {out / 'figures'}")
    if report is not None and report["html"] is not None:
        print(f"html:    {report['html']}")
    if (out / STORE_NAME).is_file():
        print(f"store:   {out / STORE_NAME}")


def _cmd_report(args: argparse.Namespace) -> int:
    import yaml

    from widthlab.report import combine_frames, write_report
    from widthlab.study.runner import parameter_counts
    from widthlab.study.store import load_results

    dirs = [Path(d) for d in args.dirs]
    if len(dirs) > 1 and not args.out:
        raise WidthlabError(f"{len(dirs)} study directories make one combined report: name its folder with --out")
    studies = []
    for directory in dirs:
        results = load_results(directory)
        config_path = directory / "config.yaml"
        config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else None
        studies.append((directory, results, config))
    names = ("runs", "metrics", "snapshots", "history")
    if len(studies) == 1:
        directory, results, config = studies[0]
        title = (config or {}).get("name", directory.name)
        tables = {name: getattr(results, name, None) for name in names}
    else:
        labels = [(config or {}).get("name", directory.name) for directory, _, config in studies]
        if len(set(labels)) < len(labels):
            labels = [str(directory) for directory in dirs]  # two studies of one preset: tell them apart by path
        tables = {}
        for name in names:
            frames = [getattr(results, name, None) for _, results, _ in studies]
            tables[name] = None if any(f is None for f in frames) else combine_frames(frames, labels)
        config = {label: config for label, (_, _, config) in zip(labels, studies)}
        title = "Combined: " + ", ".join(labels)
    out = Path(args.out) if args.out else dirs[0]
    report = write_report(tables["runs"], tables["metrics"], out, title=title, config=config,
                          snapshots=tables["snapshots"], history=tables["history"],
                          params=parameter_counts(tables["runs"], import_code=args.allow_code), html=args.html)
    _print_report(out, tables["runs"], report)
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from widthlab.presets import describe_presets

    for row in describe_presets():
        print(f"{row['name']:<22} Figure {row['figure']:<5} {row['data']:<22} {row['description']}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    import torch

    from widthlab.models import create_model, list_models

    widths = (0.25, 0.5, 1.0, 2.0, 4.0)  # the paper's Figure A1
    print(f"{'model':<22}" + "".join(f"{'params @ ' + format(w, 'g') + 'x':>16}" for w in widths))
    for name in list_models():
        counts = []
        for w in widths:
            # On the meta device parameters have shapes but no storage: a 4x Inception-v3 costs no memory.
            with torch.device("meta"):
                model = create_model(name, w)
            counts.append(sum(p.numel() for p in model.parameters()))
        print(f"{name:<22}" + "".join(f"{c:>16,}" for c in counts))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="widthlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a study (a preset name or a YAML file), then write its report")
    run.add_argument("config", help="preset name (see `widthlab presets`) or path to a study YAML")
    run.add_argument("--out", help=f"study directory (default: {DEFAULT_ROOT}/NAME); rerunning resumes it")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a config value, e.g. --set grid.replicates=1 --set train.epochs=10")
    run.add_argument("--device", choices=("cpu", "cuda", "auto"), help="training device (default: the config's)")
    run.add_argument("--dry-run", action="store_true", help="print the grid of runs and stop")
    run.add_argument("--smoke", action="store_true",
                     help="a seconds-long version: widths 1/4 and 1/2, one replicate, 64 examples, 3 steps, "
                          "digits when the study's image data is absent")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--executor", choices=("local", "processes", "ray"), default="local",
                     help="where runs execute (default: local, one after another)")
    run.add_argument("--workers", type=int, default=2, help="worker processes for --executor processes (default 2)")
    run.add_argument("--address", help="Ray cluster address for --executor ray (default: start a local cluster)")
    run.add_argument("--gpus-per-run", type=float, help="GPUs each Ray task declares (default: 1 on CUDA, else 0)")
    run.add_argument("--checkpoint-every", type=float, default=60.0, metavar="SECONDS",
                     help="seconds between a run's checkpoints (default 60; 0: after every epoch)")
    run.set_defaults(func=_cmd_run)

    status = sub.add_parser("status", help="print the state of every run of a study directory")
    status.add_argument("dir", help="a study directory written by `widthlab run`")
    status.set_defaults(func=_cmd_status)

    analyze = sub.add_parser("analyze", help="measure robustness and redundancy of a model you already have")
    analyze.add_argument("model", help="a widthlab checkpoint (.pt), module:function returning an nn.Module, "
                                       "or torchvision:NAME / timm:NAME when that package is installed")
    analyze.add_argument("--data", required=True, help="a registered data set (e.g. digits, cifar10) or a .pt file "
                                                       "with a tensor, an (x, y) pair or {'x': ..., 'y': ...}")
    analyze.add_argument("--data-opt", action="append", metavar="KEY=VALUE", help="data set option, repeatable")
    analyze.add_argument("--root", help="data folder (default: $WIDTHLAB_DATA)")
    analyze.add_argument("--split", choices=("train", "val", "test"), default="test", help="split to measure on")
    analyze.add_argument("--layers", help="comma-separated module names (default: the model's unit_layers, "
                                          "else every ReLU-like module)")
    analyze.add_argument("--perturbations", default="zero", help="comma-separated (default: zero)")
    analyze.add_argument("--levels", type=int, default=11,
                         help="evenly spaced levels over each perturbation's range: shares 0-1, noise 0-2σ "
                              "(default 11)")
    analyze.add_argument("--samplings", type=int, default=3, help="random unit orders per curve (default 3)")
    analyze.add_argument("--max-rows", type=int, help="rows sampled per layer for redundancy (default: all)")
    analyze.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    analyze.add_argument("--out", default="widthlab-analysis", help="output folder (default: widthlab-analysis)")
    analyze.add_argument("--format", choices=("csv", "parquet"), default="csv", help="table format (default csv)")
    analyze.set_defaults(func=_cmd_analyze)

    report = sub.add_parser("report", help="redraw the figures, verdict and summary of one study, or combine "
                                           "several studies into one report")
    report.add_argument("dirs", nargs="+", metavar="DIR", help="study directories written by `widthlab run`; "
                        "with several, their variants are drawn together, prefixed by each study's name")
    report.add_argument("--out", help="report folder (default: the study directory; required with several DIRs)")
    report.add_argument("--html", action="store_true",
                        help="also write report.html: one self-contained file with figures, verdict, "
                             "configuration, package versions and run times")
    report.add_argument("--allow-code", action="store_true",
                        help="import the module:function models the store names (to count their parameters); "
                             "a store is data, so by default nothing it names is imported")
    report.set_defaults(func=_cmd_report)

    sub.add_parser("presets", help="list the bundled presets").set_defaults(func=_cmd_presets)
    sub.add_parser("models", help="list the model families with parameter counts per width").set_defaults(
        func=_cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # As `python -m` does: a config's `module:function` may name a module in the current folder.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return args.func(args)
    except WidthlabError as exc:
        print(f"widthlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("widthlab: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        if "torch.distributed" in sys.modules:  # under torchrun: leave the process group before exiting
            from widthlab.train.distributed import shutdown

            shutdown()


if __name__ == "__main__":
    sys.exit(main())
