"""Study configuration: YAML → validated `StudyConfig` (unknown keys and bad values are clear errors).

A study is a base config plus a grid: width factors × variants × replicates. A variant is a named override
of the base sections, e.g. ``{"sigma=0.1": {"model": {"sigma": 0.1}}}``. Model and data sections take the
registered family's own options (checked against its signature); a name of the form ``module:function``
imports a user's builder or loader — the only way a config runs code (YAML is read with ``safe_load``).
"""

from __future__ import annotations

import copy
import math
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from widthlab.errors import WidthlabError
from widthlab.measure.perturbations import (
    MAX_SAMPLINGS,
    PERTURBATIONS,
    evenly_spaced_levels,
    level_sets,
)
from widthlab.registry import Registry
from widthlab.study.yaml_io import apply_overrides, read_yaml
from widthlab.threads import THREADS_PER_CORE, max_threads
from widthlab.train.config import TrainConfig
from widthlab.validation import ConfigModel

# Bounds on the grid: widths × variants × candidates × replicates runs are planned (and validated) up front, so a
# typo such as replicates: 99999999999999999999999 would plan forever.
MAX_REPLICATES = 1_000
MAX_CANDIDATES = 1_000  # a selection's candidates are compared pairwise for repeats
MAX_RUNS = 100_000


class _Strict(ConfigModel):
    pass


class ModelSpec(BaseModel):
    """``name`` of a registered family (or ``module:function``), ``init``, ``sigma``; other keys are the
    family's architecture options (e.g. ``input_dim``)."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    name: str = "mlp"
    init: str = "glorot_normal"
    sigma: float | None = None

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        from widthlab.init_schemes import check_init
        from widthlab.models.registry import MODELS

        check_init(self.init, self.sigma)
        reserved = sorted({"width", "num_classes", "seed"} & set(self.options))
        if reserved:
            raise WidthlabError(f"model option(s) {reserved} are set by the study (grid widths, the data set, "
                                "the replicate), not in the model section")
        _check_registered(MODELS, self.name, self.options, "model")
        return self


class DataSpec(BaseModel):
    """``name`` of a registered data set (or ``module:function``), ``root``; other keys are its options."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    name: str = "synthetic"
    root: str | None = None

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _check(self) -> DataSpec:
        from widthlab.data.registry import DATA_SETS

        _check_registered(DATA_SETS, self.name, self.options, "data set")
        return self


def _check_registered(registry: Registry, name: str, options: dict, what: str) -> None:
    """A registered name's options must fit its signature; a ``module:function`` is only checked when run
    (validating a config imports no user code)."""
    from widthlab.registry import check_kwargs

    if ":" not in name:
        check_kwargs(registry.lookup(name), options, f"{what} {name!r}")


Levels = int | tuple[float, ...]  # n evenly spaced levels over the perturbation's range, or the levels themselves


class CkaSpec(_Strict):
    """``measure.cka``: the CKA post-pass over a study's trained runs (`widthlab.study.cka`), off by default.

    ``widths``: every pair of widths of a variant, replicate r with replicate r, corresponding layers;
    ``replicates``: every pair of replicates at each width (the seed-to-seed baseline); ``layers``: each run's
    own layer × layer matrix. ``true`` turns all three on. CKA is computed on the first `max_examples` examples
    of the split the study measures on, in batches of `batch_size` (minibatch debiased CKA, `widthlab.cka`).
    Not part of a run's identity: turning it on for a finished study computes CKA without training again.
    """

    widths: StrictBool = False
    replicates: StrictBool = False
    layers: StrictBool = False
    batch_size: int = Field(256, ge=4)
    max_examples: int = Field(2048, ge=4)

    @model_validator(mode="before")
    @classmethod
    def _all_or_nothing(cls, value: Any) -> Any:
        if isinstance(value, bool):  # measure.cka: true
            return dict(widths=value, replicates=value, layers=value)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError("must be true, false or a mapping of widths, replicates, layers (true/false), "
                             "batch_size, max_examples")
        return value

    @property
    def enabled(self) -> bool:
        return self.widths or self.replicates or self.layers

    def parts(self) -> tuple[str, ...]:
        """The parts turned on, of ``("widths", "replicates", "layers")``."""
        return tuple(part for part in CKA_PARTS if getattr(self, part))


