"""The catalogue of bundled presets as ``widthlab presets`` prints it: what each reproduces and what it costs."""

from __future__ import annotations

from widthlab.presets import list_presets, preset_path
from widthlab.study.config import load_config
from widthlab.study.yaml_io import read_yaml


def describe_presets() -> list[dict[str, str]]:
    """Name, paper figure, data set, trainings (the cost) and description of each preset (``widthlab presets``).

    ``runs`` counts the trained networks: variants × widths × replicates, times the candidates of a selection
    (``grid.select``); a declared but disabled selection is shown as what ``--select`` would cost.
    """
    rows = []
    for name in list_presets():
        raw = read_yaml(preset_path(name))
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
