"""``dogclf package``: the archive's layout, and serving it through the toolkit with nothing but its ``code/``."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO, dogclf_command, jpeg

from dogclf.artifact import save_model
from dogclf.backbones import registry as registry_module
from dogclf.backbones.registry import BackboneRegistry
from dogclf.classifier import Classifier
from dogclf.data.folder import ClassInfo
from dogclf.errors import ModelDirError
from dogclf.model import HeadConfig, build_model
from dogclf.serving.package import (
    CONTAINER_PROVIDED,
    SERVING_REQUIREMENTS,
    PackageError,
    merge_requirements,
    package_model,
)

pytest.importorskip(
    "sagemaker_pytorch_serving_container.handler_service", reason="the SageMaker toolkit (dogclf[dev]) is not installed"
)

# Runs in a fresh interpreter whose PYTHONPATH is only the unpacked archive's code/: the toolkit's HandlerService,
# with a stand-in for TorchServe's context, serves one JPEG, and we report where dogclf and the plugin came from.
SERVE_SCRIPT = r"""
import json, sys
from pathlib import Path

model_dir, image = Path(sys.argv[1]), Path(sys.argv[2]).read_bytes()


class Request:
    def __init__(self, headers):
        self.headers, self.status, self.phrase, self.response = headers, 200, None, {}

    def get_request_properties(self):
        return self.headers

    def report_status(self, code, reason_phrase=None):
        self.status, self.phrase = code, reason_phrase

    def add_response_property(self, key, value):
        self.response[key] = value


class Context:
    model_name = "model"

    def __init__(self):
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None, "batch_size": 1}
        self.request_processor = [Request({})]

    def set_response_status(self, code=200, phrase="", idx=0):
        self.request_processor[idx].report_status(code, phrase)

    def set_response_content_type(self, idx, value):
        self.request_processor[idx].add_response_property("content-type", value)


from sagemaker_pytorch_serving_container.handler_service import HandlerService

context = Context()
service = HandlerService()
service.initialize(context)
answers = []
for content_type, body in (("image/jpeg", image), ("text/plain", b"hi")):
    context.request_processor = [Request({"Content-Type": content_type})]
    [body] = service.handle([{"body": bytearray(body)}], context)
    answers.append({"status": context.request_processor[0].status, "body": body})
