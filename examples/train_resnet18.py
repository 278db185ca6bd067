"""Fine-tune a new head on a frozen ResNet-18 (torchvision) with the dogclf Python API.

    python examples/train_resnet18.py --data dogImages --out runs/resnet18 --epochs 5

``--weights imagenet`` (the default) downloads resnet18-f37072fd.pth (45 MB) from download.pytorch.org into
``~/.cache/torch/hub/checkpoints`` on first use. Offline, fetch that file on a connected machine and either copy it
into the cache folder or pass it directly: ``--weights /path/to/resnet18-f37072fd.pth``. ``--weights none`` trains
from random initialisation (for smoke tests only).
"""

from __future__ import annotations

import sys

from _common import main

if __name__ == "__main__":
    sys.exit(main("resnet18"))
