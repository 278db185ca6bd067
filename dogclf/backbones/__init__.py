"""Backbones: specs, the registry, weights and the plugin contract."""

from dogclf.backbones.contract import check_backbone
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
    "check_backbone",
    "default_registry",
    "get_backbone",
    "list_backbones",
    "register_backbone",
]
