"""The ``dogclf`` command line: :mod:`.app` (the parser and :func:`main`) and one module per command.

Each command module has its ``add_<command>_parser`` and its run function: :mod:`.train`, :mod:`.evaluate`,
:mod:`.predict`, :mod:`.serve`, :mod:`.export`, :mod:`.package`, :mod:`.demo`, :mod:`.backbones` (``backbones`` and
``check-backbone``); :mod:`.options` holds the options several share.
"""

from dogclf.cli.app import EXIT_BROKEN_PIPE, EXIT_ERROR, EXIT_INTERRUPTED, main

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_ERROR", "EXIT_INTERRUPTED", "main"]