CKA_PARTS = ("widths", "replicates", "layers")


class MeasureSpec(_Strict):
    """What `analyze` measures on each trained model (docs/metrics.md).

    `levels`: an int n gives n evenly spaced levels over each perturbation's range (shares 0 … 1; σ multiples
    0 … 2 for ``act_noise`` and ``weight_noise``); a list gives those levels to every perturbation; a mapping
    perturbation → int or list sets them per perturbation (the others get 11).
    """

    perturbations: tuple[str, ...] = ("zero",)
    levels: Levels | dict[str, Levels] = 11
    samplings: int = Field(3, ge=1, le=MAX_SAMPLINGS)
    max_rows: int | None = Field(None, ge=1)
    split: Literal["train", "val", "test"] = "test"
    cka: CkaSpec = Field(default_factory=CkaSpec)  # a study post-pass, not measured per run (`CkaSpec`)

    @field_validator("perturbations")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [p for p in value if p not in PERTURBATIONS]
        if bad:
            raise ValueError(f"unknown perturbation(s) {bad}; implemented: {', '.join(PERTURBATIONS)}")
        if not value:
            raise ValueError("at least one perturbation is needed (robustness is part of every study)")
        return value

    @field_validator("levels", mode="before")
    @classmethod
    def _not_bool(cls, value: Any) -> Any:
        flags = [v for v in (value.values() if isinstance(value, dict) else [value]) if isinstance(v, bool)]
        if flags:  # YAML's true would otherwise pass as the count 1
            raise ValueError(f"levels must be a count, a list or a mapping of them, got {flags[0]!r}")
        return value

    @model_validator(mode="after")
    def _levels(self) -> MeasureSpec:
        try:
            self.level_sets()
        except WidthlabError as exc:
            raise ValueError(str(exc)) from None
        return self

    def level_sets(self) -> dict[str, list[float]]:
        """The levels of each perturbation (checked by `widthlab.measure.perturbations.level_sets`)."""
        sets = level_sets(self.levels, self.perturbations, default=11, from_zero=True)
        return {name: values.tolist() for name, values in sets.items()}


