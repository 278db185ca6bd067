"""dogclf's messages go to the ``dogclf`` logger hierarchy; the CLI prints them as plain lines.

Every module logs to ``logging.getLogger(__name__)`` (``dogclf.pipeline.run``, ``dogclf.features.pipeline`` ...):
progress at INFO, trouble it works around at WARNING. A library user controls them the usual way, e.g.
``logging.getLogger("dogclf").setLevel(logging.WARNING)``. The CLI installs :func:`cli_logging` for one command,
which prints each message as its own plain line, as the ``log`` callbacks these loggers replaced did: progress on
stdout, warnings on stderr.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

__all__ = ["FIXED_FORMAT", "ROOT", "cli_logging", "deprecated_log", "indented", "main_process_only"]

ROOT = "dogclf"
SERVE = "dogclf.serve"

FIXED_FORMAT = {"dogclf_fixed_format": True}
"""``extra=`` of a line that programs parse (the per-epoch line SageMaker's metric regexes read): never indented."""

_INDENT: ContextVar[str] = ContextVar("dogclf_log_indent", default="")

F = TypeVar("F", bound=Callable[..., Any])


class _PlainFormatter(logging.Formatter):
    """The message alone, as the CLI printed it: ``warning: `` before a warning, the current :func:`indented`."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            message = f"warning: {message}"
        indent = "" if getattr(record, "dogclf_fixed_format", False) else _INDENT.get()
        return "\n".join(indent + line for line in message.split("\n")) if indent else message


class _CliHandler(logging.Handler):
    """Progress (below WARNING) to stdout, warnings and errors to stderr: the streams looked up per record, flushed.

    Looked up per record because tests and callers swap ``sys.stdout``; stderr keeps warnings out of stdout, which
    may be JSON (``--json``). The server's messages (``dogclf.serve``) are left to the root logger ``dogclf serve``
    configures (``INFO: ...`` on stderr, as uvicorn's).
    """

    def filter(self, record: logging.LogRecord) -> bool | logging.LogRecord:
        return not (record.name == SERVE or record.name.startswith(SERVE + ".")) and super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except (RecursionError, BrokenPipeError):  # `dogclf train | head`: main() ends quietly, as print() let it
            raise
        except Exception:  # logging's policy otherwise: a failed emit never breaks the caller
            self.handleError(record)


@contextlib.contextmanager
def cli_logging(level: int = logging.INFO) -> Iterator[logging.Handler]:
    """While one CLI command runs: dogclf's messages at ``level`` and above printed as plain lines.

    Progress goes to stdout, warnings to stderr (``warning: ...``).

    The ``dogclf`` logger's level is set for the command and restored afterwards, and the handler is removed, so a
    test or a program that calls ``dogclf.cli.main`` more than once, or logs on its own, is left as it was.
    """
    logger = logging.getLogger(ROOT)
    handler = _CliHandler()
    handler.setFormatter(_PlainFormatter())
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


@contextlib.contextmanager
def indented(prefix: str) -> Iterator[None]:
    """The CLI's lines logged inside this block start with ``prefix`` (``dogclf demo`` indents ``train``'s)."""
    token = _INDENT.set(_INDENT.get() + prefix)
    try:
        yield
    finally:
        _INDENT.reset(token)


@contextlib.contextmanager
def main_process_only(main: bool) -> Iterator[None]:
    """In a process other than a torchrun group's rank 0 (``main`` false), dogclf logs warnings and errors only.

    So a group of N processes prints one copy of each progress line, not N.
    """
    if main:
        yield
        return
    logger = logging.getLogger(ROOT)
    previous = logger.level
    logger.setLevel(max(logging.WARNING, previous))
    try:
        yield
    finally:
        logger.setLevel(previous)


class _CallbackHandler(logging.Handler):
    """Hands each record's message to a ``log(str)`` callback (the deprecated ``log=`` arguments)."""

    def __init__(self, log: Callable[[str], None]) -> None:
        super().__init__()
        self.log = log
        self.setFormatter(_PlainFormatter())  # "warning: ..." as the callbacks got it

    def emit(self, record: logging.LogRecord) -> None:
        self.log(self.format(record))


@contextlib.contextmanager
def _routed_to(log: Callable[[str], None]) -> Iterator[None]:
    """Also hands dogclf's INFO messages and above to ``log`` while the block runs."""
    logger = logging.getLogger(ROOT)
    handler = _CallbackHandler(log)
    previous = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def deprecated_log(func: F) -> F:
    """Keeps accepting the ``log=`` callback ``func`` took before dogclf used ``logging``, with a DeprecationWarning.

    The callback still receives every message of the call (dogclf's INFO and above): it is a temporary handler on the
    ``dogclf`` logger for the call's duration. ``log=`` goes in the release after next.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if "log" not in kwargs:
            return func(*args, **kwargs)
        log = kwargs.pop("log")
        warnings.warn(
            f"{func.__qualname__}(log=...) is deprecated: dogclf logs to the 'dogclf' logger of Python's logging "
            "module (e.g. logging.basicConfig(level=logging.INFO), or logging.getLogger('dogclf').setLevel(...)); "
            "drop the log argument.",
            DeprecationWarning,
            stacklevel=2,
        )
        if log is None:
            return func(*args, **kwargs)
        with _routed_to(log):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
