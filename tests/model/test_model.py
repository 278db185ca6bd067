"""Freeze-and-replace-head: which parameters learn, BatchNorm modes, head shapes, the optimizer's groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dogclf
from dogclf.errors import UnknownBackboneError, WeightsUnavailableError
from dogclf.model import DogClassifierNet, HeadConfig, build_head, build_model
from dogclf.training.config import TrainConfig
from dogclf.training.loop import make_optimizer

NUM_CLASSES = 3


def _batch(n: int = 4, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, size, size, generator=generator), torch.arange(n) % NUM_CLASSES


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers (BatchNorm running statistics included)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: nn.Module) -> list[str]:
    return [k for k, v in module.state_dict().items() if not torch.equal(v, before[k])]


def _step(model: DogClassifierNet, config: TrainConfig) -> torch.optim.Optimizer:
    optimizer = make_optimizer(model, config)
    images, labels = _batch()
    model.train()
    loss = nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    return optimizer


def _batchnorms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_frozen_model_trains_only_the_head(tiny_spec: dogclf.BackboneSpec) -> None:
    model = build_model("tinynet", NUM_CLASSES, weights=None)

    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.0.weight", "head.0.bias"}
    assert model.frozen is True
    assert model.training is True  # build_model hands back a model in train mode


def test_frozen_backbone_batchnorm_stays_in_eval_mode(tiny_spec: dogclf.BackboneSpec) -> None:
    model = build_model("tinynet", NUM_CLASSES, weights=None)
    model.eval()

    model.train()

    assert model.head.training
    assert not model.backbone.training
    assert len(_batchnorms(model.backbone)) == 2
    assert not any(bn.training for bn in _batchnorms(model.backbone))


def test_frozen_training_step_changes_the_head_not_the_backbone(tiny_spec: dogclf.BackboneSpec) -> None:
    torch.manual_seed(0)
    model = build_model("tinynet", NUM_CLASSES, weights=None)
    backbone_before, head_before = _snapshot(model.backbone), _snapshot(model.head)

    optimizer = _step(model, TrainConfig(lr=0.1))

    assert len(optimizer.param_groups) == 1
    assert _changed(backbone_before, model.backbone) == []  # weights, running_mean/var, num_batches_tracked
    assert sorted(_changed(head_before, model.head)) == ["0.bias", "0.weight"]
    assert all(p.grad is None for p in model.backbone.parameters())


def test_unfrozen_model_trains_everything(tiny_spec: dogclf.BackboneSpec) -> None:
    torch.manual_seed(0)
    model = build_model("tinynet", NUM_CLASSES, weights=None, freeze=False)
    model.train()
    assert all(p.requires_grad for p in model.parameters())
    assert model.backbone.training
    assert all(bn.training for bn in _batchnorms(model.backbone))
    backbone_before = _snapshot(model.backbone)

    optimizer = _step(model, TrainConfig(lr=0.01, backbone_lr_scale=0.25))

    head_group, backbone_group = optimizer.param_groups
    assert head_group["lr"] == pytest.approx(0.01)
    assert backbone_group["lr"] == pytest.approx(0.0025)
    assert {id(p) for p in head_group["params"]} == {id(p) for p in model.head.parameters()}
    assert {id(p) for p in backbone_group["params"]} == {id(p) for p in model.backbone.parameters()}
    changed = _changed(backbone_before, model.backbone)
    assert {"0.weight", "3.weight", "1.running_mean", "1.running_var", "1.num_batches_tracked"} <= set(changed)


def test_set_frozen_switches_both_ways(tiny_spec: dogclf.BackboneSpec) -> None:
    model = build_model("tinynet", NUM_CLASSES, weights=None, freeze=False)

    model.set_frozen(True)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert not any(bn.training for bn in _batchnorms(model.backbone))
    assert model.head.training

    model.set_frozen(False)
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert all(bn.training for bn in _batchnorms(model.backbone))


@pytest.mark.parametrize("freeze", [True, False])
def test_forward_gives_logits(tiny_spec: dogclf.BackboneSpec, freeze: bool) -> None:
    model = build_model(tiny_spec, 5, weights=None, freeze=freeze)
    images, _ = _batch(n=2)

    logits = model(images)

    assert logits.shape == (2, 5)
    assert logits.requires_grad
    assert model.features(images).requires_grad is not freeze  # a frozen backbone runs without autograd


@pytest.mark.parametrize(
    ("head", "layers"),
    [
        pytest.param(HeadConfig(), [(nn.Linear, (16, 3))], id="linear"),
        pytest.param(HeadConfig(dropout=0.5), [(nn.Dropout, 0.5), (nn.Linear, (16, 3))], id="dropout"),
        pytest.param(HeadConfig(hidden=8), [(nn.Linear, (16, 8)), (nn.ReLU, None), (nn.Linear, (8, 3))], id="hidden"),
        pytest.param(
            HeadConfig(hidden=32, dropout=0.2),
            [(nn.Dropout, 0.2), (nn.Linear, (16, 32)), (nn.ReLU, None), (nn.Dropout, 0.2), (nn.Linear, (32, 3))],
            id="hidden-dropout",
        ),
    ],
)
def test_head_shapes(tiny_spec: dogclf.BackboneSpec, head: HeadConfig, layers: list[tuple[type, object]]) -> None:
    model = build_model("tinynet", NUM_CLASSES, weights=None, head=head)

    assert [type(layer) for layer in model.head] == [kind for kind, _ in layers]
    for layer, (_, detail) in zip(model.head, layers, strict=True):
        if isinstance(layer, nn.Linear):
            assert (layer.in_features, layer.out_features) == detail
        elif isinstance(layer, nn.Dropout):
            assert layer.p == detail
    assert build_head(16, NUM_CLASSES, head).state_dict().keys() == model.head.state_dict().keys()


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"hidden": -1}, "head hidden width must be an int >= 0, got -1"),
        ({"hidden": 1.5}, "head hidden width must be an int >= 0, got 1.5"),
        ({"dropout": 1.0}, r"head dropout must be in \[0, 1\), got 1.0"),
        ({"dropout": -0.1}, r"head dropout must be in \[0, 1\), got -0.1"),
    ],
)
def test_invalid_head_config(kwargs: dict[str, object], expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        HeadConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("num_classes", [1, 0, -3, 2.0, "3"])
def test_num_classes_must_be_an_int_of_at_least_two(tiny_spec: dogclf.BackboneSpec, num_classes: object) -> None:
    with pytest.raises(ValueError, match=rf"num_classes must be an int >= 2, got {num_classes!r}"):
        build_model("tinynet", num_classes, weights=None)  # type: ignore[arg-type]


def test_build_model_errors_come_from_the_backbone(tiny_spec: dogclf.BackboneSpec) -> None:
    with pytest.raises(UnknownBackboneError, match="Unknown backbone 'tinynett'"):
        build_model("tinynett", NUM_CLASSES, weights=None)
    with pytest.raises(WeightsUnavailableError, match="'tinynet' has no pretrained ImageNet weights"):
        build_model("tinynet", NUM_CLASSES)  # weights="imagenet" is the default
