"""Shared fixtures: a tiny registered backbone, tiny image trees, a tiny installed plugin."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import struct
import sys
import textwrap
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

import dogclf
from dogclf.backbones.registry import default_registry

REPO = Path(__file__).resolve().parents[1]
IMAGEWOOF = REPO.parent / "shared" / "data" / "imagewoof"

# The tiny backbone, as plugin source. It is written to disk (see tiny_plugin_dir) so that subprocesses find it
# through a real entry point, and exec'd here so in-process tests can register the same factory.
TINY_PLUGIN_SOURCE = textwrap.dedent(
    '''
    """A tiny dogclf backbone for tests: 32 px inputs, 16 features, trains in milliseconds."""
    import torch
    from torch import nn

    from dogclf import BackboneSpec, Preprocessing


    def _build(*, pretrained=False, progress=True):
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )


    def tiny(name="tinynet"):
        return BackboneSpec(
            name=name,
            build=_build,
            num_features=16,
            preprocessing=Preprocessing(input_size=32, resize_size=36, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
            weights_source="none",
            description="tiny test backbone",
        )
    '''
)


def _tiny_namespace() -> dict[str, object]:
    namespace: dict[str, object] = {"__name__": "dogclf_tinybb_inprocess"}
    exec(compile(TINY_PLUGIN_SOURCE, "<tiny backbone>", "exec"), namespace)
    return namespace


@pytest.fixture(scope="session", autouse=True)
def _feature_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Points dogclf's default feature cache (and that of CLI subprocesses) into pytest's temp folder, not ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DOGCLF_FEATURE_CACHE", str(tmp_path_factory.getbasetemp() / "feature-cache"))
        patch.setenv("DOGCLF_OPENVINO_CACHE", str(tmp_path_factory.getbasetemp() / "openvino-cache"))
        yield


@pytest.fixture(scope="session", autouse=True)
def _hardware_pinned() -> Iterator[None]:
    """Pins the CPU's bfloat16 answer and the default engine so no test depends on the machine that runs it.

    ``DOGCLF_CPU_BF16`` / ``DOGCLF_ENGINE`` set by whoever runs pytest are kept (``DOGCLF_CPU_BF16=1 pytest`` runs the
    whole suite on the bfloat16 path, ``DOGCLF_ENGINE=openvino pytest`` on OpenVINO); otherwise the suite runs as on a
    CPU without native bfloat16, with torch as the default engine (many tests reach into the torch module). Tests that
    must cover both take the :func:`cpu_bf16` and :func:`engine` fixtures.
    """
    with pytest.MonkeyPatch.context() as patch:
        if "DOGCLF_CPU_BF16" not in os.environ:
            patch.setenv("DOGCLF_CPU_BF16", "0")
        if "DOGCLF_ENGINE" not in os.environ:
            patch.setenv("DOGCLF_ENGINE", "torch")
        yield


@pytest.fixture(params=["0", "1"], ids=["cpu-fp32", "cpu-bf16"])
def cpu_bf16(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Runs the test as on a CPU without native bfloat16, then as on one with it (DOGCLF_CPU_BF16)."""
    monkeypatch.setenv("DOGCLF_CPU_BF16", request.param)
    return request.param == "1"


