"""The backbone contract, checked on every registered backbone (plugins included) and on broken ones."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import dogclf_command
from torch import nn

import dogclf
from dogclf.errors import BackboneContractError, InvalidBackboneSpecError, UnknownBackboneError

# Computed at collection: every backbone the default registry knows, so an installed plugin is checked too.
REGISTERED = [spec.name for spec in dogclf.list_backbones()]


def test_registered_backbones_include_builtins_and_plugin() -> None:
    assert {"resnet18", "resnet50", "inception_v3", "efficientnet_lite0"} <= set(REGISTERED)


@pytest.mark.parametrize("name", REGISTERED, ids=REGISTERED)
def test_registered_backbone_meets_the_contract(name: str) -> None:
    spec = dogclf.get_backbone(name)

    report = dogclf.check_backbone(name)

    assert report["name"] == name
    assert report["distribution"] == spec.distribution != ""
    assert report["num_features"] == spec.num_features
    assert report["input_size"] == spec.preprocessing.input_size
    assert report["parameters"] > 0


def test_tiny_backbone_meets_the_contract(tiny_spec: dogclf.BackboneSpec) -> None:
    by_name = dogclf.check_backbone("tinynet")
    by_spec = dogclf.check_backbone(tiny_spec, batch_size=3)

    expected_params = 3 * 8 * 9 + 8 + 2 * 8 + 8 * 16 * 9 + 16 + 2 * 16
    assert by_name == by_spec
    assert by_name == {
        "name": "tinynet",
        "distribution": "tests/conftest.py",
        "num_features": 16,
        "input_size": 32,
        "parameters": expected_params,
    }


# --- broken backbones -----------------------------------------------------------------------------------------


class _Wrapped(nn.Module):
    """The tiny backbone inside a wrapper whose forward (or train) breaks one rule."""

    def __init__(self, body: nn.Module, kind: str) -> None:
        super().__init__()
        self.body = body
        self.kind = kind
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = self.body(images)
        if self.kind == "tuple-in-train" and self.training:
            return out, out
        if self.kind == "infinite":
            return out + float("inf")
        if self.kind == "random-in-eval":
            return out + torch.rand_like(out)
        if self.kind == "counts-calls":
            self.calls += 1
        return out

    def train(self, mode: bool = True) -> _Wrapped:
        super().train(mode)
        if self.kind == "stubborn-batchnorm":
            self.body[1].train(True)
        if self.kind == "unfreezes-itself":
            for param in self.parameters():
                param.requires_grad_(True)
        return self


def _wrapped(tiny: dogclf.BackboneSpec, kind: str) -> Callable[..., nn.Module]:
    def build(*, pretrained: bool = False, progress: bool = True) -> nn.Module:
        return _Wrapped(tiny.build(pretrained=pretrained, progress=progress), kind)

    return build


def _no_parameters(*, pretrained: bool = False, progress: bool = True) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _fails_to_build(*, pretrained: bool = False, progress: bool = True) -> nn.Module:
    raise ImportError("No module named 'efficientnet_lite_pytorch'")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(
            {"num_features": 17},
            [
                "forward in eval mode returned shape (2, 16), expected (2, 17)",
                "forward in train mode returned shape (2, 16), expected (2, 17)",
            ],
            id="wrong-num-features",
        ),
        pytest.param(
            {"build": "tuple-in-train"},
            ["forward in train mode returned tuple, expected a Tensor"],
            id="tuple-in-train",
        ),
        pytest.param(
            {"build": _no_parameters, "num_features": 3}, ["the module has no parameters"], id="no-parameters"
        ),
        pytest.param(
            {"build": _no_parameters},
            ["the module has no parameters", "forward in eval mode returned shape (2, 3), expected (2, 16)"],
            id="every-failure-listed",
        ),
        pytest.param({"build": "infinite"}, ["forward in eval mode returned non-finite values"], id="non-finite"),
        pytest.param({"build": "random-in-eval"}, ["eval-mode forward is not deterministic"], id="random-in-eval"),
        pytest.param(
            {"build": "stubborn-batchnorm"},
            [
                "BatchNorm layers stayed in train mode while frozen: body.1",
                "a frozen training step changed backbone state: body.1.running_mean",
            ],
            id="batchnorm-not-frozen",
        ),
        pytest.param(
            {"build": "unfreezes-itself"}, ["freezing left backbone parameters trainable"], id="unfreezes-itself"
        ),
        pytest.param(
            {"build": "counts-calls"}, ["a frozen training step changed backbone state: calls"], id="mutates-buffer"
        ),
        pytest.param(
            {"build": _fails_to_build},
            ["build(pretrained=False, progress=False) raised ImportError: No module named 'efficientnet_lite_pytorch'"],
            id="build-raises",
        ),
    ],
)
def test_broken_backbone_fails_naming_the_broken_point(
    tiny_spec: dogclf.BackboneSpec, change: dict[str, object], expected: list[str]
) -> None:
    if isinstance(change.get("build"), str):
        change = {**change, "build": _wrapped(tiny_spec, str(change["build"]))}
    broken = dataclasses.replace(tiny_spec, name="brokennet", distribution="acme-backbones 0.3", **change)

    with pytest.raises(BackboneContractError) as excinfo:
        dogclf.check_backbone(broken)

    message = str(excinfo.value)
    assert message.startswith("Backbone 'brokennet' (acme-backbones 0.3)")
    for fragment in expected:
        assert fragment in message
    assert isinstance(excinfo.value, AssertionError)


def test_check_backbone_validates_the_spec(tiny_spec: dogclf.BackboneSpec) -> None:
    with pytest.raises(InvalidBackboneSpecError, match="num_features must be a positive int, got 0"):
        dogclf.check_backbone(dataclasses.replace(tiny_spec, num_features=0))


def test_check_backbone_unknown_name() -> None:
    with pytest.raises(UnknownBackboneError, match="Unknown backbone 'no_such_backbone'"):
        dogclf.check_backbone("no_such_backbone")


# --- the CLI --------------------------------------------------------------------------------------------------


def _check_cli(name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*dogclf_command(), "check-backbone", name], capture_output=True, text=True, env=env, timeout=240, check=False
    )


def test_cli_check_backbone_installed_plugin() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    result = _check_cli("efficientnet_lite0", env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK efficientnet_lite0 (dogclf-efficientnet-lite ")
    assert "1280 features at 224px" in result.stdout


def test_cli_check_backbone_plugin_on_pythonpath(plugin_env: dict[str, str], tiny_plugin_dir: Path) -> None:
    result = _check_cli("tinynet", plugin_env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK tinynet (dogclf-tinybb 0.1): 16 features at 32px, 1,440 parameters"
