"""The `widthlab` command: run studies, redraw reports, list presets and models.

Errors a user can cause print one line and exit with status 2 (argparse's own usage errors do the same).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from widthlab.errors import WidthlabError

DEFAULT_ROOT = Path("widthlab-runs")
FORMATS_DEFAULT = "png,pdf"
SMOKE_FORMATS = "png"
FORMATS_HELP = "figure file formats, comma-separated: png, pdf (default png,pdf; --html needs png)"


def _cmd_run(args: argparse.Namespace) -> int:
    from widthlab.study.config import load_config
    from widthlab.study.runner import plan_runs, run_study
    from widthlab.study.store import load_results
    from widthlab.train.distributed import distributed_shard

    from widthlab.report.figures import figure_formats

    # A smoke run tests the code in seconds: PNG alone halves its drawing (matplotlib's PDF backend is not ours).
    chosen = args.formats if args.formats is not None else SMOKE_FORMATS if args.smoke else FORMATS_DEFAULT
    formats = figure_formats(chosen)  # a bad value fails now, not after the training
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
    run_study(cfg, out, executor=args.executor, workers=args.workers, address=args.address,
              gpus_per_run=args.gpus_per_run, progress=None if not args.quiet else False,
              checkpoint_every=args.checkpoint_every, formats=formats)
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
    current = _current_run_ids(Path(args.dir))
    if current is not None and runs["run_id"].isin(current).any():
        runs = runs.assign(status=runs["status"].where(runs["run_id"].isin(current), "not in this config"))
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


def _int_arg(text: str | None, flag: str, minimum: int | None = None) -> int | None:
    """The integer a flag was given (None when it was not), or a one-line error naming the flag."""
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise WidthlabError(f"{flag} expects an integer, got {text!r}") from None
    if minimum is not None and value < minimum:
        raise WidthlabError(f"{flag} must be at least {minimum}, got {value}")
    return value


def _mask_arg(text: str) -> str | int | None:
    """``--mask``: ``none`` ignores masks, an integer is the position of a positional input, else a keyword."""
    if text.lower() == "none":
        return None
    if not text:
        raise WidthlabError("--mask expects a keyword (e.g. attention_mask), a positional index, or none")
    return int(text) if text.lstrip("-").isdigit() else text


def _duration(seconds: float) -> str:
    """``12 s``, ``2.7 min`` or ``1.5 h``."""
    if seconds < 90:
        return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.2g} min" if seconds < 600 else f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.2g} h"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


MIN_LEVELS, MIN_SAMPLINGS = 5, 1
MIN_EXAMPLES = 100


@dataclass(frozen=True)
class MeasureChoice:
    """What `choose_measurement` settled on: levels, samplings and examples, the estimated seconds, and a note
    saying what was changed and why (None when the settings were kept)."""

    levels: int
    samplings: int
    examples: int
    seconds: float
    note: str | None = None


def estimate_seconds(seconds_per_example: float, examples: int, jobs: int, levels: int, samplings: int,
                     extra_passes: float = 1.0) -> float:
    """Estimated wall time of `analyze`: one clean pass, `extra_passes` (redundancy statistics) and, per job
    (a perturbation × a scope), samplings × (levels − 1) perturbed copies, each a forward pass over `examples`.

    An upper bound on the batched path, where a copy runs only the network after its layer.
    Example: ``estimate_seconds(0.01, 300, 2, 11, 3) == 0.01 * 300 * (1 + 1 + 2 * 3 * 10)``
    """
    return seconds_per_example * examples * (1 + extra_passes + jobs * samplings * (levels - 1))


def choose_measurement(*, seconds_per_example: float, examples: int, jobs: int, levels: int, samplings: int,
                       budget: float, fixed: frozenset[str] | set[str] = frozenset(),
                       extra_passes: float = 1.0) -> MeasureChoice:
    """Fit `analyze` into `budget` seconds (`estimate_seconds`) by lowering what the user left to widthlab.

    In this order, each only as far as needed: the levels (to no fewer than 5), the samplings (to no fewer than 1;
    then the levels are raised again as far as the budget allows), the examples (the first N, no fewer than
    `MIN_EXAMPLES`: past that the estimate may stay over the budget, and the message says so). A knob named in
    `fixed` (``"levels"``, ``"samplings"``, ``"examples"``: set by the user) is never changed. `budget` 0 keeps
    everything. A pure function of its arguments.

    Example: ``choose_measurement(seconds_per_example=0.01, examples=300, jobs=10, levels=11, samplings=3,
    budget=180).levels == 5``
    """
    def cost(lv: int, sv: int, n: int) -> float:
        return estimate_seconds(seconds_per_example, n, jobs, lv, sv, extra_passes)

    def fits(lv: int, sv: int, n: int) -> bool:
        return cost(lv, sv, n) <= budget

    first = cost(levels, samplings, examples)
    if budget <= 0 or first <= budget:
        return MeasureChoice(levels, samplings, examples, first)
    free = {"levels", "samplings", "examples"} - set(fixed)
    lowest_l = min(levels, MIN_LEVELS) if "levels" in free else levels
    lowest_s = min(samplings, MIN_SAMPLINGS) if "samplings" in free else samplings
    lv, sv, n = levels, samplings, examples
    lv = next((v for v in range(levels, lowest_l - 1, -1) if fits(v, sv, n)), lowest_l)
    if not fits(lv, sv, n):
        sv = next((v for v in range(samplings, lowest_s - 1, -1) if fits(lv, v, n)), lowest_s)
        lv = next((v for v in range(levels, lv - 1, -1) if fits(v, sv, n)), lv)  # give back what now fits
    if not fits(lv, sv, n) and "examples" in free:
        per_example = cost(lv, sv, 1)
        # Never below MIN_EXAMPLES on its own: a curve over a dozen examples measures nothing worth its time.
        n = max(min(examples, MIN_EXAMPLES), min(examples, int(budget // per_example))) if per_example > 0 else examples
    now = cost(lv, sv, n)
    before = (f"estimated {_duration(first)} with {_plural(levels, 'level')} × {_plural(samplings, 'sampling')} "
              f"on {_plural(examples, 'example')}")
    if (lv, sv, n) == (levels, samplings, examples):
        return MeasureChoice(lv, sv, n, now, f"{before}, over --budget {budget:g} s; measuring as asked (set "
                                           "--levels/--samplings/--max-examples lower, or --budget 0 to silence)")
    over = "" if now <= budget else f", still over --budget {budget:g} s"
    return MeasureChoice(lv, sv, n, now, f"{before}; using {_plural(lv, 'level')} × {_plural(sv, 'sampling')} on "
                                       f"{_plural(n, 'example')} (est. {_duration(now)}{over}) to fit --budget "
                                       f"{budget:g} s; set --levels/--samplings/--max-examples to choose")


def _seconds_per_example(model, batch, *, passes: int = 5, enough: float = 1.0) -> float:
    """Seconds of one clean forward pass per example, timed on `batch`: the fastest of up to `passes` passes
    (fewer once `enough` seconds are spent) after a warm-up pass, since the first pass at a new shape picks
    kernels and a busy machine slows single passes down."""
    import torch

    from widthlab.measure.inputs import model_device

    def sync() -> None:
        if model_device(model).type == "cuda":
            torch.cuda.synchronize()

    best, spent = float("inf"), 0.0
    with torch.no_grad():
        batch.run(model)
        for _ in range(passes):
            sync()
            start = time.perf_counter()
            batch.run(model)
            sync()
            seconds = time.perf_counter() - start
            best, spent = min(best, seconds), spent + seconds
            if spent >= enough:
                break
    return best / len(batch)


def _layer_list(units: dict[str, int]) -> str:
    items = [f"{name} ({_plural(count, 'unit')})" for name, count in units.items()]
    if len(items) > 6:
        items = [*items[:3], f"… {len(items) - 5} more …", *items[-2:]]
    return ", ".join(items)


def _analyze_inputs(args: argparse.Namespace, max_length: int):
    """``(label, inputs)``: the inputs `--data` names, or the data set of the study whose checkpoint is analysed."""
    from widthlab.study.external import load_inputs, study_data

    options = _parse_options(args.data_opt, "--data-opt")
    if args.data is not None:
        inputs = load_inputs(args.data, split=args.split, seed=args.seed, root=args.root, options=options,
                             model=args.model, max_length=max_length)
        registered = not args.data.endswith((".pt", ".txt")) and not Path(args.data).is_file()
        return (f"{args.data} ({args.split} split)" if registered else args.data), inputs
    name, recorded, seed = study_data(args.model)
    saved_root = recorded.pop("root")
    recorded.update(options)
    shown = ", ".join(f"{k}={v}" for k, v in recorded.items())
    inputs = load_inputs(name, split=args.split, seed=seed, root=args.root or saved_root, options=recorded)
    return f"{name} ({shown + ', ' if shown else ''}seed {seed}, {args.split} split: the study's data set)", inputs


def _analyze_flags(args: argparse.Namespace) -> dict:
    """The analyze flags checked and parsed (each bad value a one-line `WidthlabError` naming its flag)."""
    from widthlab.measure.perturbations import get_perturbation

    try:
        budget = float(args.budget)
    except ValueError:
        raise WidthlabError(f"--budget expects seconds, got {args.budget!r}") from None
    if not 0 <= budget < float("inf"):
        raise WidthlabError(f"--budget must be a number of seconds >= 0 (0: no budget), got {args.budget!r}")
    perturbations = tuple(p.strip() for p in args.perturbations.split(","))
    for name in perturbations:
        get_perturbation(name)
    return {"levels": _int_arg(args.levels, "--levels", 2), "samplings": _int_arg(args.samplings, "--samplings", 1),
            "max_examples": _int_arg(args.max_examples, "--max-examples", 1),
            "max_length": _int_arg(args.max_length, "--max-length", 1),
            "max_rows": _int_arg(args.max_rows, "--max-rows", 1),
            "unit_axis": _int_arg(args.unit_axis, "--unit-axis"), "budget": budget, "mask": _mask_arg(args.mask),
            "output": args.output or None, "perturbations": perturbations,
            "layers": [name.strip() for name in args.layers.split(",")] if args.layers else None}


def _cmd_analyze(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from widthlab.measure import analyze, capture, check_measurable
    from widthlab.measure.inputs import count_examples, first_batch, known_examples
    from widthlab.measure.perturbations import evenly_spaced_levels, get_perturbation
    from widthlab.report.analysis import layer_table, write_layer_figures
    from widthlab.study.external import first_examples, load_model, trial_run

    flags = _analyze_flags(args)
    perturbations, mask, unit_axis, output = flags["perturbations"], flags["mask"], flags["unit_axis"], flags["output"]
    model = load_model(args.model, seed=args.seed)
    data_label, inputs = _analyze_inputs(args, flags["max_length"])
    if flags["max_examples"] is not None:
        inputs = first_examples(inputs, flags["max_examples"])
    # Fail fast, in one line: inputs the model cannot run on, then anything analyze would refuse later.
    trial_run(model, inputs, args.model, mask=mask)
    names = check_measurable(model, inputs, flags["layers"], perturbations=perturbations, unit_axis=unit_axis,
                             output=output, mask=mask)

    # The plan, timed on one clean forward pass of a few examples, fitted into --budget.
    probe = first_batch(model, inputs, 8, mask)
    units = {name: acts.shape[1] for name, acts in
             capture(model, probe.head(2), names, unit_axis=unit_axis, mask=mask).items()}
    seconds_per_example = _seconds_per_example(model, probe)
    examples = known_examples(inputs)
    jobs = len(perturbations) * (len(names) + (len(names) > 1))  # each layer, plus "all" when there are several
    extra = 1 + any(get_perturbation(name).needs_moments for name in perturbations)  # similarity null, moments
    if args.units:
        extra += sum(1 + 2 * count for count in units.values())  # per layer: statistics, 2 × C single-unit copies
    given = {"levels": flags["levels"], "samplings": flags["samplings"], "examples": flags["max_examples"]}
    fixed = {knob for knob, value in given.items() if value is not None}  # the user's choices: never changed
    choice = MeasureChoice(flags["levels"] or 11, flags["samplings"] or 3, examples or 0, float("nan"))
    if examples is not None:
        choice = choose_measurement(seconds_per_example=seconds_per_example, examples=examples, jobs=jobs,
                                    levels=choice.levels, samplings=choice.samplings, budget=flags["budget"],
                                    fixed=fixed, extra_passes=extra)
        if choice.examples < examples:
            inputs, examples = first_examples(inputs, choice.examples), choice.examples
    if not args.quiet:
        tokens = count_examples(inputs, mask)[1] if isinstance(inputs, dict) else None
        parameters = sum(p.numel() for p in model.parameters())
        print(f"widthlab: {args.model} ({type(model).__name__}, {parameters / 1e6:.3g} M parameters) on {data_label}:"
              f" {'unknown' if examples is None else format(examples, ',')} examples"
              f"{'' if tokens is None else f' ({tokens:,} real tokens)'}; {_plural(len(names), 'layer')}: "
              f"{_layer_list(units)}", file=sys.stderr)
    if not args.quiet or choice.note is not None:  # a budget's change is reported even with --quiet
        evaluations = -(-(examples or 1) // 256) * (1 + jobs * choice.samplings * (choice.levels - 1))
        timing = choice.note or (f"est. {_duration(choice.seconds)} (one forward pass of {len(probe)} examples: "
                                 f"{seconds_per_example * len(probe) * 1000:.3g} ms)")
        print(f"widthlab: {', '.join(perturbations)} × {_plural(choice.levels, 'level')} × "
              f"{_plural(choice.samplings, 'sampling')}: about {evaluations:,} forward evaluations, {timing}",
              file=sys.stderr)

    level_sets = {name: evenly_spaced_levels(choice.levels, name) for name in perturbations}
    bar = None if args.quiet else tqdm(desc="measuring", unit="eval", file=sys.stderr, dynamic_ncols=True)
    try:
        frame = analyze(model, inputs, names, perturbations=perturbations, levels=level_sets,
                        samplings=choice.samplings, seed=args.seed, max_rows=flags["max_rows"], unit_axis=unit_axis,
                        output=output, mask=mask, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    tables = {"analysis": frame}
    if args.units:
        tables["units"] = _unit_tables(model, inputs, names, args, unit_axis=unit_axis, output=output, mask=mask)
    out = Path(args.out)
    written = _write_tables(tables, out, args.format)
    write_layer_figures(frame, out / "figures")
    print(layer_table(frame).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"measurements: {written['analysis']}")
    if args.units:
        print(f"units:        {written['units']}")
    print(f"figures:      {out / 'figures'}")
    return 0


def _write_tables(tables: dict, out: Path, fmt: str) -> dict[str, Path]:
    """Write each ``{name: DataFrame}`` as ``out/name.csv`` (or ``.parquet``), atomically; returns the paths."""
    from widthlab import files

    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, table in tables.items():
        written[name] = out / f"{name}.{fmt}"
        with files.atomic_path(written[name]) as tmp:
            if fmt == "parquet":
                try:
                    table.to_parquet(tmp, index=False)
                except ImportError:
                    raise WidthlabError("--format parquet needs pyarrow (pip install pyarrow); use --format csv") \
                        from None
            else:
                table.to_csv(tmp, index=False)
    return written


def _unit_tables(model, inputs, names: list[str], args: argparse.Namespace, **options):
    """One `unit_table` per measured layer, stacked, with the layer's name in a first ``layer`` column."""
    import pandas as pd
    from tqdm import tqdm

    from widthlab.measure.units import unit_table

    frames = []
    for name in names:
        bar = None if args.quiet else tqdm(desc=f"units of {name}", unit="eval", file=sys.stderr, dynamic_ncols=True)
        try:
            table = unit_table(model, inputs, name, seed=args.seed, progress=bar, **options)
        finally:
            if bar is not None:
                bar.close()
        frames.append(table.drop(columns="layer", errors="ignore").assign(layer=name))
    table = pd.concat(frames, ignore_index=True)
    return table[["layer", *[c for c in table.columns if c != "layer"]]]


