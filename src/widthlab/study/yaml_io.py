"""YAML as widthlab reads it: `safe_load` (no tags, no code) refusing duplicate keys and alias bombs, errors in one
line, and the ``key=value`` assignments of ``--set`` and ``--data-opt`` (values read as YAML).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from widthlab.errors import WidthlabError


# Values that aliases (``*name``) may add to a document. A config reuses a section or two through anchors; an
# "alias bomb" (an alias of a list of aliases of a list ..., 492 bytes) expands to billions of values, which
# every later step (validation, a copy, an error message showing the value) walks in full.
MAX_ALIAS_VALUES = 10_000


class _UniqueKeyLoader(yaml.SafeLoader):
    """``safe_load`` that refuses a key given twice in one mapping (PyYAML silently keeps the last) and a document
    whose aliases expand to more than `MAX_ALIAS_VALUES` values, or refer to themselves."""

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            written = set()
            if _expanded_size(node, {}, written) - len(written) > MAX_ALIAS_VALUES:
                raise yaml.composer.ComposerError(None, None, f"its aliases (*name) expand to more than "
                                                  f"{MAX_ALIAS_VALUES:,} values, widthlab's bound on YAML aliases")
        return node

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, sizes: dict[int, int], seen: set[int]) -> int:
    """How many values `node` holds once every alias is expanded; `seen` collects the nodes written once.

    `sizes` memoises each node (an alias is the same node object as its anchor), so the count costs one visit
    per written node however large the expansion; a node met again while it is being counted is a cycle."""
    key = id(node)
    if key in sizes:
        if sizes[key] < 0:
            raise yaml.composer.ComposerError(None, None, "an alias (*name) refers to itself", node.start_mark)
        return sizes[key]
    seen.add(key)
    sizes[key] = -1  # being counted
    children = node.value if isinstance(node, yaml.SequenceNode) else \
        [part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode) else []
    sizes[key] = 1 + sum(_expanded_size(child, sizes, seen) for child in children)
    return sizes[key]


def safe_load(text: str) -> Any:
    """`yaml.safe_load` (no tags, no code) that refuses duplicate keys."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error as one line: what is wrong and where."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(exc, 'problem', None) or exc}{where}"


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping with `safe_load` (no tags, no code, no duplicate keys)."""
    path = Path(path)
    if not path.is_file():
        raise WidthlabError(f"config file {str(path)!r} does not exist")
    try:
        raw = safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise WidthlabError(f"config file {str(path)!r} is not valid YAML: {yaml_problem(exc)}") from None
    return raw if raw is not None else {}


def parse_assignment(item: str, flag: str) -> tuple[str, Any]:
    """``(key, value)`` of a ``key=value`` flag, the value read as YAML; a malformed one names `flag`.

    Example:
        >>> parse_assignment("train.lr=0.1", "--set"), parse_assignment("grid.widths=[1, 2]", "--set")
        (('train.lr', 0.1), ('grid.widths', [1, 2]))
        >>> parse_assignment("train.lr", "--set")
        Traceback (most recent call last):
        ...
        widthlab.errors.WidthlabError: --set expects key=value, got 'train.lr'
    """
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise WidthlabError(f"{flag} expects key=value, got {item!r}")
    try:
        return key, safe_load(text)
    except yaml.YAMLError as exc:
        raise WidthlabError(f"{flag} {item!r}: value is not valid YAML ({yaml_problem(exc)})") from None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a raw config mapping."""
    out = copy.deepcopy(raw)
    for item in overrides:
        key, value = parse_assignment(item, "--set")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise WidthlabError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return out