import dogclf, dogclf_tinybb
print(json.dumps({
    "dogclf": dogclf.__file__,
    "plugin": dogclf_tinybb.__file__,
    "inference": sys.modules["inference"].__file__,
    "answers": answers,
}))
"""


def run(args: list[str], env: dict[str, str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, check=False, **kwargs)


@pytest.fixture
def plugin_model(tmp_path: Path, tiny_plugin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Classifier]:
    """A model on the tiny plugin backbone (found through its real entry point), and the in-process Classifier."""
    monkeypatch.syspath_prepend(str(tiny_plugin_dir))
    # A fresh process-wide registry, so load_model (inside package_model) finds the plugin whatever ran before.
    monkeypatch.setattr(registry_module, "_DEFAULT", None)
    registry = BackboneRegistry(
        entry_points=lambda group: [e for e in importlib.metadata.entry_points(group=group) if e.name == "tinynet"]
    )
    spec = registry.get("tinynet")
    assert spec.distribution == "dogclf-tinybb 0.1"
    torch.manual_seed(1)
    net = build_model(spec, 4, weights=None).eval()
    with torch.no_grad():
        for parameter in net.head.parameters():
            parameter.mul_(30)
    classes = [ClassInfo(folder=f"{i:03d}.Dog_{i}", name=f"Dog {i}") for i in range(4)]
    root = save_model(net, tmp_path / "model", spec=spec, classes=classes, head=HeadConfig().to_dict())
    (root / "checkpoint.pt").write_bytes(b"not for the archive")
    config = json.loads((root / "config.json").read_text())
    return root, Classifier(net, spec=spec, class_names=config["class_names"], config=config)


@pytest.mark.slow
def test_packaged_plugin_model_serves_from_its_own_code_dir(
    plugin_model: tuple[Path, Classifier], plugin_env: dict[str, str], tmp_path: Path, tiny_plugin_dir: Path
) -> None:
    model, classifier = plugin_model
    archive = tmp_path / "out" / "model.tar.gz"
    archive.parent.mkdir()
    packaged = run([*dogclf_command(), "package", str(model), "-o", str(archive)], plugin_env)
    assert packaged.returncode == 0, packaged.stderr
    assert f"Wrote {archive}" in packaged.stdout
    for shown in ("model.safetensors", "kB", "code/dogclf/", "plugin dogclf-tinybb 0.1", "code/requirements.txt:"):
        assert shown in packaged.stdout
    assert os.listdir(archive.parent) == ["model.tar.gz"]  # no temporary file left behind

    with tarfile.open(archive) as tar:
        names = tar.getnames()
        unpacked = tmp_path / "unpacked"
        tar.extractall(unpacked, filter="data")
    assert {"config.json", "model.safetensors", "code/inference.py", "code/requirements.txt"} <= set(names)
    assert {"code/dogclf/__init__.py", "code/dogclf/serving/handlers.py", "code/dogclf/py.typed"} <= set(names)
    assert {"code/dogclf_tinybb.py", "code/dogclf_tinybb-0.1.dist-info/entry_points.txt"} <= set(names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or n.endswith("checkpoint.pt")]
    assert (unpacked / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()
    requirements = (unpacked / "code" / "requirements.txt").read_text().splitlines()
    assert requirements == list(SERVING_REQUIREMENTS)  # the tiny plugin declares no requirements; no torch

    image = tmp_path / "dog.jpg"
    image.write_bytes(jpeg(4, size=(90, 70)))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SAGEMAKER_PROGRAM")}
    env |= {"PYTHONPATH": str(unpacked / "code"), "SAGEMAKER_PROGRAM": "inference.py", "HF_HUB_OFFLINE": "1"}
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    served = run([sys.executable, "-c", SERVE_SCRIPT, str(unpacked), str(image)], env, cwd=elsewhere)
    assert served.returncode == 0, served.stderr
    report = json.loads(served.stdout.strip().splitlines()[-1])
    code = unpacked / "code"
    assert Path(report["dogclf"]) == code / "dogclf" / "__init__.py"  # the vendored copy, not the editable install
    assert Path(report["plugin"]) == code / "dogclf_tinybb.py"  # found through the vendored dist-info's entry point
    assert Path(report["inference"]) == code / "inference.py"
    assert str(tiny_plugin_dir) not in served.stderr
    ok, unsupported = report["answers"]
    assert ok["status"] == 200
    assert unsupported["status"] == 415
    answer, wanted = json.loads(ok["body"]), classifier.classify(image.read_bytes())[0].to_dict()
    assert [p["label"] for p in answer["predictions"]] == [p["label"] for p in wanted["predictions"]]
    assert [p["score"] for p in answer["predictions"]] == pytest.approx([p["score"] for p in wanted["predictions"]])
    assert answer["unknown"] == wanted["unknown"]


def test_package_refuses_an_existing_output_unless_overwrite(plugin_model: tuple[Path, Classifier], tmp_path: Path):
    model, _ = plugin_model
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(b"old")
    with pytest.raises(PackageError, match="already exists; pass --overwrite"):
        package_model(model, archive)
    assert archive.read_bytes() == b"old"
    report = package_model(model, archive, overwrite=True)
    assert report.size == archive.stat().st_size > 3
    assert [e.name for e in report.entries][:4] == [
        "config.json",
        "model.safetensors",
        "code/inference.py",
        "code/requirements.txt",
    ]
    with pytest.raises(PackageError, match="is a folder"):
        package_model(model, tmp_path)
    with pytest.raises(PackageError, match="does not exist; create it first"):
        package_model(model, tmp_path / "missing" / "model.tar.gz")


def test_package_refuses_an_invalid_model_dir(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(ModelDirError, match=r"missing model\.safetensors"):
        package_model(tmp_path / "model", tmp_path / "model.tar.gz")
    assert not (tmp_path / "model.tar.gz").exists()
    result = run(
        [*dogclf_command(), "package", str(tmp_path / "nope"), "-o", str(tmp_path / "m.tar.gz")], dict(os.environ)
    )
    assert result.returncode == 2
    assert re.search(r"dogclf package: error: Model directory .*nope' does not exist", result.stderr)


def test_package_refuses_a_backbone_registered_in_process(tiny_spec: Any, tmp_path: Path) -> None:
    net = build_model(tiny_spec, 3, weights=None)
    classes = [ClassInfo(folder=f"c{i}", name=f"c{i}") for i in range(3)]
    model = save_model(net, tmp_path / "model", spec=tiny_spec, classes=classes, head=HeadConfig().to_dict())
    with pytest.raises(PackageError, match=r"comes from tests/conftest.py, not from an installed plugin package"):
        package_model(model, tmp_path / "model.tar.gz")
    assert sorted(os.listdir(tmp_path)) == ["model"]


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["safetensors>=0.4", "torch>=2.3", "torchvision", "dogclf>=0.1"], ["safetensors>=0.4"]),
        (["pillow>=10", "Pillow<13", "pillow>=10"], ["pillow>=10,<13"]),
        (["pytest>=8; extra == 'dev'", "numpy; python_version >= '3.10'"], ["numpy; python_version >= '3.10'"]),
        (["efficientnet-lite-pytorch>=0.1", "efficientnet_lite_pytorch"], ["efficientnet-lite-pytorch>=0.1"]),
    ],
)
def test_merge_requirements(lines: list[str], expected: list[str]) -> None:
    assert merge_requirements(lines) == expected


def test_serving_requirements_match_pyproject() -> None:
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    for requirement in SERVING_REQUIREMENTS:
        assert f'  "{requirement}",\n' in pyproject  # listed in [project] dependencies with the same specifier
    assert {"torch", "torchvision"} <= CONTAINER_PROVIDED