def _read_csv(path: Path):
    """A report table the report wrote, or None when it did not (nothing of that kind to report)."""
    import pandas as pd

    return pd.read_csv(path, keep_default_na=False, na_values=[""]) if path.is_file() else None


def _print_report(out: Path, runs=None, report: dict | None = None) -> None:
    """Print the run census, the verdict table, the hypothesis and the calibration line of each variant.

    Without `report` (the dict `write_report` returns) they come from the study directory `out`: its store and
    the verdict.csv its report wrote (computed with the study's seed).
    """
    import pandas as pd

    from widthlab.report import calibration, format_verdict_table, hypothesis
    from widthlab.report.caveats import voided
    from widthlab.report.frivolous import effective_width
    from widthlab.study.store import STORE_NAME, load_results

    if report is None:
        runs, table = load_results(out).runs, pd.read_csv(out / "verdict.csv")
    else:
        table = report["verdict"]
    counts = runs["status"].value_counts().to_dict()
    print(f"runs: {', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}")
    print(format_verdict_table(table))
    caveats_df = report["caveats"] if report is not None else _read_csv(out / "caveats.csv")
    for row in hypothesis(table).itertuples(index=False):
        meaningless = " (not meaningful, see the caveats)" if caveats_df is not None and voided(caveats_df, row.variant) \
            else ""
        print(f"hypothesis {'holds' if row.holds else 'does not hold'} for {row.variant}{meaningless}: {row.reason}")
    for row in calibration(table).itertuples(index=False):
        print(f"similarity trend survives calibration for {row.variant}: {row.survives} ({row.reason})")
    growth_df = report["growth"] if report is not None else _read_csv(out / "growth.csv")
    if growth_df is not None and len(growth_df):
        for row in effective_width(growth_df).itertuples(index=False):
            print(f"effective width grows slower than width for {row.variant}: {row.slower} ({row.reason})")
    for caveat in ([] if caveats_df is None else caveats_df.itertuples(index=False)):
        where = "" if caveat.variant == "*" else f" ({caveat.variant})"
        print(f"caveat{where}: {caveat.caveat}")
    print(f"summary: {out / 'summary.md'}\nfigures: {out / 'figures'}")
    if report is not None and report["html"] is not None:
        print(f"html:    {report['html']}")
    if (out / STORE_NAME).is_file():
        print(f"store:   {out / STORE_NAME}")


