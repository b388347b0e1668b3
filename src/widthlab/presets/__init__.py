"""Presets: one YAML study config per experiment of the paper, shipped inside the package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

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


def describe_presets() -> list[dict[str, str]]:
    """Name, paper figure, data set, trainings (the cost) and description of each preset (``widthlab presets``).

    ``runs`` counts the trained networks: variants × widths × replicates, times the candidates of a selection
    (``grid.select``); a declared but disabled selection is shown as what ``--select`` would cost.
    """
    from widthlab.study.config import load_config

    rows = []
    for name in list_presets():
        raw = yaml.safe_load(preset_path(name).read_text())
        data = raw.get("data", {})
        data_text = data.get("name", "synthetic") + (f" ({data['input_dim']}-d)" if "input_dim" in data else "")
        grid = load_config(name).grid
        cells = len(grid.variants) * len(grid.widths) * grid.replicates
        if grid.select is None:
            runs = f"{cells}"
        elif grid.select.enabled:
            runs = f"{cells * len(grid.select.candidates)} ({cells} × {len(grid.select.candidates)} candidates)"
        else:
            runs = f"{cells}; --select: {cells * len(grid.select.candidates)}"
        rows.append({"name": name, "figure": str(raw.get("figure", "")), "data": data_text, "runs": runs,
                     "description": " ".join(str(raw.get("description", "")).split())})
    return rows
