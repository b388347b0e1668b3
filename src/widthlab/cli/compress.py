"""`widthlab compress`: shrink a trained model by merging or pruning units, and write the smaller model and the
table that verifies it (accuracy and agreement with the original's predictions before and after); or, given a
study folder, find the compressed width of every done run and store it in the study (`compress_study`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from widthlab import files
from widthlab.errors import WidthlabError


def _number(text: str, flag: str) -> int | float:
    """A count (``64``) or a share (``0.5``), as written."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise WidthlabError(f"{flag} expects a count (e.g. 64), a share in (0, 1] (e.g. 0.5) or LAYER=VALUE pairs "
                            f"separated by commas, got {text!r}") from None


def parse_keep(text: str | None):
    """``--keep``: one count or share for every layer, or ``layer=value,layer=value``."""
    if text is None:
        return None
    if "=" not in text:
        return _number(text.strip(), "--keep")
    keep = {}
    for item in text.split(","):
        layer, sep, value = item.partition("=")
        if not sep or not layer.strip():
            raise WidthlabError(f"--keep expects LAYER=VALUE pairs separated by commas, got {item!r}")
        keep[layer.strip()] = _number(value.strip(), "--keep")
    return keep


def _inputs(args: argparse.Namespace, split: str):
    """The named split of `--data` (with its options), or of the data set of the study that wrote the checkpoint."""
    from widthlab.cli.analyze import _parse_options
    from widthlab.external import load_inputs, study_data

    options = _parse_options(args.data_opt, "--data-opt")
    if args.data is not None:
        return load_inputs(args.data, split=split, seed=args.seed, root=args.root, options=options, model=args.model)
    name, recorded, seed = study_data(args.model)
    saved_root = recorded.pop("root")
    recorded.update(options)
    return load_inputs(name, split=split, seed=seed, root=args.root or saved_root, options=recorded)


def _max_drop(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        raise WidthlabError(f"--max-drop expects a share of examples in [0, 1], got {text!r}") from None


def _cmd_compress_study(args: argparse.Namespace) -> int:
    """`widthlab compress STUDY_DIR`: every done run's compressed width, stored in the study (resumable)."""
    from widthlab.cli.analyze import _int_arg
    from widthlab.compress.study import check_settings, compress_study

    # A study brings its own model, data and splits; a flag for one checkpoint would be silently ignored.
    given = [flag for flag, value in (("--keep", args.keep), ("--data", args.data), ("--data-opt", args.data_opt),
                                      ("--root", args.root), ("--split", args.split),
                                      ("--calibration-split", args.calibration_split), ("--layers", args.layers),
                                      ("--out", args.out), ("--seed", args.seed)) if value is not None]
    if given:
        raise WidthlabError(f"{given[0]} applies to one checkpoint, not to a study folder: a study is compressed per "
                            "unit layer at --max-drop, calibrated on its training split and evaluated on the split it "
                            "measures on, and stored in its own store")
    max_drop = _max_drop(args.max_drop)
    max_drop = 0.01 if max_drop is None else max_drop
    methods = tuple(m.strip() for m in args.method.split(",")) if args.method else ("prune", "merge")
    importance = args.importance or "ablation"
    max_examples = _int_arg(args.max_examples or "2048", "--max-examples", 1)
    check_settings(max_drop, methods, importance, max_examples)

    def progress(run_id, method, table):
        if table is None:
            print(f"{run_id} {method}: already stored")
        else:
            kept = ", ".join(f"{r.layer} {r.units_after}/{r.units_before}" for r in table.itertuples(index=False))
            row = table.iloc[0]
            print(f"{run_id} {method}: {kept} (accuracy {row.accuracy_before:.4g} -> {row.accuracy_after:.4g})")

    outcome = compress_study(args.model, max_drop=max_drop, methods=methods, importance=importance,
                             max_examples=max_examples, allow_code=args.allow_code, on_run=progress)
    print(f"compressed {len(outcome.compressed)} run × method pair(s), {len(outcome.resumed)} already stored; "
          f"store: {Path(args.model) / 'widthlab.sqlite'} (table compression)")
    if outcome.missing:
        print(f"widthlab: {len(outcome.missing)} done run(s) have no checkpoint and were not compressed: "
              f"{', '.join(outcome.missing[:5])}", file=sys.stderr)
    print(f"report: widthlab report {args.model}")
    return 0


def _cmd_compress(args: argparse.Namespace) -> int:
    from widthlab.cli.analyze import _int_arg
    from widthlab.compress import IMPORTANCES, METHODS, compress
    from widthlab.external import load_model, trial_run

    if Path(args.model).is_dir():
        return _cmd_compress_study(args)
    args.method = args.method or "merge"
    args.importance = args.importance or "ablation"
    args.max_examples = args.max_examples or "2048"
    args.split = args.split or "test"
    args.calibration_split = args.calibration_split or "train"
    args.seed = 0 if args.seed is None else args.seed
    args.out = args.out or "widthlab-compressed"
    if args.method not in METHODS:  # before the model and data load: a typo costs nothing
        raise WidthlabError(f"unknown method {args.method!r}; valid methods: {', '.join(METHODS)}")
    if args.importance not in IMPORTANCES:
        raise WidthlabError(f"unknown importance {args.importance!r}; valid: {', '.join(IMPORTANCES)}")
    keep = parse_keep(args.keep)
    max_drop = _max_drop(args.max_drop)
    if (keep is None) == (max_drop is None):
        raise WidthlabError("give exactly one of --keep (units to keep) and --max-drop (the largest accuracy drop "
                            "allowed)")
    max_examples = _int_arg(args.max_examples, "--max-examples", 1)
    out = Path(args.out)
    files.refuse_links(out)
    if out.exists() and not out.is_dir():
        raise WidthlabError(f"--out: {str(out)!r} is a file, not a folder; name a folder (it is created if missing)")
    model = load_model(args.model, seed=args.seed, allow_code=args.allow_code)
    calibration = _inputs(args, args.calibration_split)
    evaluation = _inputs(args, args.split)
    trial_run(model, evaluation, args.model, mask=None)
    layers = [name.strip() for name in args.layers.split(",")] if args.layers else None
    result = compress(model, calibration, layers, keep=keep, max_drop=max_drop, method=args.method,
                      importance=args.importance, eval_inputs=evaluation, max_examples=max_examples,
                      seed=args.seed)
    out.mkdir(parents=True, exist_ok=True)
    files.refuse_links(out)
    checkpoint = result.save(out / "compressed.pt")
    table = result.to_csv(out / "compression.csv")
    shown = result.table.drop(columns=["importance"])
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"compressed model: {checkpoint}")
    print(f"table:            {table}")
    if result.spec is None:
        print("widthlab: the model is not from widthlab's zoo: load it with load_compressed(path, build=...)",
              file=sys.stderr)
    return 0


