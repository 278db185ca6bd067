"""The network of a model directory, rebuilt from its ``config.json`` with its weights loaded."""

from __future__ import annotations

from pathlib import Path

from dogclf.artifact.checks import check_state
from dogclf.artifact.config import ModelConfig
from dogclf.artifact.manifest import check_manifest
from dogclf.artifact.store import load_state
from dogclf.backbones.spec import BackboneSpec
from dogclf.model import DogClassifierNet, build_head

__all__ = ["build_net"]


def build_net(config: ModelConfig, spec: BackboneSpec, root: Path) -> DogClassifierNet:
    """The network of a model directory, with its weights loaded (no network, no pickle).

    Raises:
        ModelDirError: Weights that do not fit the backbone and head, or files that are not those ``config.json``
            was saved with.
    """
    net = DogClassifierNet(
        spec.build(pretrained=False, progress=False),
        build_head(spec.num_features, len(config.class_names), config.head),
        frozen=True,
    )
    state = load_state(root)
    check_state(net, state, root, backbone=spec.name)
    check_manifest(config, root)  # last: a broken file is named by the checks above, a mixed-up save here
    net.load_state_dict(state)
    return net
