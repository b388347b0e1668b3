"""Training checkpoints: everything needed to resume a run bit-for-bit, written atomically.

A checkpoint holds the model and optimiser state, the epoch, the history, the best-epoch bookkeeping, the
global RNG state (dropout), the training config, the caller's metadata (how to rebuild the model), package
versions and the git revision. It is written to a temporary file and renamed over the old one, so a crash
at any moment leaves either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import os
import pickle
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch
from torch.torch_version import TorchVersion

from widthlab.errors import WidthlabError
from widthlab.files import write_error
from widthlab.version import __version__

FORMAT = "widthlab-checkpoint-1"


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on."""
    import numpy

    return {"widthlab": __version__, "torch": str(torch.__version__), "numpy": numpy.__version__,
            "python": platform.python_version()}


def git_revision() -> str | None:
    """The git revision of the widthlab source tree, when it is a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save({"format": FORMAT, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports a failed write as a RuntimeError
        tmp.unlink(missing_ok=True)
        error = write_error(path, exc)
        if error is None:
            raise
        raise error from None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a widthlab checkpoint; anything else is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise WidthlabError(f"checkpoint {str(path)!r} does not exist")
    try:
        # weights_only: a checkpoint is shared data and must never run code. Every value widthlab writes
        # (tensors, dicts, lists, numbers, strings) loads under it; a pickled object of any other type is refused.
        # Checkpoints of widthlab <= 0.1 stored torch's version as a TorchVersion, a plain str subclass.
        with torch.serialization.safe_globals([TorchVersion]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if "Unsupported global" in line]
        if not lines:  # not a pickle at all (torch says "invalid load key")
            raise WidthlabError(f"{str(path)!r} is not a readable torch file") from None
        first = lines[0].split(" was not")[0].replace("WeightsUnpickler error: ", "")
        raise WidthlabError(f"{str(path)!r} holds objects that only an unsafe load could rebuild ({first}); "
                            "widthlab loads checkpoints with weights_only=True and refuses it") from None
    except Exception as exc:  # torch raises many types for a bad file; all mean the same to the user
        raise WidthlabError(f"{str(path)!r} is not a readable torch file ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise WidthlabError(f"{str(path)!r} is not a widthlab checkpoint (expected format {FORMAT!r})")
    # A checkpoint is shared data and may have been edited: what the code below reads is checked here, once.
    for key, weights, required in (("model", True, True), ("best_state", True, False),
                                   ("train_config", False, False), ("meta", False, False)):
        value = state.get(key)
        ok = isinstance(value, dict) and (not weights or all(isinstance(v, torch.Tensor) for v in value.values()))
        if not ok and (required or value is not None):
            problem = "is missing" if key not in state else \
                f"is not a mapping{' of names to tensors' if weights else ''}"
            raise WidthlabError(f"checkpoint {str(path)!r} is damaged: its {key!r} {problem}; was it edited?")
    return state


def load_resume_point(path: str | os.PathLike) -> dict[str, Any]:
    """`load_checkpoint` of a run's own checkpoint, to resume its training. An unreadable one (torn by a disk
    fault, a copy cut short) is not silently retrained over: the error names the file and the way on."""
    try:
        return load_checkpoint(path)
    except WidthlabError as exc:
        raise WidthlabError(f"cannot resume an unfinished run: {exc}; move that file away (or delete it) and rerun: "
                            "the run then trains from the start") from None


def checkpoint_meta(state: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """A study checkpoint's ``meta`` (how its run rebuilds the model and the data), its fields checked: ``model``
    and ``data`` mappings, ``width`` a positive finite number, ``num_classes`` a positive integer, ``study_seed``
    and ``replicate`` integers. An empty mapping for a checkpoint without one (written by `fit`)."""
    meta = state.get("meta") or {}
    checks = {"model": (lambda v: isinstance(v, dict), "a mapping"), "data": (lambda v: isinstance(v, dict),
                                                                               "a mapping"),
              "width": (lambda v: _number(v) and 0 < v < float("inf"), "a positive number"),
              "num_classes": (lambda v: _integer(v) and v >= 1, "a positive integer"),
              "study_seed": (_integer, "an integer"), "replicate": (lambda v: _integer(v) and v >= 0,
                                                                    "an integer >= 0")}
    for key, (ok, what) in checks.items():
        if key in meta and not ok(meta[key]):
            raise WidthlabError(f"checkpoint {str(path)!r}: meta.{key} must be {what}, got {meta[key]!r}; was it "
                                "edited?")
    return meta


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def trained_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights a finished run was measured with: the best epoch's under early stopping, else the last."""
    early = state.get("train_config", {}).get("early_stopping", False)
    return state["best_state"] if early and state.get("best_state") is not None else state["model"]
