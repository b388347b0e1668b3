"""The `widthlab` command: run studies, redraw reports, list presets and models, analyse and compress models.

Errors a user can cause print one line and exit with status 2 (argparse's own usage errors do the same).
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
from pathlib import Path

from widthlab.cli.analyze import add_analyze_parser
from widthlab.cli.cka import add_cka_parser
from widthlab.cli.compress import add_compress_parser
from widthlab.cli.study import add_report_parsers, add_run_parsers
from widthlab.errors import WidthlabError


def build_parser() -> argparse.ArgumentParser:
    from widthlab.version import __version__

    parser = argparse.ArgumentParser(prog="widthlab", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"widthlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    add_run_parsers(sub)
    add_analyze_parser(sub)
    add_compress_parser(sub)
    add_cka_parser(sub)
    add_report_parsers(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, Kubernetes, systemd stopping the job) or SIGHUP (the terminal closed), handled as
    Ctrl-C is; `signum` is the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


# Stopping signals handled as Ctrl-C is; the exit status is 128 + the signal's number, as a shell reports it.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _terminate(signum, frame) -> None:
    raise Terminated(signum)


def _open_files_error() -> str:
    """One line for EMFILE: the process's open-file limit, and how to live with it."""
    import resource

    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return (f"too many open files (the limit is {limit}, see `ulimit -n`): raise it (e.g. `ulimit -n 4096`) or "
            "use fewer --workers; finished runs are stored: rerun the same command to resume")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        # A signal the caller ignores stays ignored: `nohup widthlab run ...` must outlive its terminal.
        previous = {signum: signal.signal(signum, _terminate) for signum in STOP_SIGNALS
                    if signal.getsignal(signum) is not signal.SIG_IGN}
    try:
        return args.func(args)
    except WidthlabError as exc:
        print(f"widthlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        what = f"terminated ({signal.Signals(exc.signum).name})" if isinstance(exc, Terminated) else "interrupted"
        # What survives an interrupt is the subcommand's to say (a study keeps its finished runs; analyze, nothing).
        survives = getattr(args, "interrupted", "finished runs are stored: rerun the same command to resume")
        print(f"widthlab: {what}; {survives}", file=sys.stderr)
        return 128 + exc.signum if isinstance(exc, Terminated) else 130
    except BrokenPipeError:  # `widthlab status DIR | head`: the reader is gone, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # a full disk or a read-only folder where a file is written, or too many open files
        from widthlab.files import write_error

        if exc.errno == errno.EMFILE:
            print(f"widthlab: error: {_open_files_error()}", file=sys.stderr)
            return 2
        error = write_error(Path(exc.filename or "."), exc)
        if error is None:
            raise
        print(f"widthlab: error: {error}", file=sys.stderr)
        return 2
    finally:
        for signum, handler in previous.items():
            if handler is not None:  # None: a handler not installed from Python, which cannot be put back
                signal.signal(signum, handler)
        if "torch.distributed" in sys.modules:  # under torchrun: leave the process group before exiting
            from widthlab.train.distributed import shutdown

            shutdown()


if __name__ == "__main__":
    # `python -m widthlab.cli` puts the current folder first on sys.path; a study folder's files must not shadow
    # the modules widthlab imports later (a user's `module:function` is still found there: registry.py).
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    sys.exit(main())
