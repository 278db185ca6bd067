"""Freeze-and-replace-head: a backbone with a new classification head."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from dogclf.backbones.registry import get_backbone
from dogclf.backbones.spec import BackboneSpec
from dogclf.backbones.weights import build_backbone

__all__ = ["DogClassifierNet", "HeadConfig", "build_head", "build_model"]


@dataclass(frozen=True, kw_only=True)
class HeadConfig:
    """The shape of the new head.

    Attributes:
        hidden: Width of an optional hidden layer (ReLU); 0 for a single linear layer.
        dropout: Dropout probability before each linear layer; 0 for none.
    """

    hidden: int = 0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.hidden, int) or self.hidden < 0:
            raise ValueError(f"head hidden width must be an int >= 0, got {self.hidden!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"head dropout must be in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready dict."""
        return asdict(self)


def build_head(in_features: int, num_classes: int, config: HeadConfig) -> nn.Sequential:
    """Builds the new head: [dropout] linear, or [dropout] linear-relu-[dropout] linear."""
    layers: list[nn.Module] = []
    width = in_features
    if config.hidden:
        if config.dropout:
            layers.append(nn.Dropout(config.dropout))
        layers += [nn.Linear(width, config.hidden), nn.ReLU(inplace=True)]
        width = config.hidden
    if config.dropout:
        layers.append(nn.Dropout(config.dropout))
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class DogClassifierNet(nn.Module):
    """A backbone feature extractor followed by a new head.

    When ``frozen`` is true the backbone's parameters do not require grad, its
    forward pass runs without autograd, and ``train()`` leaves it (and so its
    BatchNorm statistics) in eval mode: only the head learns.

    Args:
        backbone: Maps a normalised image batch to ``(N, num_features)``.
        head: Maps features to logits.
        frozen: Freeze the backbone.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, *, frozen: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.frozen = frozen
        self.set_frozen(frozen)

    def set_frozen(self, frozen: bool) -> None:
        """Freezes or unfreezes the backbone."""
        self.frozen = frozen
        for param in self.backbone.parameters():
            param.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> DogClassifierNet:
        """Sets train mode on the head, and on the backbone only when not frozen."""
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Returns backbone features ``(N, num_features)``."""
        if self.frozen:
            with torch.no_grad():
                return self.backbone(images)
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Returns logits ``(N, num_classes)``."""
        return self.head(self.features(images))


def build_model(
    backbone: str | BackboneSpec,
    num_classes: int,
    *,
    weights: str | os.PathLike[str] | None = "imagenet",
    freeze: bool = True,
    head: HeadConfig | None = None,
    progress: bool = True,
) -> DogClassifierNet:
    """Builds a backbone with a new head for ``num_classes`` classes.

    Args:
        backbone: A registered name (``"resnet18"``, ``"timm/efficientnet_b0"``, a
            plugin's name) or a spec.
        num_classes: Number of classes of the new head.
        weights: ``"imagenet"``, ``None``/``"none"``, or a local weights file.
        freeze: Freeze the backbone (train the head only).
        head: The head's shape; a single linear layer by default.
        progress: Show a progress bar while downloading weights.

    Returns:
        The model, in train mode.
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    spec = get_backbone(backbone) if isinstance(backbone, str) else backbone
    feature_extractor = build_backbone(spec, weights, progress=progress)
    return DogClassifierNet(
        feature_extractor, build_head(spec.num_features, num_classes, head or HeadConfig()), frozen=freeze
    )
