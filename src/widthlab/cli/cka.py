"""`widthlab cka STUDY_DIR`: compute (or resume) the CKA pairs of a finished study and store them in it
(`widthlab.study.cka.cka_study`); `widthlab report STUDY_DIR` then draws them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from widthlab.study.config import CKA_PARTS


def _cmd_cka(args: argparse.Namespace) -> int:
    from widthlab.cli.analyze import _int_arg
    from widthlab.study.cka import cka_spec, cka_study

    parts = tuple(p.strip() for p in args.parts.split(",")) if args.parts else CKA_PARTS
    batch_size = _int_arg(args.batch_size or "256", "--batch-size", 4)
    max_examples = _int_arg(args.max_examples or "2048", "--max-examples", 4)
    cka_spec(parts, batch_size=batch_size, max_examples=max_examples)  # a typo costs nothing

    def progress(kind, run_a, run_b, table):
        pair = run_a if kind == "layers" else f"{run_a} vs {run_b}"
        if table is None:
            print(f"{kind} {pair}: already stored")
        elif kind == "layers":
            print(f"{kind} {pair}: {table['layer_a'].nunique()} layers")
        else:
            print(f"{kind} {pair}: CKA {table['cka'].mean():.3f} (mean over {len(table)} layers)")

    outcome = cka_study(args.study, parts=parts, batch_size=batch_size, max_examples=max_examples,
                        allow_code=args.allow_code, on_pair=progress)
    print(f"computed {len(outcome.computed)} pair(s), {len(outcome.resumed)} already stored; store: "
          f"{Path(args.study) / 'widthlab.sqlite'} (table cka)")
    if outcome.missing:
        print(f"widthlab: {len(outcome.missing)} done run(s) have no checkpoint; their pairs were not computed: "
              f"{', '.join(outcome.missing[:5])}", file=sys.stderr)
    print(f"report: widthlab report {args.study}")
    return 0


def add_cka_parser(sub) -> None:
    """The ``cka`` command."""
    p = sub.add_parser("cka", help="CKA between the trained runs of a study (widths, replicates, layer x layer), "
                                   "stored in the study (rerun: resumes)")
    p.add_argument("study", help="a study folder written by `widthlab run`")
    p.add_argument("--parts", help=f"comma-separated, of {', '.join(CKA_PARTS)} (default all): widths = each pair "
                                   "of widths, replicate r with replicate r; replicates = each pair of replicates "
                                   "at one width (the baseline); layers = each run's layer x layer matrix")
    p.add_argument("--batch-size", metavar="N", help="examples per CKA batch (default 256, at least 4)")
    p.add_argument("--max-examples", metavar="N",
                   help="the first N examples of the split the study measures on (default 2048)")
    p.add_argument("--allow-code", action="store_true",
                   help="import a module:function model or data set that the stored config names")
    p.set_defaults(func=_cmd_cka, interrupted="pairs computed so far are stored: rerun the command to resume")