def _cmd_report(args: argparse.Namespace) -> int:
    import yaml

    from widthlab.report import combine_frames, write_report
    from widthlab.report.figures import figure_formats
    from widthlab.study.runner import parameter_counts

    formats = figure_formats(args.formats)
    from widthlab.study.store import left_out_note, load_results, select_runs, study_lock

    dirs = [Path(d) for d in args.dirs]
    if len(dirs) > 1 and not args.out:
        raise WidthlabError(f"{len(dirs)} study directories make one combined report: name its folder with --out")
    studies, notes = [], []
    for directory in dirs:
        results = load_results(directory)
        config_path = directory / "config.yaml"
        config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else None
        current = _current_run_ids(directory)
        if current is not None:  # the runs of the study's current grid; others stay in the store
            results, others = select_runs(results, current)
            if others:
                notes.append(left_out_note(others))
                print(f"widthlab: {directory}: {notes[-1]}", file=sys.stderr)
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
    seed = int((config or {}).get("seed", 0) or 0) if len(studies) == 1 else 0  # the bootstrap's seed, as run_study's
    # Into a study's own folder only while no run writes it: the run's own report follows its last run, and a
    # report drawn now would be older than the store it claims to summarise.
    into_study = any(out.resolve() == directory.resolve() for directory in dirs)
    with study_lock(out, report=True) if into_study else contextlib.nullcontext():
        report = write_report(tables["runs"], tables["metrics"], out, title=title, config=config,
                              snapshots=tables["snapshots"], history=tables["history"], seed=seed,
                              params=parameter_counts(tables["runs"], import_code=args.allow_code), html=args.html,
                              notes=notes, formats=formats)
    _print_report(out, tables["runs"], report)
    return 0


