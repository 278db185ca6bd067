"""Fine-tune a new head on a frozen Inception-v3 (torchvision, 299 px inputs) with the dogclf Python API.

    python examples/train_inception_v3.py --data dogImages --out runs/inception_v3 --epochs 5

dogclf drops Inception's auxiliary classifier and always sets ``transform_input=True``, so training and serving run
the same graph. ``--weights imagenet`` (the default) downloads inception_v3_google-0cc3c7bd.pth (104 MB) from
download.pytorch.org into ``~/.cache/torch/hub/checkpoints`` on first use. Offline, fetch that file on a connected
machine and either copy it into the cache folder or pass it directly:
``--weights /path/to/inception_v3_google-0cc3c7bd.pth``. ``--weights none`` trains from random initialisation (for
smoke tests only).
"""

from __future__ import annotations

import sys

from _common import main

if __name__ == "__main__":
    sys.exit(main("inception_v3"))
