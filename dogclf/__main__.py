"""``python -m dogclf``."""

import sys

from dogclf.cli.app import main

sys.exit(main())
