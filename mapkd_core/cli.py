"""The one error handler of every mapkd console script.

A script's ``main(argv)`` parses its arguments and does its work; it catches no error itself. Wrapped with
:func:`command` it behaves the same everywhere:

- a bad input or configuration (a :class:`~mapkd_core.errors.MapkdError`, or one of the built-ins that a bad path
  or value raises: ``FileNotFoundError``, ``ValueError``, ...) prints one line on stderr,
  ``<prog>: error: <message>``, and exits with code 2 (a ``MapkdError`` subclass may set another ``exit_code``);
- Ctrl-C exits with code 130, without a traceback;
- ``--debug`` anywhere on the command line (or ``MAPKD_DEBUG=1`` in the environment) prints the full traceback
  instead of the one line (same exit code);
- any other exception is a bug in mapkd: it is not caught, Python prints its traceback;
- argparse keeps its own behaviour (``--help`` exits 0, a bad flag prints the usage and exits 2).

    @command('mapkd-eval')
    def main(argv=None) -> int:
        p = argparse.ArgumentParser(prog='mapkd-eval')
        add_debug_flag(p)
        ...
"""
from __future__ import annotations

import functools
import os
import sys
import traceback
from typing import Callable, Optional, Sequence

from .errors import MapkdError

DEBUG_FLAG = '--debug'
DEBUG_ENV = 'MAPKD_DEBUG'
#: exit code of a bad input or configuration (argparse uses the same for a bad flag)
EXIT_BAD_INPUT = 2
#: exit code after Ctrl-C (128 + SIGINT, as a shell reports it)
EXIT_INTERRUPTED = 130
#: what a bad path or value raises when it escapes a script: reported in one line, like a MapkdError
INPUT_ERRORS = (MapkdError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
                PermissionError, ValueError)


def debug_enabled(argv: Sequence[str] = ()) -> bool:
    """True when ``--debug`` is in ``argv`` or ``MAPKD_DEBUG`` is set to something else than ``''`` / ``0``."""
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, '').strip().lower() not in ('', '0', 'false', 'no')


def add_debug_flag(parser) -> None:
    """Document ``--debug`` in an argparse parser's ``--help`` (the handler acts on it and removes it from argv)."""
    parser.add_argument(DEBUG_FLAG, action='store_true',
                        help=f'show the traceback of an error instead of one line (or set {DEBUG_ENV}=1)')


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (the lines of a multi-line message joined with ``; ``)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return '; '.join(lines) or type(exc).__name__


def run_command(prog: str, main: Callable[[list[str]], Optional[int]], argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main(argv)`` (default ``sys.argv[1:]``, ``--debug`` removed) under the handler; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled(argv)
    argv = [a for a in argv if a != DEBUG_FLAG]
    try:
        code = main(argv)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        return EXIT_INTERRUPTED
    except INPUT_ERRORS as exc:
        if debug:
            traceback.print_exc()
        else:
            print(f'{prog}: error: {one_line(exc)}', file=sys.stderr)
        return int(getattr(exc, 'exit_code', EXIT_BAD_INPUT))
    return 0 if code is None else int(code)


def command(prog: str):
    """Decorator: ``main(argv=None)`` runs under :func:`run_command` with the program name ``prog``."""
    def wrap(main):
        @functools.wraps(main)
        def wrapped(argv: Optional[Sequence[str]] = None) -> int:
            return run_command(prog, main, argv)
        return wrapped
    return wrap
