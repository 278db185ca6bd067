"""``dogclf export``: a model directory as one ONNX file for other runtimes.

The exported graph takes the normalised float32 batch ``images`` ``(batch, 3, H, W)`` (dynamic batch) and returns
``logits`` ``(batch, classes)`` and the backbone ``features`` ``(batch, num_features)``, in float32. What a runtime
needs around it travels inside the file: the ONNX model's metadata (and TorchScript's extra file ``config.json``)
hold the class names, the preprocessing (resize, crop, mean, std), the calibration (temperature, unknown threshold)
and the SHA-256 of the ``model.safetensors`` it came from, so a stale export is recognised.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dogclf.artifact.config import ModelConfig
from dogclf.errors import DogclfError

__all__ = [
    "FORMATS",
    "ExportError",
    "ExportReport",
    "ExportedNet",
    "export_model",
    "export_onnx",
    "onnx_metadata",
    "weights_digest",
]

FORMATS = ("onnx",)


class ExportError(DogclfError, ValueError):
    """A model that cannot be exported as asked (an existing file, a missing exporter, a failed check)."""


class ExportedNet(nn.Module):
    """The exported graph: ``images -> (logits, features)``, the head in float32 on the features."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(logits, features)``."""
        features = self.backbone(images)
        return self.head(features), features


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_model` wrote.

    Attributes:
        path: The file.
        format: ``"onnx"``.
        opset: The ONNX opset.
        seconds: How long the export took.
        max_abs_diff: Largest difference between the file's logits and torch's on a check batch.
    """

    path: Path
    format: str
    opset: int
    seconds: float
    max_abs_diff: float

    def summary(self) -> str:
        """Lines for the CLI."""
        size = self.path.stat().st_size / 1e6
        return (
            f"Exported {self.format}, opset {self.opset}, dynamic batch, to {self.path} ({size:.1f} MB) "
            f"in {self.seconds:.0f} s\n"
            f"  input   images (batch, 3, H, W) float32, normalised as the model's preprocessing says\n"
            f"  outputs logits (batch, classes), features (batch, num_features), float32\n"
            f"  check   logits within {self.max_abs_diff:.1e} of torch fp32 on a check batch"
        )


def weights_digest(model_dir: str | os.PathLike[str]) -> str:
    """SHA-256 of a model directory's ``model.safetensors`` (recorded in exports to spot stale ones)."""
    from dogclf.artifact.store import WEIGHTS_NAME

    digest = hashlib.sha256()
    with open(Path(model_dir) / WEIGHTS_NAME, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _metadata(config: ModelConfig | None, digest: str) -> dict[str, str]:
    keep = ("backbone", "class_names", "class_folders", "preprocessing", "calibration", "num_features", "head")
    saved = config.to_dict() if config is not None else {}
    return {
        "dogclf_config": json.dumps({k: saved[k] for k in keep if k in saved}),
        "dogclf_weights_sha256": digest,
    }


def onnx_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata an ONNX file written by :func:`export_onnx` carries (empty for other files)."""
    import onnx

    model = onnx.load(os.fspath(path), load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}


def _example(preprocessing: Any, batch: int = 2) -> torch.Tensor:
    size = preprocessing.input_size
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def export_onnx(
    net: nn.Module,
    preprocessing: Any,
    path: str | os.PathLike[str],
    *,
    opset: int | None = None,
    metadata: Mapping[str, str] | None = None,
) -> int:
    """Writes ``net`` (``backbone`` + ``head``) as one ONNX file with a dynamic batch; returns the opset written.

    Raises:
        MissingExtraError: The onnx extra is not installed.
        ExportError: torch cannot export the backbone.
    """
    from dogclf._extras import require

    onnx = require("onnx", extra="onnx", purpose="ONNX export")
    require("onnxscript", extra="onnx", purpose="ONNX export (torch's exporter)")
    model = ExportedNet(net.get_submodule("backbone"), net.get_submodule("head")).eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    target = Path(path)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracing notes are not the user's to fix
            torch.onnx.export(
                model,
                (_example(preprocessing),),
                os.fspath(target),
                input_names=["images"],
                output_names=["logits", "features"],
                dynamic_shapes=({0: batch},),
                opset_version=opset,
                dynamo=True,
                external_data=False,
            )
    except Exception as exc:
        raise ExportError(f"torch could not export the model to ONNX: {type(exc).__name__}: {exc}") from exc
    proto = onnx.load(os.fspath(target))
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, os.fspath(target))
    return next(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx"))


def _check(net: nn.Module, preprocessing: Any, path: Path) -> float:
    """Largest |logit difference| between the file (run by ONNX Runtime) and eager torch fp32."""
    images = _example(preprocessing, batch=3)
    with torch.inference_mode():
        expected = net.get_submodule("head")(net.get_submodule("backbone")(images))
    try:
        import onnxruntime
    except ImportError:
        return float("nan")
    session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    logits = torch.from_numpy(session.run(["logits"], {"images": images.numpy()})[0])
    return float((logits - expected).abs().max())


def export_model(
    model_dir: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    format: str = "onnx",
    opset: int | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Exports a model directory to ONNX and checks the file against torch (with ONNX Runtime).

    ``dogclf serve --engine onnxruntime|openvino`` uses ``MODEL_DIR/model.onnx`` when it was exported from the
    directory's current weights. TorchScript is not offered: torch deprecates it (``torch.jit.load`` warns).

    Args:
        model_dir: A directory written by ``dogclf train``.
        output: The file (default ``MODEL_DIR/model.onnx``).
        format: ``"onnx"``.
        opset: ONNX opset (default: the exporter's own, 18 or later).
        overwrite: Replace an existing file.

    Returns:
        What was written.

    Raises:
        ExportError: An unknown format, an existing file without ``overwrite``, or a failed export.
        ModelDirError: The model directory cannot be loaded.
    """
    from dogclf.artifact.net import build_net
    from dogclf.artifact.store import load_config, resolve_spec

    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")
    root = Path(model_dir)
    config = load_config(root)
    spec = resolve_spec(config, root)
    target = Path(output) if output is not None else root / "model.onnx"
    if target.exists() and not overwrite:
        raise ExportError(f"{str(target)!r} already exists; pass --overwrite to replace it, or choose another -o.")
    target.parent.mkdir(parents=True, exist_ok=True)
    net = build_net(config, spec, root).eval()
    metadata = _metadata(config, weights_digest(root))
    started = time.perf_counter()
    partial = target.with_name(f".{target.name}.tmp")
    try:
        written_opset = export_onnx(net, spec.preprocessing, partial, opset=opset, metadata=metadata)
        diff = _check(net, spec.preprocessing, partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return ExportReport(target, format, written_opset, time.perf_counter() - started, diff)
