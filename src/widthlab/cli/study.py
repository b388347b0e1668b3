"""`widthlab run | status | report | presets | models`: studies from the command line."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from widthlab import files
from widthlab.errors import WidthlabError

DEFAULT_ROOT = Path("widthlab-runs")
FORMATS_DEFAULT = "png,pdf"
SMOKE_FORMATS = "png"
FORMATS_HELP = "figure file formats, comma-separated: png, pdf (default png,pdf; --html needs png)"


def _cmd_run(args: argparse.Namespace) -> int:
    from widthlab.report.figures import figure_formats
    from widthlab.study.config import load_config
    from widthlab.study.executors import check_executor
    from widthlab.study.runner import plan_runs, run_study
    from widthlab.train.distributed import distributed_shard

    # A smoke run tests the code in seconds: PNG alone halves its drawing (matplotlib's PDF backend is not ours).
    chosen = args.formats if args.formats is not None else SMOKE_FORMATS if args.smoke else FORMATS_DEFAULT
    formats = figure_formats(chosen)  # a bad value fails now, not after the training
    check_executor(args.executor)
    overrides = list(args.set or [])
    if args.device:
        overrides.append(f"train.device={args.device}")
    cfg = load_config(args.config, overrides)
    if args.smoke:
        from widthlab.study.smoke import smoke_config

        cfg = smoke_config(cfg)
    if args.select:
        if cfg.grid.select is None:
            raise WidthlabError(f"--select: {cfg.name!r} declares no grid.select; give one (e.g. --set "
                                "'grid.select={train.lr: [0.1, 0.01, 0.001]}')")
        cfg = load_config(cfg, ["grid.select.enabled=true"])
    out = Path(args.out) if args.out else DEFAULT_ROOT / cfg.name
    for caveat in cfg.caveats:  # before any work: a stand-in data set must not surprise anyone at the verdict
        print(f"widthlab: note: {caveat}", file=sys.stderr)
    specs = plan_runs(cfg)
    if args.dry_run:
        from widthlab.registry import resolve_callable

        for name, what in ((cfg.model.name, "model"), (cfg.data.name, "data set")):
            if ":" in name:  # named by the user's own config: importing it is what running it would do
                resolve_callable(name, what)
        print(f"study {cfg.name}: {len(specs)} runs "
              f"({len(cfg.grid.variants)} variants × {len(cfg.grid.widths)} widths × {cfg.grid.replicates} replicates"
              + (f" × {len(cfg.grid.select.candidates)} candidates" if cfg.grid.selecting else "") + ")"
              f" → {out}")
        for spec in specs:
            print(f"  {spec.run_id:<28} variant={spec.variant:<16} width={spec.width:g} replicate={spec.replicate}")
        return 0
    outcome = run_study(cfg, out, executor=args.executor, workers=args.workers, address=args.address,
                        gpus_per_run=args.gpus_per_run, progress=None if not args.quiet else False,
                        checkpoint_every=args.checkpoint_every, formats=formats)
    if distributed_shard()[0] != 0:  # under torchrun, rank 0 alone reports
        return 0
    _print_report(out, outcome.runs, outcome.report)
    if outcome.failed:
        print(f"widthlab: {len(outcome.failed)} run(s) failed; see `widthlab status {out}` and "
              f"{out / 'widthlab.log'}", file=sys.stderr)
        return 1
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from widthlab.study.runner import lost_checkpoints_note, unchosen_without_checkpoint
    from widthlab.study.store import load_results

    runs = load_results(args.dir).runs
    current = _current_run_ids(Path(args.dir), _study_config(Path(args.dir)))
    if current is not None and runs["run_id"].isin(current).any():
        runs = runs.assign(status=runs["status"].where(runs["run_id"].isin(current), "not in this config"))
    counts = runs["status"].value_counts().to_dict()
    print(f"{len(runs)} runs: {', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}")
    columns = ["run_id", "status", "epochs", "test_acc", "seconds", "error"]
    table = runs[columns].copy()
    table["error"] = table["error"].fillna("")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-"))
    lost = unchosen_without_checkpoint(runs, Path(args.dir))
    if lost:
        print(f"note: {lost_checkpoints_note(lost)}")
    return 0


def _print_report(out: Path, runs, report: dict) -> None:
    """Print the run census of `runs`, then from `report` (what `write_report` returned) the verdict table, the
    hypothesis and calibration lines of each variant, the caveats and the files written."""
    from widthlab.report import calibration, format_verdict_table, hypothesis, hypothesis_word
    from widthlab.report.caveats import voided
    from widthlab.report.frivolous import effective_width
    from widthlab.study.store import STORE_NAME

    table = report["verdict"]
    counts = runs["status"].value_counts().to_dict()
    print(f"runs: {', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}")
    print(format_verdict_table(table))
    caveats_df = report["caveats"]
    for row in hypothesis(table).itertuples(index=False):
        meaningless = " (not meaningful, see the caveats)" if caveats_df is not None and voided(caveats_df, row.variant) \
            else ""
        print(f"hypothesis {hypothesis_word(row)} for {row.variant}{meaningless}: {row.reason}")
    for row in calibration(table).itertuples(index=False):
        print(f"similarity trend survives calibration for {row.variant}: {row.survives} ({row.reason})")
    growth_df = report["growth"]
    if growth_df is not None and len(growth_df):
        for row in effective_width(growth_df).itertuples(index=False):
            print(f"effective width grows slower than width for {row.variant}: {row.slower} ({row.reason})")
    for caveat in ([] if caveats_df is None else caveats_df.itertuples(index=False)):
        where = "" if caveat.variant == "*" else f" ({caveat.variant})"
        print(f"caveat{where}: {caveat.caveat}")
    print(f"summary: {out / 'summary.md'}\nfigures: {out / 'figures'}")
    if report["html"] is not None:
        print(f"html:    {report['html']}")
    if (out / STORE_NAME).is_file():
        print(f"store:   {out / STORE_NAME}")


def _cmd_report(args: argparse.Namespace) -> int:
    from widthlab.report import check_report_folder, combine_frames, write_report
    from widthlab.report.figures import figure_formats
    from widthlab.study.build import parameter_counts
    from widthlab.study.store import (
        check_measured,
        check_study_folder,
        left_out_note,
        load_results,
        select_runs,
        study_lock,
    )

    formats = figure_formats(args.formats)

    dirs = [Path(d) for d in args.dirs]
    if len(dirs) > 1 and not args.out:
        raise WidthlabError(f"{len(dirs)} study directories make one combined report: name its folder with --out")
    out = Path(args.out) if args.out else dirs[0]
    # Everything that can be checked is, before anything is written: a report half-redrawn is worse than none.
    into_study = any(out.resolve() == directory.resolve() for directory in dirs)
    if into_study:
        check_study_folder(out)
    check_report_folder(out)
    studies, notes = [], []
    for directory in dirs:
        # Read through no link either: a config.yaml -> ~/.ssh/id_rsa would be copied into summary.md.
        files.refuse_links(directory)
        results = load_results(directory)
        config = _study_config(directory)
        current = _current_run_ids(directory, config)
        if current is not None:  # the runs of the study's current grid; others stay in the store
            results, others = select_runs(results, current)
            if others:
                notes.append(left_out_note(others))
                print(f"widthlab: {directory}: {notes[-1]}", file=sys.stderr)
        check_measured(results, directory)
        studies.append((directory, results, config))
    names = ("runs", "metrics", "snapshots", "history", "compression", "cka")
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
    seed = int((config or {}).get("seed", 0) or 0) if len(studies) == 1 else 0  # the bootstrap's seed, as run_study's
    # Into a study's own folder only while no run writes it: the run's own report follows its last run, and a
    # report drawn now would be older than the store it claims to summarise.
    with study_lock(out, report=True) if into_study else contextlib.nullcontext():
        report = write_report(tables["runs"], tables["metrics"], out, title=title, config=config,
                              snapshots=tables["snapshots"], history=tables["history"], seed=seed,
                              params=parameter_counts(tables["runs"], import_code=args.allow_code), html=args.html,
                              notes=notes, formats=formats, compression=tables["compression"], cka=tables["cka"])
    _print_report(out, tables["runs"], report)
    return 0


def _current_run_ids(directory: Path, config: dict | None) -> set[str] | None:
    """The run ids of the grid of a study folder's config.yaml, read as `config` (None without one, or for a
    config this version no longer accepts)."""
    from widthlab.study.config import load_config
    from widthlab.study.runner import plan_runs

    if config is None:
        return None
    try:
        return {spec.run_id for spec in plan_runs(load_config(config))}
    except WidthlabError:  # a config of an older version: report every stored run
        return None


def _study_config(directory: Path) -> dict | None:
    """A study folder's config.yaml as a mapping (None without one), or a WidthlabError naming what is wrong with
    it: `report` takes the study's name and its verdict's seed from it, and `status` its current grid."""
    from widthlab.study.config import read_yaml

    path = directory / "config.yaml"
    restore = ("fix it, or restore it (`widthlab run` with the study's config and this --out writes it again; "
               "without a config.yaml every stored run is reported)")
    if not path.exists():
        return None
    if not path.is_file():
        raise WidthlabError(f"{str(path)!r} is a directory, not the study's config file; move it away and rerun")
    try:
        config = read_yaml(path)
    except UnicodeDecodeError as exc:
        raise WidthlabError(f"{str(path)!r} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                            f"{exc.start}); {restore}") from None
    except WidthlabError as exc:
        raise WidthlabError(f"{exc}; {restore}") from None
    if not isinstance(config, dict):
        raise WidthlabError(f"{str(path)!r} holds a YAML {type(config).__name__}, not a study config (a mapping of "
                            f"name, seed, grid, ...); {restore}")
    for key, kind, what in (("name", str, "a string"), ("seed", int, "an integer")):
        value = config.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise WidthlabError(f"{str(path)!r}: {key} must be {what}, got {value!r}; {restore}")
    return config


def _cmd_presets(args: argparse.Namespace) -> int:
    from widthlab.study.catalog import describe_presets

    for row in describe_presets():
        print(f"{row['name']:<22} Figure {row['figure']:<5} {row['data']:<18} runs {row['runs']:<28} "
              f"{row['description']}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from widthlab.models import list_models
    from widthlab.study.build import build_model, parameter_count

    widths = (0.25, 0.5, 1.0, 2.0, 4.0)  # the paper's Figure A1
    print(f"{'model':<22}" + "".join(f"{'params @ ' + format(w, 'g') + 'x':>16}" for w in widths))
    for name in list_models():
        counts = [parameter_count(build_model({"name": name}, w, device="meta")) for w in widths]
        print(f"{name:<22}" + "".join(f"{c:>16,}" for c in counts))
    return 0


def add_run_parsers(sub) -> None:
    """The ``run`` and ``status`` commands."""
    run = sub.add_parser("run", help="run a study (a preset name or a YAML file), then write its report")
    run.add_argument("config", help="preset name (see `widthlab presets`) or path to a study YAML")
    run.add_argument("--out", help=f"study directory (default: {DEFAULT_ROOT}/NAME); rerunning resumes it")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a config value, e.g. --set grid.replicates=1 --set train.epochs=10")
    run.add_argument("--device", choices=("cpu", "cuda", "auto"), help="training device (default: the config's)")
    run.add_argument("--dry-run", action="store_true", help="print the grid of runs and stop")
    run.add_argument("--select", action="store_true",
                     help="turn on the config's declared grid.select (the CNN presets declare the paper's learning-"
                          "rate selection, off by default: it multiplies training by the number of candidates)")
    run.add_argument("--smoke", action="store_true",
                     help="a seconds-long version: widths 1/4 and 1/2, one replicate, 64 examples, 3 steps, "
                          "digits when the study's image data is absent")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--formats", metavar="LIST", help=FORMATS_HELP + "; png alone with --smoke")
    run.add_argument("--executor", default="local",
                     help="where runs execute: local (default, one after another), processes or ray")
    run.add_argument("--workers", type=int, default=2, help="worker processes for --executor processes (default 2)")
    run.add_argument("--address", help="Ray cluster address for --executor ray (default: start a local cluster)")
    run.add_argument("--gpus-per-run", type=float,
                     help="GPUs each Ray task declares (default: 1 on CUDA, or on auto in a cluster with GPUs; else 0)")
    run.add_argument("--checkpoint-every", type=float, default=60.0, metavar="SECONDS",
                     help="seconds between a run's checkpoints (default 60; 0: after every epoch)")
    run.set_defaults(func=_cmd_run)

    status = sub.add_parser("status", help="print the state of every run of a study directory")
    status.add_argument("dir", help="a study directory written by `widthlab run`")
    status.set_defaults(func=_cmd_status)



def add_report_parsers(sub) -> None:
    """The ``report``, ``presets`` and ``models`` commands."""
    report = sub.add_parser("report", help="redraw the figures, verdict and summary of one study, or combine "
                                           "several studies into one report")
    report.add_argument("dirs", nargs="+", metavar="DIR", help="study directories written by `widthlab run`; "
                        "with several, their variants are drawn together, prefixed by each study's name")
    report.add_argument("--out", help="report folder (default: the study directory; required with several DIRs)")
    report.add_argument("--html", action="store_true",
                        help="also write report.html: one self-contained file with figures, verdict, "
                             "configuration, package versions and run times")
    report.add_argument("--formats", default=FORMATS_DEFAULT, metavar="LIST", help=FORMATS_HELP)
    report.add_argument("--allow-code", action="store_true",
                        help="import the module:function models the store names (to count their parameters); "
                             "a store is data, so by default nothing it names is imported")
    report.set_defaults(func=_cmd_report)

    sub.add_parser("presets", help="list the bundled presets").set_defaults(func=_cmd_presets)
    sub.add_parser("models", help="list the model families with parameter counts per width").set_defaults(
        func=_cmd_models)
