"""The ``dogclf`` command line (:func:`main`); one module per command, each with its ``add_<command>_parser``."""

from dogclf.cli.app import EXIT_BROKEN_PIPE, EXIT_ERROR, EXIT_INTERRUPTED, main

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_ERROR", "EXIT_INTERRUPTED", "main"]
