"""User-facing errors and the common entry-point wrapper of the console scripts.

Every command (mra-train, mra-export, mra-animate, mra-live, ...) reports a problem the user can
fix as one line on stderr that starts with ``error:`` and exits with status 2, never a traceback.
Set ``MRA_DEBUG=1`` to see tracebacks.
"""
from __future__ import annotations

import errno
import os
import sys
from typing import Callable, Sequence

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A problem with the user's input or machine, with a message that says what to do."""


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


# write failures the user can fix on their side: (what happened, what to do)
DISK_FAULTS = {
    errno.ENOSPC: ("no space left on the device", "free some space or choose another location"),
    errno.EDQUOT: ("the disk quota is exceeded", "free some space or choose another location"),
    errno.EROFS: ("the file system is read-only", "choose a writable location"),
    errno.EACCES: ("permission denied", "choose a writable location"),
    errno.EPERM: ("operation not permitted", "choose a writable location"),
    errno.EBUSY: ("the location is busy (a mount point, or in use)", "choose another location"),
    errno.EFBIG: ("the file is too large for this file system", "choose another location"),
}


class DiskFault(UserError):
    """A write failed for a reason on the user's side (``errno`` one of :data:`DISK_FAULTS`)."""

    def __init__(self, message: str, errno: int):
        super().__init__(message)
        self.errno = errno


def disk_fault(e: BaseException, what: str = "") -> "str | None":
    """The one-line message for a write failure the user can fix (disk full, read-only, busy...):
    ``cannot write <what>: <what happened>; <what to do>``; None for any other error."""
    if not isinstance(e, OSError) or e.errno not in DISK_FAULTS:
        return None
    happened, todo = DISK_FAULTS[e.errno]
    what = what or (str(e.filename) if e.filename else "")
    return f"cannot write{' ' + what if what else ''}: {happened}; {todo}"


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; turn known errors into ``error: ...`` + exit 2, Ctrl-C into exit 130."""
    debug = os.environ.get("MRA_DEBUG") not in (None, "", "0")
    try:
        code = main(argv)
        return int(code or 0)
    except UserError as e:  # (nets.CheckpointError and nets.ConfigError are UserErrors)
        if debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
    except OSError as e:  # a write the disk refused (permission errors may be reads: not said as writes)
        message = disk_fault(e) if e.errno not in (errno.EACCES, errno.EPERM) else None
        if message is None or debug:
            raise
        print(f"error: {_one_line(message)}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        print("error: out of memory; try a smaller --batch-size or --size", file=sys.stderr)
        return EXIT_USAGE


def one_line_warnings() -> None:
    """Show every Python warning as one ``warning: ...`` line on stderr (no file name, no source line),
    as the tools show errors."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {_one_line(message)}", file=sys.stderr)
    warnings.showwarning = show


def launch(target: str) -> None:
    """The body of a console script: import ``"package.module"`` and exit with its ``main()``.

    The tool's modules import PyTorch and ONNX Runtime (a second or more): a Ctrl-C then is
    answered like one during the run, ``interrupted`` and exit status 130, not a traceback.
    """
    import importlib

    try:
        main = importlib.import_module(target).main
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(main())


def entry_point(main: Callable[[Sequence[str] | None], int | None]) -> Callable[[], None]:
    """Wrap ``main`` as a console-script entry point (``sys.exit`` with run_cli's status)."""

    def _run() -> None:
        sys.exit(run_cli(main))

    _run.__doc__ = main.__doc__
    return _run


import argparse  # noqa: E402


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: <what>; see <prog> --help`` and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {_one_line(message)} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)