def _current_run_ids(directory: Path) -> set[str] | None:
    """The run ids of the grid in a study folder's config.yaml (None without a readable one)."""
    from widthlab.study.config import load_config, read_yaml
    from widthlab.study.runner import plan_runs

    path = directory / "config.yaml"
    if not path.is_file():
        return None
    try:
        return {spec.run_id for spec in plan_runs(load_config(read_yaml(path)))}
    except WidthlabError:  # a config of an older version: report every stored run
        return None


def _cmd_presets(args: argparse.Namespace) -> int:
    from widthlab.presets import describe_presets

    for row in describe_presets():
        print(f"{row['name']:<22} Figure {row['figure']:<5} {row['data']:<18} runs {row['runs']:<28} "
              f"{row['description']}")
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
    from widthlab import __version__

    parser = argparse.ArgumentParser(prog="widthlab", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"widthlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

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
    analyze.add_argument("model", help="a widthlab checkpoint (.pt), hf:PATH (a saved HF transformers model), "
                                       "module:function returning an nn.Module, or torchvision:NAME / timm:NAME "
                                       "when that package is installed")
    analyze.add_argument("--data", help="a registered data set (e.g. digits, cifar10), a .pt file with a tensor, "
                                        "{'x': ..., 'y': ...}, a tuple of tensors or a dict of tensors (keyword "
                                        "inputs), or with an hf: model a .txt file of one example per line "
                                        "(default: the data set of the study that wrote a checkpoint)")
    analyze.add_argument("--data-opt", action="append", metavar="KEY=VALUE", help="data set option, repeatable")
    analyze.add_argument("--root", help="data folder (default: $WIDTHLAB_DATA)")
    analyze.add_argument("--split", choices=("train", "val", "test"), default="test", help="split to measure on")
    analyze.add_argument("--max-examples", metavar="N", help="measure on the first N examples only (default: all, "
                                                             "unless --budget lowers it)")
    analyze.add_argument("--max-length", metavar="N", default="128",
                         help="tokens per line of a .txt file; longer lines are truncated (default 128)")
    analyze.add_argument("--layers", help="comma-separated module names (default: the model's unit_layers, "
                                          "else every activation module, e.g. each transformer block's MLP act)")
    analyze.add_argument("--perturbations", default="zero", help="comma-separated (default: zero)")
    analyze.add_argument("--levels", metavar="N",
                         help="evenly spaced levels over each perturbation's range: shares 0-1, noise 0-2σ "
                              "(default 11, fewer when --budget needs it)")
    analyze.add_argument("--samplings", metavar="S",
                         help="random unit orders per curve (default 3, fewer when --budget needs it)")
    analyze.add_argument("--max-rows", metavar="R", help="rows sampled per layer for redundancy (default: all)")
    analyze.add_argument("--unit-axis", metavar="N", help="the axis of every layer output that holds its units "
                                                          "(default: decided per layer by the module producing it)")
    analyze.add_argument("--output", metavar="KEY", help="key or attribute of the model's output holding its scores "
                                                         "(default: the output itself, its logits, or its first "
                                                         "tensor)")
    analyze.add_argument("--mask", metavar="KEY", default="attention_mask",
                         help="keyword input (or positional index) of the attention mask: only real tokens are "
                              "measured (default attention_mask; none ignores masks)")
    analyze.add_argument("--units", action="store_true",
                         help="also write units.csv: one row per unit of each layer (single-unit ablation effects, "
                              "statistics, most correlated partner, selectivity)")
    analyze.add_argument("--budget", metavar="SECONDS", default="180",
                         help="estimated seconds the defaults may take: beyond it widthlab lowers the levels, the "
                              "samplings, then the examples that you did not set, and says so (default 180; 0: off)")
    analyze.add_argument("--seed", type=int, default=0,
                         help="seed of every random choice: the data set, the measurement, and the random weights "
                              "of a hub or hf: model (default 0)")
    analyze.add_argument("--quiet", action="store_true", help="no plan and no progress bar")
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
    report.add_argument("--formats", default=FORMATS_DEFAULT, metavar="LIST", help=FORMATS_HELP)
    report.add_argument("--allow-code", action="store_true",
                        help="import the module:function models the store names (to count their parameters); "
                             "a store is data, so by default nothing it names is imported")
    report.set_defaults(func=_cmd_report)

    sub.add_parser("presets", help="list the bundled presets").set_defaults(func=_cmd_presets)
    sub.add_parser("models", help="list the model families with parameter counts per width").set_defaults(
        func=_cmd_models)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, Kubernetes, systemd stopping the job), handled as Ctrl-C is."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # As `python -m` does: a config's `module:function` may name a module in the current folder.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.func(args)
    except WidthlabError as exc:
        print(f"widthlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"widthlab: {what}; finished runs are stored: rerun the same command to resume", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except BrokenPipeError:  # `widthlab status DIR | head`: the reader is gone, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # a full disk or a read-only folder where a file is written
        from widthlab.files import write_error

        error = write_error(Path(exc.filename or "."), exc)
        if error is None:
            raise
        print(f"widthlab: error: {error}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if "torch.distributed" in sys.modules:  # under torchrun: leave the process group before exiting
            from widthlab.train.distributed import shutdown

            shutdown()


if __name__ == "__main__":
    sys.exit(main())
