"""The network: a backbone with a new classification head, and the contract every backbone must meet.

Modules: :mod:`.net` (:class:`HeadConfig`, :func:`build_head`, :class:`DogClassifierNet`, :func:`build_model`) and
:mod:`.contract` (:func:`check_backbone`, run by ``dogclf check-backbone``: does a backbone work with this network?).
"""

from dogclf.model.contract import check_backbone
from dogclf.model.net import DogClassifierNet, HeadConfig, build_head, build_model

__all__ = ["DogClassifierNet", "HeadConfig", "build_head", "build_model", "check_backbone"]
