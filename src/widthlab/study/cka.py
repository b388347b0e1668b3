"""CKA in a study: linear CKA between the trained runs of a study, stored beside its other results.

The paper asks whether a wider network is the narrower one with redundant units added. `similarity` (|r|) asks
it unit by unit inside one layer; CKA (`widthlab.cka`) asks it of whole layers, across widths: if width only adds
redundancy, a layer of the 1x network and the same layer of the 4x network should be about as similar as the
same layer of two 4x networks trained from different seeds (the seed-to-seed baseline). Per variant, three kinds
of pairs (``measure.cka`` turns each on, `widthlab cka STUDY_DIR` computes them for a finished study):

- ``widths``: every pair of widths, replicate r at width a with replicate r at width b (replicate-matched), the
  corresponding layers (same name) only; ``run_a`` is the narrower run;
- ``replicates``: at each width, every pair of replicates (``run_a`` the lower replicate), corresponding layers:
  the baseline a widths pair is read against;
- ``layers``: each run with itself, every layer × every layer (its block structure; the diagonal is 1).

Each run's model is rebuilt from its checkpoint (``checkpoints/RUN_ID.pt``, loaded with ``weights_only=True``)
and fed the first `max_examples` examples of the split the study measures on, on the CPU, in batches of
`batch_size` (minibatch debiased CKA). The rows go into the store's ``cka`` table, one transaction per pair,
under the study lock, so an interrupted pass loses at most the pair in progress and a second pass with the same
setting computes only the pairs missing (resume); a pair stored with another setting is computed again and
replaced. A run measured again loses its pairs (`Store.finish`).
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pydantic import ValidationError

from widthlab import files
from widthlab.errors import WidthlabError
from widthlab.study.config import CKA_PARTS, CkaSpec, _first_error

log = logging.getLogger("widthlab")

CHECKPOINTS = "checkpoints"  # as `widthlab.study.runner` writes them
KINDS = {"widths": "widths", "replicates": "replicates", "layers": "layers"}  # part of CkaSpec -> stored kind
MODELS_KEPT = 4  # models rebuilt from checkpoints kept in memory at once (a widths pair and the next pair's)


@dataclass
class CkaStudy:
    """What `cka_study` returns.

    Attributes:
        rows: the store's cka rows (every pair computed so far, before this call included), as
            `load_results(dir).cka` holds them.
        computed: (kind, run_a, run_b) computed by this call.
        resumed: (kind, run_a, run_b) already stored with this setting, not computed again.
        missing: done runs whose checkpoint is gone (their pairs cannot be computed; nothing is stored).
    """

    rows: pd.DataFrame
    computed: list[tuple[str, str, str]] = field(default_factory=list)
    resumed: list[tuple[str, str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def cka_spec(parts: Iterable[str] | str = CKA_PARTS, *, batch_size: int = 256, max_examples: int = 2048) -> CkaSpec:
    """The `CkaSpec` of `cka_study`'s arguments; a bad one is one WidthlabError (checked before anything is read)."""
    parts = (parts,) if isinstance(parts, str) else tuple(parts)
    bad = [p for p in parts if p not in CKA_PARTS]
    if bad or not parts:
        raise WidthlabError(f"unknown CKA part {bad[0]!r}; valid: {', '.join(CKA_PARTS)}" if bad else
                            f"name at least one CKA part of {', '.join(CKA_PARTS)}")
    try:
        return CkaSpec(**dict.fromkeys(parts, True), batch_size=batch_size, max_examples=max_examples)
    except ValidationError as exc:
        raise WidthlabError(f"cka: {_first_error(exc)}") from None


def cka_study(study_dir: str | os.PathLike, *, parts: Iterable[str] | str = CKA_PARTS, batch_size: int = 256,
              max_examples: int = 2048, allow_code: bool = False,
              on_pair: Callable[[str, str, str, pd.DataFrame | None], None] | None = None) -> CkaStudy:
    """Compute and store the CKA pairs of every variant of the finished (or partly finished) study in `study_dir`.

    Args:
        study_dir: a study folder written by `widthlab run` (holding widthlab.sqlite and checkpoints/).
        parts: which pairs, of ``"widths"``, ``"replicates"``, ``"layers"`` (default all three; see the module doc).
        batch_size: examples per CKA batch (default 256, at least 4).
        max_examples: the first examples of the measurement split used (default 2048).
        allow_code: import a ``module:function`` model or data set the stored config names (default False).
        on_pair: called as ``on_pair(kind, run_a, run_b, table)`` after each pair (`table` None: resumed).

    Returns a `CkaStudy`. A second call with the same setting computes nothing again.

    Example: the study's pairs of widths (1/4x against 1/2x, per replicate), beside its replicates and layers:
        >>> study = cka_study("widthlab-runs/mlp-10d")
        >>> study.rows.query("kind == 'widths'")[["run_a", "run_b"]].values.tolist()
        [['default-w0.25-r0', 'default-w0.5-r0'], ['default-w0.25-r1', 'default-w0.5-r1']]
        >>> sorted(load_results("widthlab-runs/mlp-10d").cka["kind"].unique())
        ['layers', 'replicates', 'widths']
    """
    from widthlab.compress.study import check_study_dir
    from widthlab.study.store import Store, study_lock

    spec = cka_spec(parts, batch_size=batch_size, max_examples=max_examples)
    directory = Path(study_dir)
    check_study_dir(directory)
    with study_lock(directory), Store(directory, create=False) as store:
        return study_cka(store, directory, spec, import_code=allow_code, on_pair=on_pair)


