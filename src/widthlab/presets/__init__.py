"""Presets: one YAML study config per experiment of the paper, shipped inside the package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from widthlab.errors import WidthlabError


def _folder() -> Path:
    return Path(str(resources.files("widthlab.presets")))


def list_presets() -> list[str]:
    """Names of the bundled presets (``widthlab run NAME``)."""
    return sorted(p.stem for p in _folder().glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The YAML file of preset `name`."""
    path = _folder() / f"{name}.yaml"
    if not path.is_file():
        raise WidthlabError(f"unknown preset {name!r}; valid: {', '.join(list_presets())}")
    return path
