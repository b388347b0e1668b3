"""The README's and the docs' commands stay true: every `widthlab ...` line in a bash block parses with today's
CLI (its subcommand and flags exist), every preset it runs exists, and every ``--set`` it gives is a valid
override of that preset. Nothing is run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from widthlab.cli import build_parser
from widthlab.presets import list_presets
from widthlab.study.config import load_config

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def commands(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, argv after `widthlab`) of each `widthlab` command in `path`'s bash blocks (also after `&&`
    and under `torchrun ... -m widthlab.cli`), comments dropped."""
    found, fence, pending = [], None, ""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
            continue
        if fence != "bash":
            continue
        if line.endswith("\\"):  # a continued command: read it whole
            pending += line[:-1]
            continue
        line, pending = pending + line, ""
        for part in line.split("&&"):
            try:
                words = shlex.split(part, comments=True)
            except ValueError as exc:
                raise AssertionError(f"{path.name}:{number}: cannot split {part!r}: {exc}") from exc
            if words[:1] == ["widthlab"]:
                found.append((number, words[1:]))
            elif "widthlab.cli" in words:
                found.append((number, words[words.index("widthlab.cli") + 1:]))
    return found


CASES = [pytest.param(argv, id=f"{path.name}:{number}") for path in DOCS for number, argv in commands(path)]


def test_the_docs_have_commands_to_check():
    assert len(CASES) >= 30  # the parser above finds them: a format change must not silently check nothing


@pytest.mark.parametrize("argv", CASES)
def test_a_documented_command_parses(argv):
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse's usage error: an unknown flag or subcommand
        raise AssertionError(f"`widthlab {shlex.join(argv)}` no longer parses") from exc
    if args.command == "run" and not Path(args.config).suffix:  # a preset by name, with its overrides
        assert args.config in list_presets(), f"`widthlab {shlex.join(argv)}`: no preset {args.config!r}"
        load_config(args.config, [*(args.set or []), *([f"train.device={args.device}"] if args.device else [])])


def test_a_wrong_flag_is_caught(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```bash\nwidthlab run mlp-10d --no-such-flag   # a comment\n```\n")
    (argv,) = [argv for _, argv in commands(page)]
    assert argv == ["run", "mlp-10d", "--no-such-flag"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert re.search(r"mlp-10d", " ".join(argv))


def readme_file_table() -> str:
    """The README's table of what a study writes (the rows that start with a backquoted name)."""
    text = (ROOT / "README.md").read_text()
    start = text.index("| file | what |")
    return text[start:text.index("\n\n", start)]


def test_the_readme_names_every_file_a_study_writes(finished_study):
    from widthlab.report.summary import HTML_NAME, TABLE_NAMES
    from widthlab.study.store import STORE_NAME, STUDY_FILES, STUDY_FOLDERS

    table = readme_file_table()
    known = {*STUDY_FILES, *STUDY_FOLDERS, *(f"{name}.csv" for name in TABLE_NAMES), "summary.md", HTML_NAME,
             STORE_NAME, "figures"}
    # SQLite's own -wal/-shm/-journal files come and go with an open connection: they belong to the store.
    written = {path.name for path in finished_study.iterdir() if not path.name.startswith(f"{STORE_NAME}-")}
    assert written <= known, f"a study writes files no list names: {sorted(written - known)}"
    missing = sorted(name for name in known if f"`{name}" not in table and f"{name}`" not in table
                     and not re.search(rf"`[^`]*\b{re.escape(name)}\b[^`]*`", table))
    assert not missing, f"README's file table does not name {missing}"
