"""``python -m dogclf``."""

import sys

from dogclf.cli.main import main

sys.exit(main())
