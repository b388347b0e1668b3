"""`widthlab analyze`: measure a model the user already has, with a plan fitted into a budget of forward
evaluations (a count, so the same command measures the same on any machine; time only estimates how long)."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from widthlab import files
from widthlab.errors import WidthlabError


def _parse_options(items: list[str] | None, flag: str) -> dict:
    """``{key: value}`` of repeated ``key=value`` flags (values read as YAML)."""
    from widthlab.study.yaml_io import parse_assignment

    return dict(parse_assignment(item, flag) for item in items or [])


def _int_arg(text: str | None, flag: str, minimum: int | None = None, maximum: int | None = None) -> int | None:
    """The integer a flag was given (None when it was not), or a one-line error naming the flag (and its bound)."""
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise WidthlabError(f"{flag} expects an integer, got {text!r}") from None
    if minimum is not None and value < minimum:
        raise WidthlabError(f"{flag} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise WidthlabError(f"{flag} must be at most {maximum:,} (the bound on {flag.lstrip('-')}), got {value:,}")
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
# What --max-evaluations allows by default, in example evaluations (one example through the network once): 11 levels × 3
# samplings of ten layers (and "all") on 30,000 examples. A count, not seconds, so that what is measured depends
# only on the command, the data and the seed, never on how fast or busy the machine is.
DEFAULT_BUDGET = 10_000_000


@dataclass(frozen=True)
class MeasureChoice:
    """What `choose_measurement` settled on: levels, samplings and examples, their example evaluations
    (`estimate_evaluations`), and a note saying what was changed and why (None when the settings were kept)."""

    levels: int
    samplings: int
    examples: int
    evaluations: int
    note: str | None = None


def estimate_evaluations(examples: int, jobs: int, levels: int, samplings: int, extra_passes: int = 1) -> int:
    """Example evaluations of `analyze` (one example through the network once): one clean pass, `extra_passes`
    (`statistics_passes`, plus --units' copies) and, per job (a perturbation × a scope), samplings × (levels − 1)
    perturbed copies, each a forward pass over `examples`: `planned_evaluations`, the count analyze's progress bar
    ends at.

    An upper bound on the batched path, where a copy runs only the network after its layer.

    Example: 300 examples, 2 jobs, 11 levels × 3 samplings:
        >>> estimate_evaluations(300, 2, 11, 3) == 300 * (1 + 1 + 2 * 3 * 10)
        True
    """
    from widthlab.measure.analyze import planned_evaluations

    return planned_evaluations(examples, [samplings * (levels - 1)] * jobs, extra_passes)


def choose_measurement(*, examples: int, jobs: int, levels: int, samplings: int, budget: int,
                       fixed: frozenset[str] | set[str] = frozenset(), extra_passes: int = 1) -> MeasureChoice:
    """Fit `analyze` into `budget` example evaluations (`estimate_evaluations`) by lowering what the user left to
    widthlab.

    In this order, each only as far as needed: the levels (to no fewer than 5), the samplings (to no fewer than 1;
    then the levels are raised again as far as the budget allows), the examples (the first N, no fewer than
    `MIN_EXAMPLES`: past that the plan may stay over the budget, and the note says so). A knob named in
    `fixed` (``"levels"``, ``"samplings"``, ``"examples"``: set by the user) is never changed. `budget` 0 keeps
    everything. A pure function of counts: the same command on the same data measures the same on any machine.

    Example: 11 levels × 3 samplings of 10 jobs cost 90,600; the levels go down to 5, the samplings to 1, and the
    levels back up to 6, which fit:
        >>> choice = choose_measurement(examples=300, jobs=10, levels=11, samplings=3, budget=18_000)
        >>> choice.levels, choice.samplings, choice.examples, choice.evaluations
        (6, 1, 300, 15600)
    """
    def cost(lv: int, sv: int, n: int) -> int:
        return estimate_evaluations(n, jobs, lv, sv, extra_passes)

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
        # Never below MIN_EXAMPLES on its own: a curve over a dozen examples measures nothing worth its time.
        n = max(min(examples, MIN_EXAMPLES), min(examples, budget // cost(lv, sv, 1)))
    now = cost(lv, sv, n)
    asked = (f"{_plural(levels, 'level')} × {_plural(samplings, 'sampling')} on {_plural(examples, 'example')} "
             f"({first:,} example evaluations)")
    if (lv, sv, n) == (levels, samplings, examples):
        return MeasureChoice(lv, sv, n, now, f"over --max-evaluations {budget:,}; measuring as asked (set "
                                           "--levels/--samplings/--max-examples lower, or --max-evaluations 0 to silence)")
    over = "" if now <= budget else f", still over --max-evaluations {budget:,}"
    return MeasureChoice(lv, sv, n, now, f"lowered from {asked} to fit --max-evaluations {budget:,}{over}; to measure more, "
                                       "set --levels/--samplings/--max-examples or a larger --max-evaluations")


PROBE_SHARE = 0.1  # the share of the measurement's examples the time estimate's probe measures
QUICK_SECONDS = 0.5  # probe runs shorter than this are repeated (3 at most) and the fastest kept
PROBE_MAX_EXAMPLES = 256  # one batch of analyze's default 256: the probe's batch is the shape the measurement runs
PROBE_MIN_EXAMPLES = 16  # fewer examples: no probe (the measurement itself takes about as long as one would)


@dataclass(frozen=True)
class Estimate:
    """How long `analyze` will take here, extrapolated from the probe runs of `estimate_seconds`.

    `fixed`: seconds the measurement spends whatever its number of examples (setting up, tracing each job's
    network after its layer, the spectra of C × C matrices, the similarity null), `per_example`: seconds per
    example of everything else (the clean pass, every perturbed copy, the statistics passes). `probe`: the seconds
    the probe runs took."""

    fixed: float
    per_example: float
    probe: float

    def seconds(self, examples: int) -> float:
        """The extrapolation to `examples` examples."""
        return self.fixed + examples * self.per_example


def probe_examples(examples: int) -> int | None:
    """How many examples `estimate_seconds` measures to estimate a measurement of `examples`: `PROBE_SHARE` of
    them, at least 8 and at most one batch; None (no probe) below `PROBE_MIN_EXAMPLES`.

    Example:
        >>> [probe_examples(n) for n in (10, 40, 1_000, 50_000)]
        [None, 8, 100, 256]
    """
    if examples < PROBE_MIN_EXAMPLES:
        return None
    return min(PROBE_MAX_EXAMPLES, max(8, int(PROBE_SHARE * examples)))


def estimate_seconds(run, *, examples: int) -> Estimate:
    """Time the real measurement on the first examples and extrapolate by the number of examples, so the estimate
    includes every cost the measurement has: the perturbed copies on their real path (every level and sampling,
    the copies that perturb nothing skipped, twins evaluated once), redundancy, selectivity, the similarity null,
    the tracing of each job's network. (Estimates from a clean forward pass were 10–20× off in both directions;
    from 1 and 3 copies per job, 3–6× under for convolutional networks, whose first pass at a new batch shape
    picks kernels for every job's network.)

    `run(n, full)` runs the real `analyze` on the first n examples: full True with the measurement's own
    levels, samplings and perturbations, False with 2 levels × 1 sampling (one copy per job). First a warm-up on
    `probe_examples` n examples with one copy per job (the first pass at a batch shape picks kernels and fills
    caches; not used), then the full measurement on 2 examples (nearly all fixed cost) and on n: their
    difference is the cost per example, the rest fixed. The probe costs about `PROBE_SHARE` of the measurement,
    plus the warm-up's 1/copies of that and the fixed cost twice.

    Example: probing the real `analyze` of a model on the first n of its 200 inputs:
        >>> def run(n, full):
        ...     analyze(model, x[:n], perturbations=["zero"], levels=11 if full else 2, samplings=3 if full else 1)
        >>> estimate = estimate_seconds(run, examples=200)
        >>> estimate.seconds(200) >= estimate.fixed >= 0, estimate.probe > 0
        (True, True)
    """
    n = probe_examples(examples)
    if n is None:
        raise ValueError(f"no probe for {examples} examples: fewer than {PROBE_MIN_EXAMPLES}")
    spent = 0.0

    def timed(k: int, full: bool) -> float:
        """The fastest of up to 3 runs while they take under `QUICK_SECONDS` together: a short run's time is mostly
        the load of a busy machine (tenths of a second)."""
        nonlocal spent
        best, total = float("inf"), 0.0
        for _ in range(3):
            start = time.perf_counter()
            run(k, full)
            took = time.perf_counter() - start
            best, total = min(best, took), total + took
            if total >= QUICK_SECONDS:
                break
        spent += total
        return best

    few = 2
    start = time.perf_counter()
    run(n, False)  # the warm-up at the probe's batch shape
    spent += time.perf_counter() - start
    tiny, part = timed(few, True), timed(n, True)
    per_example = max(0.0, (part - tiny) / (n - few))
    return Estimate(max(0.0, tiny - few * per_example), per_example, spent)


def _layer_list(units: dict[str, int]) -> str:
    items = [f"{name} ({_plural(count, 'unit')})" for name, count in units.items()]
    if len(items) > 6:
        items = [*items[:3], f"… {len(items) - 5} more …", *items[-2:]]
    return ", ".join(items)


def _analyze_inputs(args: argparse.Namespace, max_length: int):
    """``(label, inputs)``: the inputs `--data` names, or the data set of the study whose checkpoint is analysed."""
    from widthlab.external import load_inputs, study_data

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
    from widthlab.measure.perturbations import MAX_LEVELS, MAX_SAMPLINGS, get_perturbation

    if args.seconds_budget is not None:
        raise WidthlabError(f"--budget {args.seconds_budget} (seconds of measuring) is gone: what widthlab measures "
                            "no longer depends on how fast the machine is; use --max-evaluations N (example "
                            f"evaluations, default {DEFAULT_BUDGET:,}) or set --levels/--samplings/--max-examples")
    try:
        budget = float(args.budget)
    except ValueError:
        raise WidthlabError(f"--max-evaluations expects a number of example evaluations, got {args.budget!r}") \
            from None
    if not 0 <= budget < float("inf"):
        raise WidthlabError(f"--max-evaluations must be a number of example evaluations >= 0 (0: no budget), got "
                            f"{args.budget!r}")
    perturbations = tuple(p.strip() for p in args.perturbations.split(","))
    for name in perturbations:
        get_perturbation(name)
    return {"levels": _int_arg(args.levels, "--levels", 2, MAX_LEVELS),
            "samplings": _int_arg(args.samplings, "--samplings", 1, MAX_SAMPLINGS),
            "max_examples": _int_arg(args.max_examples, "--max-examples", 1),
            "max_length": _int_arg(args.max_length, "--max-length", 1),
            "max_rows": _int_arg(args.max_rows, "--max-rows", 1),
            "unit_axis": _int_arg(args.unit_axis, "--unit-axis"), "budget": int(budget), "mask": _mask_arg(args.mask),
            "output": args.output or None, "perturbations": perturbations,
            "layers": [name.strip() for name in args.layers.split(",")] if args.layers else None}


def _cmd_analyze(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from widthlab.external import first_examples, load_model, random_weights, trial_run
    from widthlab.measure import analyze, capture, check_measurable
    from widthlab.measure.inputs import count_examples, first_batch, known_examples
    from widthlab.measure.analyze import statistics_passes
    from widthlab.measure.perturbations import level_sets
    from widthlab.report.analysis import layer_notes, layer_table, write_layer_figures
    from widthlab.study.build import parameter_count

    flags = _analyze_flags(args)
    _check_out(Path(args.out))
    say = _say(args.quiet)
    perturbations, mask, unit_axis, output = flags["perturbations"], flags["mask"], flags["unit_axis"], flags["output"]
    # Before the inputs are checked, only on a terminal: a bad command's error stays one line in a log or pipe.
    early = say if _terminal() else _say(True)
    early("loading the model…")
    model = load_model(args.model, seed=args.seed, allow_code=args.allow_code)
    early("reading the data…")
    data_label, inputs = _analyze_inputs(args, flags["max_length"])
    if flags["max_examples"] is not None:
        inputs = first_examples(inputs, flags["max_examples"])
    # Fail fast, in one line: inputs the model cannot run on, then anything analyze would refuse later.
    trial_run(model, inputs, args.model, mask=mask)
    names = check_measurable(model, inputs, flags["layers"], perturbations=perturbations, unit_axis=unit_axis,
                             output=output, mask=mask)

    # The plan, from counts alone (--max-evaluations is example evaluations); timed runs on a slice of the inputs
    # only estimate how long it will take here.
    probed = capture(model, first_batch(model, inputs, 8, mask), names, unit_axis=unit_axis, mask=mask)
    units = {name: acts.shape[1] for name, acts in probed.items()}
    # Layers whose activations go below 0 on the probe: their selectivity may leave [0, 1] (`layer_notes`).
    signed = [name for name, acts in probed.items() if bool((acts < 0).any())]
    examples = known_examples(inputs)
    if args.cka and examples is not None and examples < 4:  # fail before the measuring, not after it
        raise WidthlabError(f"--cka needs at least 4 examples (the unbiased HSIC estimator), the inputs have {examples}")
    jobs = len(perturbations) * (len(names) + (len(names) > 1))  # each layer, plus "all" when there are several
    passes = statistics_passes(perturbations)  # redundancy, selectivity and the null; clean moments
    extra = passes
    if args.units:
        extra += sum(1 + 2 * count for count in units.values())  # per layer: statistics, 2 × C single-unit copies
    given = {"levels": flags["levels"], "samplings": flags["samplings"], "examples": flags["max_examples"]}
    fixed = {knob for knob, value in given.items() if value is not None}  # the user's choices: never changed
    choice = MeasureChoice(flags["levels"] or 11, flags["samplings"] or 3, examples or 0, 0)
    if examples is not None:
        choice = choose_measurement(examples=examples, jobs=jobs, levels=choice.levels, samplings=choice.samplings,
                                    budget=flags["budget"], fixed=fixed, extra_passes=extra)
        if choice.examples < examples:
            inputs, examples = first_examples(inputs, choice.examples), choice.examples
    if not args.quiet:
        tokens = count_examples(inputs, mask)[1] if isinstance(inputs, dict) else None
        parameters = parameter_count(model)
        weights = f", random weights (--seed {args.seed})" if random_weights(args.model) else ""
        print(f"widthlab: {args.model} ({type(model).__name__}, {parameters / 1e6:.3g} M parameters{weights}) on "
              f"{data_label}:"
              f" {'unknown' if examples is None else format(examples, ',')} examples"
              f"{'' if tokens is None else f' ({tokens:,} real tokens)'}; {_plural(len(names), 'layer')}: "
              f"{_layer_list(units)}", file=sys.stderr)
    options = {"seed": args.seed, "max_rows": flags["max_rows"], "unit_axis": unit_axis, "output": output,
               "mask": mask}
    estimate = None
    if not args.quiet or choice.note is not None:  # a budget's change is reported even with --quiet
        measured = (f"widthlab: measuring {', '.join(perturbations)} × {_plural(choice.levels, 'level')} × "
                    f"{_plural(choice.samplings, 'sampling')}")
        if examples is None:  # a stream of unknown length: no count to fit, nor to estimate
            print(f"{measured} on every example", file=sys.stderr)
        else:
            budget = choice.note or (f"within --max-evaluations {flags['budget']:,}" if flags["budget"] else "no --max-evaluations")
            analysed = estimate_evaluations(examples, jobs, choice.levels, choice.samplings, passes)
            count = (f"{choice.evaluations:,} example evaluations" if analysed == choice.evaluations else
                     f"{choice.evaluations:,} example evaluations ({analysed:,} measuring, "
                     f"{choice.evaluations - analysed:,} for --units)")
            when = ""
            if not args.quiet and probe_examples(examples) is not None and _sliceable(inputs):  # never --quiet
                say("estimating the time…")

                def run(n: int, full: bool) -> None:
                    part = first_examples(inputs, n)
                    analyze(model, part, names, perturbations=perturbations,
                            levels=level_sets(choice.levels if full else 2, perturbations),
                            samplings=choice.samplings if full else 1, **options)
                    if full and args.units:  # --units measured as it will be, without its bars
                        _unit_tables(model, part, names, seed=args.seed, bars=False, unit_axis=unit_axis,
                                     output=output, mask=mask)

                estimate = estimate_seconds(run, examples=examples).seconds(examples)
                when = f"; est. {_duration(estimate)} on this machine"
            print(f"{measured} on {_plural(examples, 'example')}: {count}; {budget}{when}", file=sys.stderr)

    levels = level_sets(choice.levels, perturbations)
    bar = None if args.quiet else tqdm(desc="measuring", unit="eval", file=sys.stderr, dynamic_ncols=True)
    start = time.perf_counter()
    try:
        frame = analyze(model, inputs, names, perturbations=perturbations, levels=levels,
                        samplings=choice.samplings, progress=bar, **options)
    finally:
        if bar is not None:
            bar.close()
    tables = {"analysis": frame}
    if args.units:
        say("measuring each unit (--units)…")
        tables["units"] = _unit_tables(model, inputs, names, seed=args.seed, bars=not args.quiet, unit_axis=unit_axis,
                                       output=output, mask=mask)
    elapsed = time.perf_counter() - start  # the estimate covers --units too: the user waits for both
    say(f"measured in {_duration(elapsed)}" + ("" if estimate is None else f" (estimated {_duration(estimate)})"))
    out = Path(args.out)
    say("writing tables…")
    written = _write_tables(tables, out, args.format)
    say("drawing figures…")
    write_layer_figures(frame, out / "figures")
    table = layer_table(frame)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for line in layer_notes(table, signed):
        print(line)
    print(f"measurements: {written['analysis']}")
    if args.units:
        print(f"units:        {written['units']}")
    if args.cka:
        say("computing CKA (--cka)…")
        print(f"cka:          {_write_cka(model, inputs, names, out, args, unit_axis=unit_axis, mask=mask)}")
    print(f"figures:      {out / 'figures'}")
    return 0


def _sliceable(inputs) -> bool:
    """Whether the time estimate can take the first examples of `inputs` for its probe runs."""
    from widthlab.external import first_examples

    try:
        first_examples(inputs, 2)
    except WidthlabError:
        return False
    return True


def _terminal() -> bool:
    """Whether stderr is a terminal."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _say(quiet: bool):
    """``say(text)``: one ``widthlab: text`` line on stderr, so every phase a user waits for has a name (nothing
    with --quiet)."""
    def say(text: str) -> None:
        if not quiet:
            print(f"widthlab: {text}", file=sys.stderr, flush=True)

    return say


def _check_out(out: Path) -> None:
    """Refuse an --out that cannot take the tables and figures before the measuring, not after it."""
    files.refuse_links(out)  # nothing is written through a link in --out
    for folder in (out, out / "figures"):
        if folder.exists() and not folder.is_dir():
            raise WidthlabError(f"--out: {str(folder)!r} is a file, not a folder; name a folder (it is created if "
                                "missing) or move the file away")


def _write_tables(tables: dict, out: Path, fmt: str) -> dict[str, Path]:
    """Write each ``{name: DataFrame}`` as ``out/name.csv`` (or ``.parquet``), atomically; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    files.refuse_links(out)
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


def _write_cka(model, inputs, names: list[str], out: Path, args: argparse.Namespace, **options) -> Path:
    """``--cka``: the layer × layer CKA of the measured layers (`widthlab.measure.cka`) as ``out/cka.csv`` and its
    heatmap ``out/figures/cka.png``; returns the table's path."""
    from widthlab.measure.cka import cka
    from widthlab.report.figures.cka import write_cka_figure

    table = cka(model, None, inputs, names, **options)
    write_cka_figure(table, out / "figures" / "cka.png")
    return _write_tables({"cka": table}, out, args.format)["cka"]


def _unit_tables(model, inputs, names: list[str], *, seed: int, bars: bool, **options):
    """One `unit_table` per measured layer, stacked, with the layer's name in a first ``layer`` column; `bars`: a
    progress bar per layer."""
    import pandas as pd
    from tqdm import tqdm

    from widthlab.measure.units import unit_table

    frames = []
    for name in names:
        bar = tqdm(desc=f"units of {name}", unit="eval", file=sys.stderr, dynamic_ncols=True) if bars else None
        try:
            table = unit_table(model, inputs, name, seed=seed, progress=bar, **options)
        finally:
            if bar is not None:
                bar.close()
        frames.append(table.drop(columns="layer", errors="ignore").assign(layer=name))
    table = pd.concat(frames, ignore_index=True)
    return table[["layer", *[c for c in table.columns if c != "layer"]]]


def add_analyze_parser(sub) -> None:
    """The ``analyze`` command."""
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
                                                             "unless --max-evaluations lowers it)")
    analyze.add_argument("--max-length", metavar="N", default="128",
                         help="tokens per line of a .txt file; longer lines are truncated (default 128)")
    analyze.add_argument("--layers", help="comma-separated module names (default: the model's unit_layers, "
                                          "else every activation module, e.g. each transformer block's MLP act)")
    analyze.add_argument("--perturbations", default="zero", help="comma-separated (default: zero)")
    analyze.add_argument("--levels", metavar="N",
                         help="evenly spaced levels over each perturbation's range: shares 0-1, noise 0-2σ "
                              "(default 11, fewer when --max-evaluations needs it)")
    analyze.add_argument("--samplings", metavar="S",
                         help="random unit orders per curve (default 3, fewer when --max-evaluations needs it)")
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
    analyze.add_argument("--cka", action="store_true",
                         help="also write cka.csv and figures/cka.png: minibatch linear CKA (debiased) of every "
                              "measured layer with every other, one extra forward pass over the inputs")
    analyze.add_argument("--budget", dest="seconds_budget", help=argparse.SUPPRESS)  # widthlab <= 0.1: seconds
    analyze.add_argument("--max-evaluations", dest="budget", metavar="EVALUATIONS", default=str(DEFAULT_BUDGET),
                         help="example evaluations (one example through the network once) the defaults may take: "
                              "beyond it widthlab lowers the levels, the samplings, then the examples that you did "
                              f"not set, and says so; the same on any machine (default {DEFAULT_BUDGET:,}; 0: off)")
    analyze.add_argument("--seed", type=int, default=0,
                         help="seed of every random choice: the data set, the measurement, and the random weights "
                              "of a hub or hf: model (default 0)")
    analyze.add_argument("--allow-code", action="store_true",
                         help="import the module:function model a checkpoint names, to rebuild it, or run the Python "
                              "files an hf: folder's config.json names (transformers' trust_remote_code); a "
                              "checkpoint or model folder is data, so by default nothing it names runs")
    analyze.add_argument("--quiet", action="store_true", help="no plan and no progress bar")
    analyze.add_argument("--out", default="widthlab-analysis", help="output folder (default: widthlab-analysis)")
    analyze.add_argument("--format", choices=("csv", "parquet"), default="csv", help="table format (default csv)")
    analyze.set_defaults(func=_cmd_analyze, interrupted="the analysis did not finish and nothing is resumed: rerun the "
                                                      "command to measure again")
