"""``python -m dogclf``."""

import sys

from dogclf.cli import main

sys.exit(main())
