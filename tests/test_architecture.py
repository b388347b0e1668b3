"""The import rules of docs/architecture.md, read from the source with `ast`: which package may import which, nothing
imports the package root, and no two modules import each other (directly or around a loop).

Every import counts, at module level or inside a function: a function-level import is still a dependency, and
a cycle through one only waits for the first call that takes that path."""

import ast
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = "widthlab"


@dataclass(frozen=True)
class Import:
    """One import statement of one module, resolved to the widthlab module it loads."""

    source: str  # the importing module, e.g. "widthlab.data.registry"
    target: str  # the module the statement loads, e.g. "widthlab.models"
    path: Path
    line: int
    text: str  # the statement as written

    def __str__(self):
        return f"{self.source} ({self.path.name}:{self.line}) `{self.text}` -> {self.target}"


def _source_files() -> dict[str, Path]:
    """Module name -> file for every module under src/widthlab (found without importing widthlab)."""
    (package_dir,) = importlib.util.find_spec(ROOT).submodule_search_locations
    package_dir = Path(package_dir)
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = _source_files()
# The shared helpers: leaf modules at the top of the package that know no package. Every package may use them;
# models/ and data/ may use only them. A new shared helper joins this list (and then may import only these).
SHARED = {f"{ROOT}.{name}" for name in ("errors", "files", "init_schemes", "memory", "registry", "seeding", "threads",
                                        "validation", "version", "vocab")}


def _resolve(name: str) -> str | None:
    """The widthlab module `import name` loads (the longest known prefix), or None for other packages."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in MODULES:
            return ".".join(parts[:end])
    return None


def _imports(module: str, path: Path) -> list[Import]:
    source = path.read_text()
    tree = ast.parse(source, filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):  # ast.walk reaches the imports inside functions and classes too
        targets = []
        if isinstance(node, ast.Import):
            targets = [_resolve(alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x / from ..train import fit
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from package import name` loads the submodule package.name when there is one, else the package
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else _resolve(base)
                       for alias in node.names]
        text = ast.get_source_segment(source, node) if targets else ""
        for target in dict.fromkeys(t for t in targets if t is not None and t != module):
            found.append(Import(module, target, path, node.lineno, " ".join(text.split())))
    return found


IMPORTS = [imp for module, path in MODULES.items() for imp in _imports(module, path)]


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _offenders(package: str, allowed) -> list[str]:
    return [str(imp) for imp in IMPORTS if _in(imp.source, package) and not allowed(imp.target)]


def _fail_on(offenders: list[str], rule: str):
    if offenders:
        pytest.fail(f"{rule}:\n  " + "\n  ".join(offenders), pytrace=False)


def test_the_source_is_found_and_read():
    assert {f"{ROOT}.{p}" for p in ("models", "data", "train", "measure", "study", "report")} <= set(MODULES)
    assert {f"{ROOT}.errors", f"{ROOT}.validation"} <= set(MODULES)
    assert any(imp.source == f"{ROOT}.measure" for imp in IMPORTS)  # the package's __init__ re-exports


@pytest.mark.parametrize("package, forbidden", [
    ("measure", ("train", "study", "report")),  # measurement works on any model, trained here or not
    ("train", ("study", "report")),  # train/ knows no grid
    # report/ draws from the store's tables (DataFrames), not from live studies, runs or models
    ("report", ("study", "train", "models", "data")),
])
def test_package_does_not_import_the_layers_it_must_not_know(package, forbidden):
    package, forbidden = f"{ROOT}.{package}", [f"{ROOT}.{name}" for name in forbidden]
    offenders = _offenders(package, lambda target: not any(_in(target, f) for f in forbidden))
    _fail_on(offenders, f"{package} must not import {', '.join(forbidden)}")


def test_the_shared_helpers_import_only_one_another():
    # so that models/ and data/, which may use them, reach no package through them
    offenders = [str(imp) for imp in IMPORTS if imp.source in SHARED and imp.target not in SHARED]
    _fail_on(offenders, f"the shared helpers {', '.join(sorted(SHARED))} may import only one another")


@pytest.mark.parametrize("package", ["models", "data"])
def test_models_and_data_import_only_themselves_and_the_shared_helpers(package):
    package = f"{ROOT}.{package}"
    offenders = _offenders(package, lambda target: _in(target, package) or target in SHARED)
    _fail_on(offenders, f"{package} may import only itself and the shared helpers {', '.join(sorted(SHARED))}")


def test_no_module_imports_the_package_root():
    # The root re-exports every package, so a package importing it imports all the others (and itself, in a cycle);
    # only the CLI, which nothing imports, may read the root's names
    offenders = [str(imp) for imp in IMPORTS if imp.target == ROOT and not _in(imp.source, f"{ROOT}.cli")]
    _fail_on(offenders, f"import the module that defines a name, not the package root {ROOT}")


def _reachable(edges: dict[str, list[Import]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for imp in edges.get(todo.pop(), []):
            if imp.target not in seen:
                seen.add(imp.target)
                todo.append(imp.target)
    return seen


def _shortest_cycle(edges: dict[str, list[Import]], start: str) -> list[Import]:
    """The fewest imports that lead from `start` back to itself (breadth first)."""
    paths, frontier = {start: []}, [start]
    while frontier:
        following = []
        for module in frontier:
            for imp in edges.get(module, []):
                if imp.target == start:
                    return paths[module] + [imp]
                if imp.target not in paths:
                    paths[imp.target] = paths[module] + [imp]
                    following.append(imp.target)
        frontier = following
    return []


def _cycles(edges: dict[str, list[Import]]) -> list[tuple[list[str], list[list[Import]]]]:
    """Each group of modules that import one another (a strongly connected component), with one shortest cycle
    through each of its modules, each cycle once."""
    reach = {module: _reachable(edges, module) for module in edges}
    groups, done = [], set()
    for module in sorted(edges):
        if module in done or module not in reach[module]:
            continue
        members = sorted(m for m in reach[module] if module in reach.get(m, ()))
        done.update(members)
        cycles, seen = [], set()
        for member in members:
            cycle = _shortest_cycle(edges, member)
            if frozenset(imp.source for imp in cycle) not in seen:
                seen.add(frozenset(imp.source for imp in cycle))
                cycles.append(cycle)
        groups.append((members, cycles))
    return groups


def test_no_import_cycles():
    edges = {}
    for imp in IMPORTS:
        edges.setdefault(imp.source, []).append(imp)
    report = []
    for members, cycles in _cycles(edges):
        report.append(f"{len(members)} modules import one another: {', '.join(members)}")
        for cycle in cycles:
            report.append("  " + " -> ".join([imp.source for imp in cycle] + [cycle[0].source]))
            report.extend(f"      {imp}" for imp in cycle)
    _fail_on(report, f"import cycles in {ROOT} (module-level and function-level imports)")