@pytest.fixture(params=["torch", "openvino"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs the test with each engine as the default of every forward pass (DOGCLF_ENGINE)."""
    if request.param == "openvino":
        pytest.importorskip("openvino", reason="OpenVINO is not installed")
    monkeypatch.setenv("DOGCLF_ENGINE", request.param)
    return request.param


@pytest.fixture
def tiny_spec() -> Iterator[dogclf.BackboneSpec]:
    """A tiny backbone registered in the default registry as ``tinynet`` for the test's duration."""
    spec = _tiny_namespace()["tiny"]()  # type: ignore[operator]
    registry = default_registry()
    registry.register(spec, override=True, source="tests/conftest.py")
    yield registry.get("tinynet")
    registry.unregister("tinynet")


@pytest.fixture(scope="session")
def tiny_plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding an importable plugin module and its dist-info with a real ``dogclf.backbones`` entry point.

    Put it on ``PYTHONPATH`` (subprocesses) or ``sys.path`` and ``importlib.metadata`` finds the entry point
    ``tinynet = dogclf_tinybb:tiny`` of distribution ``dogclf-tinybb 0.1``.
    """
    root = tmp_path_factory.mktemp("tiny_plugin")
    (root / "dogclf_tinybb.py").write_text(TINY_PLUGIN_SOURCE, encoding="utf-8")
    info = root / "dogclf_tinybb-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dogclf-tinybb\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("[dogclf.backbones]\ntinynet = dogclf_tinybb:tiny\n", encoding="utf-8")
    return root


@pytest.fixture
def tiny_plugin(tiny_plugin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dogclf.BackboneSpec:
    """The tiny backbone found in this process through its real entry point (distribution ``dogclf-tinybb 0.1``).

    The process-wide registry is a fresh one for the test, so what other tests registered does not interfere.
    """
    import importlib.metadata

    from dogclf.backbones import registry as registry_module

    monkeypatch.syspath_prepend(str(tiny_plugin_dir))
    monkeypatch.setattr(registry_module, "_DEFAULT", None)
    spec = registry_module.default_registry().get("tinynet")
    assert spec.distribution == "dogclf-tinybb 0.1", importlib.metadata.version("dogclf-tinybb")
    return spec


def plugin_environ(plugin_dir: Path) -> dict[str, str]:
    """Environment for ``dogclf`` subprocesses that can see the tiny plugin in ``plugin_dir``, with no network use."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(plugin_dir), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    return env


@pytest.fixture
def plugin_env(tiny_plugin_dir: Path) -> dict[str, str]:
    """:func:`plugin_environ` for the session's tiny plugin."""
    return plugin_environ(tiny_plugin_dir)


@pytest.fixture
def tiny_tree(tmp_path: Path) -> Path:
    """A dogImages-layout tree of 3 synthetic classes, 40 px images: train 8, valid 3, test 3 per class."""
    return dogclf.make_synthetic_dataset(tmp_path / "data", num_classes=3, per_split=(8, 3, 3), size=40, seed=1)


def train_tiny_model(
    root: Path, *, per_split: tuple[int, int, int] = (8, 3, 3), epochs: int = 1, **train_kwargs: Any
) -> tuple[Path, Path]:
    """Trains ``tinynet`` (registered for the call) on a 3-class synthetic tree under ``root``.

    For module-scoped fixtures, where the function-scoped ``tiny_spec`` cannot be used.

    Returns:
        ``(data_dir, model_dir)``.
    """
    data = dogclf.make_synthetic_dataset(root / "data", num_classes=3, per_split=per_split, size=40, seed=1)
    registry = default_registry()
    registry.register(_tiny_namespace()["tiny"](), override=True, source="tests/conftest.py")  # type: ignore[operator]
    try:
        config = dogclf.TrainConfig(epochs=epochs, batch_size=8, num_workers=0, device="cpu")
        dogclf.train(data, "tinynet", root / "model", config=config, weights=None, progress=False, **train_kwargs)
    finally:
        registry.unregister("tinynet")
    return data, root / "model"


class _ListHandler(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__()
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        warning = "warning: " if record.levelno >= logging.WARNING else ""  # as the CLI prints it
        self.lines.append(warning + record.getMessage())


@contextlib.contextmanager
def captured_log() -> Iterator[list[str]]:
    """The messages dogclf logs at INFO and above inside the block, in order, as the CLI prints them."""
    lines: list[str] = []
    handler = _ListHandler(lines)
    logger = logging.getLogger("dogclf")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


@pytest.fixture
def dogclf_log() -> Iterator[list[str]]:
    """:func:`captured_log` for the whole test."""
    with captured_log() as lines:
        yield lines


def run_cli(
    args: list[str], capsys: pytest.CaptureFixture[str], environ: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """``dogclf ARGS`` in-process (with ``environ``, default ``os.environ``): the exit code, stdout and stderr."""
    from dogclf.cli import main

    code = main(args, environ=environ)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def dogclf_command() -> list[str]:
    """The CLI as a subprocess command, using this interpreter."""
    return [sys.executable, "-m", "dogclf"]


def needs_imagewoof() -> pytest.MarkDecorator:
    """Skip marker for tests that need the real photos."""
    return pytest.mark.skipif(
        not (IMAGEWOOF / "train").is_dir(), reason=f"real photos not found at {IMAGEWOOF} (shared data absent)"
    )


def jpeg(seed: int, size: tuple[int, int] = (80, 60)) -> bytes:
    """The bytes of a random-pixel JPEG of ``size`` (width, height), the same for the same seed."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def png(seed: int) -> bytes:
    """The bytes of an RGBA PNG of :func:`jpeg`'s picture."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(jpeg(seed))).convert("RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims ``width`` x ``height``: opening reads the size, decoding would need it all."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    struct.pack_into(">II", data, 16, width, height)  # IHDR data follows signature (8), length (4), type (4)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.fixture
def moto_environ(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A moto server on 127.0.0.1 (a free port) standing in for AWS, and the environment that points at it.

    Dummy credentials and region, SDK telemetry off, role validation off; no real AWS variable leaks in. The server
    starts empty (moto's state outlives one server in this process, so it is reset) and is stopped after the test.
    """
    import urllib.request

    moto_server = pytest.importorskip("moto.server", reason="moto (dogclf[dev]) is not installed")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    reset = urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST")
    urllib.request.urlopen(reset, timeout=10).close()
    telemetry = tmp_path_factory.mktemp("sagemaker-config") / "config.yaml"
    telemetry.write_text(
        "SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n      TelemetryOptOut: true\n", encoding="utf-8"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SAGEMAKER_"))}
    environ |= {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "AKIATESTINGDOGCLF",
        "AWS_SECRET_ACCESS_KEY": "dogclf-test-secret-never-printed",
        "AWS_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(telemetry.parent / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(telemetry.parent / "no-aws-credentials"),
        "SAGEMAKER_USER_CONFIG_OVERRIDE": str(telemetry),
        "SAGEMAKER_VALIDATE_ROLE": "false",
        "HF_HUB_OFFLINE": "1",
    }
    try:
        yield environ
    finally:
        server.stop()


@pytest.fixture
def moto_aws(moto_environ: dict[str, str]) -> Any:
    """An :class:`~dogclf.sagemaker.aws.Aws` on the moto server, with the bucket ``dogclf-test`` created."""
    from dogclf.sagemaker.aws import Aws

    context = Aws.from_environ(moto_environ)
    context.client("s3").create_bucket(Bucket="dogclf-test")
    return context
