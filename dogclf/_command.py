"""Running a parsed command as the ``dogclf`` command line does: its exit codes and its one-line errors.

``dogclf`` (:mod:`dogclf.cli.app`) and the SageMaker training entry point run their commands through
:func:`run_command`, so an error is one line on stderr (no traceback unless ``DOGCLF_DEBUG`` is set), Ctrl-C
exits with 130 and a closed pipe (``dogclf ... | head``) ends quietly; dogclf's log messages print as plain lines
while the command runs (:func:`dogclf._logging.cli_logging`). Standard library only, and the leaf modules beside it.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import gc
import logging
import os
import sys
from collections.abc import Callable

from dogclf._logging import cli_logging
from dogclf.errors import DogclfError

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_ERROR", "EXIT_INTERRUPTED", "exit_quickly", "run_command"]

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a command killed by a closed pipe


@functools.cache  # once per process
def exit_quickly() -> None:
    """At interpreter exit, freezes the garbage collector's objects before its final collections run.

    Once torch (and ``torch._dynamo``, which the first optimizer imports) is loaded, those collections walk millions
    of objects: about 0.5-1 s of CPU after a ``dogclf train`` has finished. Objects are still freed and files
    flushed at exit; only reference cycles among them are left to the operating system.
    """
    atexit.register(gc.freeze)


def _stdout_closed() -> int:
    """The reader of stdout went away (``dogclf ... | head``): stop quietly, as ``cat`` and ``grep`` do."""
    # Python would report the failed flush of the dead pipe at exit; point stdout at /dev/null instead.
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (tests capture it)
        pass
    finally:
        os.close(devnull)
    return EXIT_BROKEN_PIPE


def run_command(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Runs a parsed command; returns its exit code (0 ok, 1 some inputs failed, 2 error, 130 interrupted).

    Args:
        run: The command's function.
        args: Its parsed options, with ``command`` (the name errors start with) and ``environ`` set.
    """
    try:
        with cli_logging(getattr(args, "log_level", logging.INFO)):  # dogclf's messages as plain lines, this command
            code = run(args)
        sys.stdout.flush()  # here, so a reader that went away (`| head`) is handled below, not at exit
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except (DogclfError, ValueError) as exc:
        print(f"dogclf {args.command}: error: {exc}", file=sys.stderr)
        if args.environ.get("DOGCLF_DEBUG"):
            raise
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
