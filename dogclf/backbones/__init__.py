"""Backbones: specs, the registry and weights (the plugin contract check is :mod:`dogclf.model.contract`)."""

from dogclf.backbones.registry import (
    ENTRY_POINT_GROUP,
    BackboneRegistry,
    default_registry,
    get_backbone,
    list_backbones,
    register_backbone,
)
from dogclf.backbones.spec import BackboneSpec, Preprocessing
from dogclf.backbones.weights import build_backbone

__all__ = [
    "ENTRY_POINT_GROUP",
    "BackboneRegistry",
    "BackboneSpec",
    "Preprocessing",
    "build_backbone",
    "default_registry",
    "get_backbone",
    "list_backbones",
    "register_backbone",
]
