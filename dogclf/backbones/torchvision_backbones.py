"""The built-in backbones: torchvision's resnet18, resnet50 and inception_v3."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dogclf._compat import import_torchvision
from dogclf.backbones.spec import BackboneSpec, Preprocessing

if TYPE_CHECKING:
    from torch import nn

__all__ = ["builtin_specs"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "inception_v3": "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
}


def _hub_checkpoints() -> str:
    import os

    import torch

    return os.path.join(torch.hub.get_dir(), "checkpoints")


def _resnet(arch: str, weights_enum: str, *, pretrained: bool, progress: bool) -> nn.Module:
    from torch import nn

    models = import_torchvision().models
    weights = getattr(models, weights_enum).IMAGENET1K_V1 if pretrained else None
    model = getattr(models, arch)(weights=weights, progress=progress)
    model.fc = nn.Identity()
    return model


def _build_resnet18(*, pretrained: bool = False, progress: bool = True) -> nn.Module:
    return _resnet("resnet18", "ResNet18_Weights", pretrained=pretrained, progress=progress)


def _build_resnet50(*, pretrained: bool = False, progress: bool = True) -> nn.Module:
    return _resnet("resnet50", "ResNet50_Weights", pretrained=pretrained, progress=progress)


def _build_inception_v3(*, pretrained: bool = False, progress: bool = True) -> nn.Module:
    """Inception-v3 as a feature extractor with one graph for training and serving.

    torchvision turns ``transform_input`` on only when weights are passed, so a
    model rebuilt without weights at serving time would silently see different
    inputs. Here it is always on (the Google weights expect it, and dogclf's
    preprocessing is ImageNet mean/std, which it converts from). The auxiliary
    classifier is dropped after the weights are loaded, so the module returns a
    plain feature tensor in train mode too.
    """
    from torch import nn

    models = import_torchvision().models
    weights = models.Inception_V3_Weights.IMAGENET1K_V1 if pretrained else None
    model = models.inception_v3(
        weights=weights, progress=progress, aux_logits=True, transform_input=True, init_weights=False
    )
    model.transform_input = True
    model.aux_logits = False
    model.AuxLogits = None
    model.fc = nn.Identity()
    return model


def builtin_specs() -> list[BackboneSpec]:
    """Returns the specs of the backbones that ship with dogclf."""
    common = {"weights_cache": _hub_checkpoints, "distribution": "dogclf (built-in)"}
    resnet_pre = Preprocessing(input_size=224, resize_size=256, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return [
        BackboneSpec(
            name="resnet18",
            build=_build_resnet18,
            num_features=512,
            preprocessing=resnet_pre,
            weights_source="torchvision ResNet18_Weights.IMAGENET1K_V1",
            weights_url=_URLS["resnet18"],
            classifier_prefixes=("fc.",),
            description="ResNet-18 (torchvision), 11.7M parameters",
            **common,
        ),
        BackboneSpec(
            name="resnet50",
            build=_build_resnet50,
            num_features=2048,
            preprocessing=resnet_pre,
            weights_source="torchvision ResNet50_Weights.IMAGENET1K_V1",
            weights_url=_URLS["resnet50"],
            classifier_prefixes=("fc.",),
            description="ResNet-50 (torchvision), 25.6M parameters",
            **common,
        ),
        BackboneSpec(
            name="inception_v3",
            build=_build_inception_v3,
            num_features=2048,
            preprocessing=Preprocessing(input_size=299, resize_size=342, mean=IMAGENET_MEAN, std=IMAGENET_STD),
            weights_source="torchvision Inception_V3_Weights.IMAGENET1K_V1",
            weights_url=_URLS["inception_v3"],
            classifier_prefixes=("fc.", "AuxLogits."),
            description="Inception-v3 (torchvision) at 299 px, aux logits dropped, transform_input on",
            **common,
        ),
    ]
