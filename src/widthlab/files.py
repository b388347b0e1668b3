"""Writing files so that a crash, a kill or a full disk never leaves a torn or empty one behind.

Every file widthlab writes into a study folder (figures, CSV, summary, HTML, config, checkpoints) is first written
to a temporary file beside it, ``.NAME.PID.tmp.SUFFIX``, then renamed over the old one: at any moment the folder
holds either the previous file or the new one. Temporary files of processes that died are removed by
`remove_stale_temps` at the next run.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from widthlab.errors import WidthlabError

_TEMP = re.compile(r"^\..+\.(\d+)\.tmp(\.[A-Za-z0-9]+)?$")
# Below this much free space a failed write is taken to be the full disk (matplotlib, for one, hides the ENOSPC
# of a PDF write behind an AttributeError of its own).
_NEARLY_FULL = 1 << 20


def file_name(name: str) -> str:
    """`name` as one file name: '%' and '/' escaped (``k=1/4`` → ``k=1%2F4``), so a variant named like the paper's
    ``k=1/4`` — or ``../../x`` — names a file inside its folder; names without either are unchanged."""
    return name.replace("%", "%25").replace("/", "%2F").replace("\\", "%5C")


# What widthlab writes in a folder (study or analysis): its store and lock, log, config, tables, summary, report,
# figures/ and checkpoints/ (and the temporary files of each). A handed-over folder may hold a link among them.
OWN_FOLDERS = ("figures", "checkpoints")
_OWN_SUFFIXES = (".sqlite", ".sqlite-wal", ".sqlite-shm", ".sqlite-journal", ".lock", ".log", ".yaml", ".md", ".html",
                 ".csv", ".png", ".pdf", ".pt", ".pth", ".tmp")


def refuse_links(folder: str | os.PathLike) -> None:
    """Raise one WidthlabError when a file or folder widthlab writes in `folder` (see `OWN_FOLDERS` and the kinds
    of files it writes), or anything in its figures/ or checkpoints/, is a symbolic link.

    Writing through such a link would change a file outside the folder (``figures -> /elsewhere`` overwrites
    /elsewhere/accuracy.png); `folder` itself may be a link, since the user named it.
    """
    folder = Path(folder)
    for entry in _entries(folder):
        if entry.is_symlink() and (entry.name in OWN_FOLDERS or entry.name.endswith(_OWN_SUFFIXES)
                                   or _TEMP.match(entry.name)):
            raise link_error(Path(entry.path))
    for name in OWN_FOLDERS:
        for entry in _entries(folder / name):
            if entry.is_symlink():
                raise link_error(Path(entry.path))


def _entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []


def link_error(path: Path) -> WidthlabError:
    try:
        target = f" (to {os.readlink(path)!r})"
    except OSError:
        target = ""
    return WidthlabError(f"{str(path)!r} is a symbolic link{target}; widthlab never writes through a link in a "
                         "study folder, which could change files outside it: replace the link with the file or folder "
                         "itself, or remove it")


def open_own(path: str | os.PathLike, flags: int, mode: int = 0o644) -> int:
    """``os.open`` of one of widthlab's own files, never through a symbolic link: a link is a WidthlabError."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP or (exc.errno == errno.EMLINK and Path(path).is_symlink()):
            raise link_error(Path(path)) from None
        raise


def temp_path(path: Path) -> Path:
    """The temporary sibling of `path` for this process, keeping its suffix (matplotlib picks a format by it)."""
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def free_space(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2 ** 20:.0f} MiB free"
    except OSError:
        return "free space unknown"


def write_error(path: Path, exc: BaseException) -> WidthlabError | None:
    """One line for a write that failed because the disk is full or the folder is not writable; None otherwise."""
    code = getattr(exc, "errno", None)
    try:
        nearly_full = shutil.disk_usage(path.parent).free < _NEARLY_FULL
    except OSError:
        nearly_full = False
    if code in (errno.ENOSPC, errno.EDQUOT) or nearly_full:
        return WidthlabError(f"disk full writing {str(path)!r} ({free_space(path.parent)}); free some space and rerun "
                             "(finished results are safe in the store)")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return WidthlabError(f"cannot write {str(path)!r}: {exc.strerror or exc}; choose a writable folder (--out)")
    return None


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on failure it is removed.

    A full disk or a read-only folder becomes a one-line WidthlabError naming `path` and the free space.

    Example:
        >>> with atomic_path("summary.md") as tmp:
        ...     tmp.write_text("# Summary\\n")
        10
        >>> Path("summary.md").read_text()
        '# Summary\\n'
    """
    path = Path(path)
    tmp = temp_path(path)
    if os.path.islink(tmp):  # planted under this process's temporary name: writing to it would follow it
        tmp.unlink()
    try:
        yield tmp
        os.replace(tmp, path)
    except Exception as exc:
        error = write_error(path, exc)
        if error is not None:
            raise error from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """`Path.write_text` (UTF-8), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files (``.NAME.PID.tmp[.SUFFIX]``) in `folder` whose process is gone; return them.

    Only regular files directly in `folder` are removed, and nothing when `folder` is itself a link: cleanup never
    reaches outside a study folder.
    """
    folder = Path(folder)
    removed = []
    if folder.is_symlink() or not folder.is_dir():
        return removed
    for entry in _entries(folder):
        match = _TEMP.match(entry.name)
        if match and entry.is_file(follow_symlinks=False) and not _alive(int(match.group(1))):
            path = Path(entry.path)
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True