def add_compress_parser(sub) -> None:
    """The ``compress`` command."""
    p = sub.add_parser("compress", help="shrink a trained model by merging or pruning units, verified on data; or "
                                        "store the compressed width of every run of a study")
    # Defaults that differ between one checkpoint and a study folder are None here and resolved per mode.
    p.add_argument("model", help="a widthlab checkpoint (.pt) or module:function returning an nn.Module; or a study "
                                 "folder: every done run is compressed at --max-drop (default 0.01) by prune and "
                                 "merge and stored in the study (rerun: resumes)")
    p.add_argument("--data", help="a registered data set (e.g. synthetic, digits, cifar10) or a .pt file of "
                                  "tensors (default: the data set of the study that wrote the checkpoint)")
    p.add_argument("--data-opt", action="append", metavar="KEY=VALUE", help="data set option, repeatable")
    p.add_argument("--root", help="data folder (default: $WIDTHLAB_DATA)")
    p.add_argument("--split", help="split the table's accuracy and agreement are measured on "
                                                   "(default test)")
    p.add_argument("--calibration-split",
                   help="split the activity regressions and importances are measured on (default train)")
    p.add_argument("--max-examples", metavar="N",
                   help="calibration examples (the first N of the calibration split; default 2048)")
    p.add_argument("--layers", help="comma-separated module names (default: the model's unit_layers)")
    p.add_argument("--keep", help="units to keep per layer: a count (64), a share (0.5) or LAYER=VALUE,... pairs")
    p.add_argument("--max-drop", metavar="SHARE",
                   help="instead of --keep: the fewest units per layer at which accuracy (agreement without labels) "
                        "falls by at most SHARE")
    p.add_argument("--method", help="merge (fold removed units into the kept ones) or prune (default merge; for a "
                                    "study, comma-separated, default prune,merge)")
    p.add_argument("--importance", help="ablation, magnitude or random (default ablation)")
    p.add_argument("--seed", type=int, help="seed of the data set and of random importance (default 0)")
    p.add_argument("--allow-code", action="store_true",
                   help="import the module:function model a checkpoint names, to rebuild it")
    p.add_argument("--out", help="output folder (default: widthlab-compressed)")
    p.set_defaults(func=_cmd_compress, interrupted="nothing was written: rerun the command to compress again")