def done_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs a report counts: done, and of a selection's candidates only the chosen ones."""
    done = runs[runs["status"] == "done"]
    candidate = done["cell"].notna() if "cell" in done.columns else pd.Series(False, index=done.index)
    chosen = done["chosen"].astype(float) == 1 if "chosen" in done.columns else candidate
    return done[~candidate | chosen]


def plan_pairs(runs: pd.DataFrame, spec: CkaSpec) -> list[tuple[str, str, str]]:
    """``(kind, run_a, run_b)`` of one variant's done runs (`runs`), as the module doc says."""
    by_cell = {(float(r.width), int(r.replicate)): r.run_id for r in runs.itertuples(index=False)}
    widths = sorted({w for w, _ in by_cell})
    pairs = []
    if spec.layers:
        pairs += [("layers", run_id, run_id) for _, run_id in sorted(by_cell.items())]
    if spec.replicates:
        for width in widths:
            reps = sorted(r for w, r in by_cell if w == width)
            pairs += [("replicates", by_cell[width, a], by_cell[width, b])
                      for i, a in enumerate(reps) for b in reps[i + 1:]]
    if spec.widths:
        for i, narrow in enumerate(widths):
            for wide in widths[i + 1:]:
                pairs += [("widths", by_cell[narrow, r], by_cell[wide, r]) for w, r in sorted(by_cell)
                          if w == narrow and (wide, r) in by_cell]
    return pairs


def study_cka(store, directory: Path, specs: CkaSpec | Mapping[str, CkaSpec], *, import_code: bool,
              on_pair: Callable[[str, str, str, pd.DataFrame | None], None] | None = None,
              run_ids: Iterable[str] | None = None) -> CkaStudy:
    """`cka_study`'s pass in an open `Store` whose study lock the caller holds (`run_study` calls it after the
    runs). `specs`: one `CkaSpec` for every variant, or one per variant (a variant not named: nothing);
    `run_ids`: only these runs (default every stored run; `run_study` names its grid's)."""
    from torch.utils.data import Subset

    from widthlab.compress.study import _run_inputs
    from widthlab.measure.cka import cka
    from widthlab.study.build import checkpoint_model
    from widthlab.train.checkpoint import load_checkpoint

    outcome = CkaStudy(rows=pd.DataFrame())
    runs = done_runs(store.runs())
    if run_ids is not None:
        runs = runs[runs["run_id"].isin(set(run_ids))]
    stored = store.cka_settings()
    configs = {r.run_id: json.loads(r.config) for r in runs.itertuples(index=False)}
    models: OrderedDict = OrderedDict()
    data_cache: dict = {}
    gone: set[str] = set()

    def model(run_id: str):
        if run_id in models:
            models.move_to_end(run_id)
            return models[run_id]
        # a name made safe for a file (`files.file_name`), inside checkpoints/, whose links the study lock refused
        path = directory / CHECKPOINTS / f"{files.file_name(run_id)}.pt"
        if not path.is_file():
            return None
        built = checkpoint_model(load_checkpoint(path), str(path), import_code=import_code).eval()
        models[run_id] = built
        while len(models) > MODELS_KEPT:
            models.popitem(last=False)
        return built

    for variant, group in runs.groupby("variant", sort=False):
        spec = specs if isinstance(specs, CkaSpec) else specs.get(variant)
        if spec is None or not spec.enabled:
            continue
        for kind, run_a, run_b in plan_pairs(group, spec):
            config = configs[run_a]
            split = str((config.get("measure") or {}).get("split", "test"))
            setting = (split, spec.max_examples, spec.batch_size)
            key = (kind, run_a, run_b)
            if stored.get((run_a, run_b, kind)) == setting:
                outcome.resumed.append(key)
                if on_pair is not None:
                    on_pair(kind, run_a, run_b, None)
                continue
            model_a, model_b = model(run_a), model(run_b)
            lost = [run for run, m in ((run_a, model_a), (run_b, model_b)) if m is None]
            if lost:
                for run in sorted(set(lost) - gone):
                    log.warning("run %s is done but its checkpoint is gone: its CKA pairs are not computed", run)
                gone.update(lost)
                continue
            _, evaluation, split = _run_inputs(config, import_code, data_cache)
            inputs = Subset(evaluation, range(min(len(evaluation), spec.max_examples)))
            table = cka(model_a, None if kind == "layers" else model_b, inputs, batch_size=spec.batch_size)
            if kind != "layers":  # corresponding layers only
                table = table[table["layer_a"] == table["layer_b"]].reset_index(drop=True)
                if table.empty:
                    raise WidthlabError(f"runs {run_a} and {run_b} share no layer name to compare")
            rows = [dict(r._asdict(), split=split, max_examples=spec.max_examples, batch_size=spec.batch_size)
                    for r in table.itertuples(index=False)]
            store.add_cka(run_a, run_b, kind, rows)
            outcome.computed.append(key)
            if on_pair is not None:
                on_pair(kind, run_a, run_b, table)
    outcome.missing = sorted(gone)
    outcome.rows = store.results().cka
    return outcome