class SelectSpec(_Strict):
    """Hyperparameter selection per grid cell (the paper's "tuned" / "Best" hyperparameters).

    Every candidate override is trained for every cell (variant × width × replicate); the candidate with the best
    validation accuracy is kept and measured (`measure: all` measures every candidate). Written as

    - ``{train.lr: [1, 0.1, 0.01]}``: a mapping of dotted keys to lists of values, every combination a candidate;
    - ``[{train.lr: 0.1, train.batch_size: 32}, {train.lr: 0.4, train.batch_size: 128}]``: the candidates;
    - ``{candidates: <either>, measure: chosen | all, enabled: true | false}`` (or the options beside the dotted
      keys of the first form); `enabled: false` declares a
      selection that ``widthlab run --select`` turns on (the CNN presets: a full selection multiplies training).
    """

    candidates: tuple[dict[str, Any], ...]
    measure: Literal["chosen", "all"] = "chosen"
    enabled: bool = True

    @model_validator(mode="before")
    @classmethod
    def _forms(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            value = {"candidates": value}
        elif isinstance(value, dict) and "candidates" not in value:  # {train.lr: [...], measure: all}
            options = {k: v for k, v in value.items() if k in ("measure", "enabled")}
            value = {**options, "candidates": {k: v for k, v in value.items() if k not in options}}
        if isinstance(value, dict) and isinstance(value.get("candidates"), dict):
            value = {**value, "candidates": _product(value["candidates"])}
        return value

    @field_validator("candidates")
    @classmethod
    def _candidates(cls, value: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
        if len(value) < 2:
            raise ValueError(f"a selection needs at least two candidates, got {len(value)}")
        if len(value) > MAX_CANDIDATES:
            raise ValueError(f"a selection has {len(value):,} candidates, more than {MAX_CANDIDATES:,} (the bound on "
                             "candidates)")
        for candidate in value:
            if not isinstance(candidate, dict) or not candidate:
                raise ValueError(f"a candidate must be a non-empty mapping of dotted keys to values, got {candidate!r}")
            for key in candidate:
                section = str(key).partition(".")[0]
                if section not in RUN_SECTIONS or "." not in str(key):
                    raise ValueError(f"candidate key {key!r} must be a dotted key in one of {', '.join(RUN_SECTIONS)} "
                                     "(e.g. train.lr)")
        if any(a == b for i, a in enumerate(value) for b in value[:i]):  # 1 and 1.0 are the same candidate
            raise ValueError("candidates repeat")
        if any("train.seed" in c for c in value):
            raise ValueError("train.seed cannot be a candidate: replicate r trains with seed r")
        candidate_labels(value)
        return value


def _product(grid: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of a ``{dotted key: [values]}`` mapping, in the order written."""
    import itertools

    for key, values in grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"select {key!r} needs a non-empty list of candidate values, got {values!r}")
    combinations = math.prod(len(values) for values in grid.values())
    if combinations > MAX_CANDIDATES:  # before they are built: ten keys of ten values are 10**10 candidates
        raise ValueError(f"select's lists make {combinations:,} candidates, more than {MAX_CANDIDATES:,} (the "
                         "bound on candidates)")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def candidate_labels(candidates) -> list[str]:
    """A short name per candidate for run ids and reports: ``lr=0.1`` (the last part of each key, or the whole
    dotted key where two keys share it), joined by ``,``."""
    keys = {k for c in candidates for k in c}
    short = {k: k.rsplit(".", 1)[-1] for k in keys}
    clash = {k for k in keys if sum(short[k] == short[o] for o in keys) > 1}
    labels = [",".join(f"{k if k in clash else short[k]}={v}" for k, v in c.items()) for c in candidates]
    if len(set(labels)) != len(labels):
        raise ValueError(f"candidates give the same name twice: {labels}")
    return labels


def _dotted(override: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys an override mapping sets: ``{"train": {"lr": 1}}`` → ``["train.lr"]``."""
    keys = []
    for key, value in override.items():
        name = f"{prefix}{key}"
        keys += _dotted(value, f"{name}.") if isinstance(value, dict) else [name]
    return keys


def unflatten(candidate: dict[str, Any]) -> dict[str, Any]:
    """``{"train.lr": 0.1}`` → ``{"train": {"lr": 0.1}}`` (an override that `deep_merge` applies)."""
    out: dict[str, Any] = {}
    for key, value in candidate.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


class GridSpec(_Strict):
    """Width factors × variants × replicates (replicate r trains with seed r), and optionally a selection of
    hyperparameters per cell (`SelectSpec`)."""

    widths: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    replicates: int = Field(3, ge=1, le=MAX_REPLICATES)
    variants: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"default": {}})
    select: SelectSpec | None = None

    @property
    def selecting(self) -> bool:
        """Whether runs select among candidates (a selection declared and enabled)."""
        return self.select is not None and self.select.enabled

    @field_validator("widths")
    @classmethod
    def _widths(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value:
            raise ValueError("at least one width is needed")
        for w in value:
            if not math.isfinite(w) or w <= 0:
                raise ValueError(f"width must be a positive number, got {w}")
            if not MIN_WIDTH <= w <= MAX_WIDTH:
                raise ValueError(f"width {w:g} is outside {MIN_WIDTH:g} … {MAX_WIDTH:g} (1/1024x … 1024x of the base "
                                 "network; the paper's family is 1/4x … 4x)")
        if len(set(value)) != len(value):
            raise ValueError(f"widths repeat: {list(value)}")
        return value

    @field_validator("widths")
    @classmethod
    def _distinct_run_names(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        # Widths that print alike would give two runs one run id; the store would then call the second a change.
        named: dict[str, float] = {}
        for w in value:
            tag = width_tag(w)
            if tag in named:
                raise ValueError(f"widths {named[tag]!r} and {w!r} both name runs {tag!r}; use widths that differ in "
                                 "their first 6 significant digits")
            named[tag] = w
        return value

    @field_validator("variants")
    @classmethod
    def _variants(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if not value:
            raise ValueError("at least one variant is needed (use {default: {}} for none)")
        for name, override in value.items():
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"variant name {name!r} must be a non-empty string")
            check_no_control(name, "variant name")
            if not isinstance(override, dict):
                raise ValueError(f"variant {name!r} must be a mapping of overrides, got {override!r}")
            bad = sorted(set(override) - set(RUN_SECTIONS))
            if bad:
                raise ValueError(f"variant {name!r} overrides {bad}; a variant may override: {', '.join(RUN_SECTIONS)}")
        return value


def width_tag(width: float) -> str:
    """A width as run ids spell it (``w0.25``): 6 significant digits."""
    return f"w{width:g}"


RUN_SECTIONS = ("data", "model", "train", "measure")
# The zoo's CIFAR-10 / ImageNet networks: on digits they run as a demo of the paper's experiment.
PAPER_IMAGE_MODELS = {"alexnet_cifar", "resnet56_cifar", "resnet18_imagenet", "inception_v3", "inception_v3_mixed5d"}
DIGITS_CAVEAT = ("digits stand in for the paper's image data (scikit-learn's 1,797 8×8 handwritten digits, "
                 "resized): a demonstration, not the paper's experiment")
MIN_WIDTH, MAX_WIDTH = 2.0 ** -10, 2.0 ** 10


def check_no_control(name: str, what: str) -> str:
    """`name` when it holds no control character (a newline, a tab, an escape sequence): names reach the log,
    file names and terminals, where ``"x\\ntouch /tmp/P"`` would forge a line of its own."""
    bad = sorted({c for c in name if unicodedata.category(c) == "Cc"})
    if bad:
        raise ValueError(f"{what} {name!r} holds control character(s) {', '.join(repr(c) for c in bad)}; use "
                         "printable characters only")
    return name


def check_path_name(name: object, what: str) -> str:
    """`name` when it can name one file or folder inside a study directory: no path separator, not '.' or '..'.

    A study's name becomes its folder (``widthlab-runs/NAME``): a name such as ``../../x`` or ``/tmp/x`` would
    write outside it. (Variant names may hold '/', as the paper's ``k=1/4``: their file names are escaped,
    `widthlab.files.file_name`.)
    """
    if not isinstance(name, str) or not name.strip() or name in (".", "..") or any(c in name for c in "/\\\0") \
            or name != name.strip():
        raise ValueError(f"{what} {name!r} must be a plain name (letters, digits, '-', '_', '.', '=' ...; no '/', "
                         "'\\', surrounding spaces, '.' or '..'): it names a file inside the study folder")
    return check_no_control(name, what)


# A study's name is its folder's name (``widthlab-runs/NAME``): file systems take names of at most 255 bytes, and
# this leaves room for what may be added to it (a copy's ``-2``, a backup's ``.bak``, a temporary suffix).
MAX_NAME_BYTES = 200


def check_name_length(name: str, what: str) -> str:
    """`name` when its UTF-8 encoding fits in `MAX_NAME_BYTES`, else a ValueError giving its length and the limit."""
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES:
        raise ValueError(f"{what} is {size} bytes long; at most {MAX_NAME_BYTES} (it names a folder, and file names "
                         "hold at most 255 bytes)")
    return name


class StudyConfig(_Strict):
    """A whole study. `seed` fixes the data (e.g. the teacher); replicate r fixes the student's seed."""

    name: str
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name_length(check_path_name(value, "study name"), "study name")
    figure: str = ""  # the paper figure this reproduces, if any
    # Why this study's verdict may mean nothing, written beside it (a smoke run, a stand-in data set).
    caveats: tuple[str, ...] = ()
    seed: int = 0
    # torch threads per run, pinned so that results do not depend on the executor or the machine's core count
    threads: int = Field(1, ge=1)
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    train: TrainConfig = Field(default_factory=TrainConfig)
    measure: MeasureSpec = Field(default_factory=MeasureSpec)
    grid: GridSpec = Field(default_factory=GridSpec)

    def variant_sections(self, variant: str, candidate: dict[str, Any] | None = None) -> dict[str, Any]:
        """The base sections with `variant`'s overrides (then a selection `candidate`'s) merged in, validated."""
        base = self.model_dump(include=set(RUN_SECTIONS))
        merged = deep_merge(base, self.grid.variants[variant])
        if candidate:
            merged = deep_merge(merged, unflatten(candidate))
        where = f"variant {variant!r}" + (f", candidate {candidate}" if candidate else "")
        sections = {}
        for section, cls in (("data", DataSpec), ("model", ModelSpec), ("train", TrainConfig), ("measure", MeasureSpec)):
            try:
                sections[section] = cls(**merged[section])
            except ValidationError as exc:
                raise WidthlabError(f"{where}: {section}.{_first_error(exc)}") from None
        return sections

    @field_validator("threads")
    @classmethod
    def _threads(cls, value: int) -> int:
        if value > max_threads():
            raise ValueError(f"must be at most {max_threads():,} ({THREADS_PER_CORE} per core of this machine's "
                             f"{max_threads() // THREADS_PER_CORE}: the bound on threads)")
        return value

    @model_validator(mode="after")
    def _variants_valid(self) -> StudyConfig:
        grid = self.grid
        counts = [len(grid.widths), len(grid.variants), len(grid.select.candidates) if grid.selecting else 1,
                  grid.replicates]
        if math.prod(counts) > MAX_RUNS:
            raise WidthlabError(f"the grid is {math.prod(counts):,} runs ({counts[0]:,} widths × {counts[1]:,} "
                                f"variants × {counts[2]:,} candidates × {counts[3]:,} replicates), more than "
                                f"{MAX_RUNS:,} (the bound on the grid size)")
        candidates = self.grid.select.candidates if self.grid.select is not None else ()
        keys = {key for candidate in candidates for key in candidate}
        on_digits = set()  # the models the variants train on digits
        for variant, override in self.grid.variants.items():
            sections = self.variant_sections(variant)  # a bad variant is named alone, before any candidate
            if sections["data"].name == "digits":
                on_digits.add(sections["model"].name)
            clash = sorted(keys & set(_dotted(override)))
            if clash:  # the candidate would silently replace what the variant sets
                raise WidthlabError(f"variant {variant!r} sets {clash}, which grid.select also chooses; a variant and "
                                    "the selection must set different keys")
            for candidate in candidates:
                self.variant_sections(variant, candidate)
        # A paper CNN trained on digits is a demo, not the paper's experiment: say so beside its verdict.
        if on_digits & PAPER_IMAGE_MODELS and not any("digits stand in" in c for c in self.caveats):
            object.__setattr__(self, "caveats", (*self.caveats, DIGITS_CAVEAT))
        return self


class Selection(_Strict):
    """A selection candidate's place in its grid cell: the cell, the candidate's name, its dotted overrides."""

    cell: str
    candidate: str
    overrides: dict[str, Any]


class RunConfig(_Strict):
    """Everything one run builds, trains and measures, resolved from a `StudyConfig` by `plan_runs`: a run is a
    pure function of it. The store keeps it as `stored()` (JSON) and reads it back with `from_stored`.

    `measure.levels` is spelled out per perturbation (`resolve_levels`), so what a run measured never depends on
    how a later version reads a count; `train.seed` is the replicate.
    """

    study_seed: int
    threads: int = Field(ge=1)
    width: float
    replicate: int = Field(ge=0)
    data: DataSpec
    model: ModelSpec
    train: TrainConfig
    measure: MeasureSpec
    select: Selection | None = None  # with grid.select: the candidate this run is

    def stored(self) -> dict:
        """The JSON-ready mapping the store keeps (``select`` only for a selection candidate)."""
        out = self.model_dump(mode="json")
        if self.select is None:
            del out["select"]
        del out["measure"]["cka"]  # a study post-pass over trained runs: turning it on retrains nothing
        return out

    def identity(self) -> dict:
        """What makes two runs the same: `stored()` without the speed switches (`TrainConfig.identity`)."""
        return {**self.stored(), "train": self.train.identity()}

    @classmethod
    def from_stored(cls, stored: dict) -> RunConfig | None:
        """A stored run config read with this version's defaults filled in; None when it no longer validates or
        no longer means the same. Rerunning a study after an upgrade that added a field therefore does not count
        as a changed study.

        Earlier versions stored `levels` as given, and a count n then meant shares 0 … 1 for every perturbation;
        it is read that way here, so a stored study with a noise perturbation (now 0 … 2σ for a count) matches an
        explicit list of its old levels and not a count.
        """
        try:
            measure = dict(stored["measure"])
            count = measure.get("levels")
            if isinstance(count, int) and not isinstance(count, bool):
                old = evenly_spaced_levels(count, "zero").tolist()  # shares 0 … 1
                measure["levels"] = dict.fromkeys(measure["perturbations"], old)
            return cls(**{**stored, "measure": resolve_levels(MeasureSpec(**measure))})
        except (ValidationError, WidthlabError, KeyError, TypeError, AttributeError):
            return None


def resolve_levels(spec: MeasureSpec) -> MeasureSpec:
    """`spec` with its levels spelled out per perturbation (`MeasureSpec.level_sets`)."""
    return MeasureSpec(**{**spec.model_dump(), "levels": spec.level_sets()})


def run_identity(stored: dict) -> dict | None:
    """`RunConfig.identity` of a stored run config, None when it no longer reads (the store's comparison)."""
    config = RunConfig.from_stored(stored)
    return None if config is None else config.identity()


def deep_merge(base: dict, override: dict) -> dict:
    """A copy of `base` with `override` merged in, recursively for nested mappings."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _first_error(exc: ValidationError) -> str:
    """A pydantic validation error as one line: the key and what is wrong with its value."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"unknown key {loc!r}"
    shown = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
    if err["type"] in ("tuple_type", "list_type") and isinstance(err.get("input"), str):
        # `--set grid.widths=0.5,1`: YAML reads a bare comma list as one string; say how to write a list.
        items = ", ".join(part.strip() for part in err["input"].split(","))
        shown += f"; write a list in brackets, quoted for the shell: --set '{loc}=[{items}]'"
    return f"{loc}: {msg}{shown}" if loc else msg


def validated(cls: type[BaseModel], raw: Mapping[str, Any], source: str):
    """``cls(**raw)``, its first validation error (or a key that is not a name) one WidthlabError after `source`."""
    try:
        return cls(**raw)
    except ValidationError as exc:
        raise WidthlabError(f"{source}: {_first_error(exc)}") from None
    except TypeError as exc:
        raise WidthlabError(f"{source}: {exc}") from None


def parse_config(raw: Any, source: str = "config") -> StudyConfig:
    """Validate a raw mapping into a `StudyConfig`, turning the first validation error into one line."""
    if not isinstance(raw, dict):
        raise WidthlabError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    return validated(StudyConfig, raw, source)


def load_config(spec: str | Path | dict | StudyConfig, overrides: list[str] | None = None) -> StudyConfig:
    """A `StudyConfig` from a preset name, a YAML path, a mapping or a config; `overrides` as for ``--set``.

    Example: the preset with one replicate per width:
        >>> config = load_config("mlp-10d", ["grid.replicates=1"])
        >>> config.name, config.grid.widths, config.grid.replicates
        ('mlp-10d', (0.25, 0.5, 1.0, 2.0, 4.0), 1)
    """
    if isinstance(spec, StudyConfig):
        if not overrides:
            return spec
        raw, source = spec.model_dump(), spec.name
    elif isinstance(spec, dict):
        raw, source = spec, "config"
    else:
        from widthlab.presets import list_presets, preset_path

        text = str(spec)
        if text in list_presets():
            raw, source = read_yaml(preset_path(text)), f"preset {text!r}"
        elif text.endswith((".yaml", ".yml")) or Path(text).exists():
            raw, source = read_yaml(text), str(text)
        else:
            raise WidthlabError(f"{text!r} is neither a preset ({', '.join(list_presets())}) nor a YAML file")
    return parse_config(apply_overrides(raw, overrides or []), source)
