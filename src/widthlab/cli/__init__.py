"""The `widthlab` command: run studies, redraw reports, list presets and models.

Errors a user can cause print one line and exit with status 2 (argparse's own usage errors do the same).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from widthlab.cli.analyze import add_analyze_parser
from widthlab.cli.study import add_report_parsers, add_run_parsers
from widthlab.errors import WidthlabError


def build_parser() -> argparse.ArgumentParser:
    from widthlab.version import __version__

    parser = argparse.ArgumentParser(prog="widthlab", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"widthlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    add_run_parsers(sub)
    add_analyze_parser(sub)
    add_report_parsers(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, Kubernetes, systemd stopping the job), handled as Ctrl-C is."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.func(args)
    except WidthlabError as exc:
        print(f"widthlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        # What survives an interrupt is the subcommand's to say (a study keeps its finished runs; analyze, nothing).
        survives = getattr(args, "interrupted", "finished runs are stored: rerun the same command to resume")
        print(f"widthlab: {what}; {survives}", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except BrokenPipeError:  # `widthlab status DIR | head`: the reader is gone, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # a full disk or a read-only folder where a file is written
        from widthlab.files import write_error

        error = write_error(Path(exc.filename or "."), exc)
        if error is None:
            raise
        print(f"widthlab: error: {error}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if "torch.distributed" in sys.modules:  # under torchrun: leave the process group before exiting
            from widthlab.train.distributed import shutdown

            shutdown()


if __name__ == "__main__":
    # `python -m widthlab.cli` puts the current folder first on sys.path; a study folder's files must not shadow
    # the modules widthlab imports later (a user's `module:function` is still found there: registry.py).
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    sys.exit(main())
