"""The one place smdebug is imported, with the two shims smdebug 1.0.34 (2023, unmaintained) needs today.

1. **protobuf.** smdebug's ``*_pb2`` modules are old generated code that protobuf >= 4 refuses to load
   ("Descriptors cannot be created directly") unless protobuf runs its pure-Python implementation. protobuf reads
   ``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION`` once, when it is first imported, so it must be set before anything
   imports protobuf (TensorBoard, ONNX and the SageMaker SDK do). :func:`import_smdebug` sets it when protobuf is not
   loaded yet, and says what to do when it is already loaded with another implementation.
2. **numpy.** smdebug writes tensors with ``ndarray.tostring()``, which numpy 2.3 removed. ``make_tensor_proto`` is
   replaced, in ``smdebug.core.tfevent.util`` and in ``smdebug.core.writer`` (which imports it by name), by the same
   function using ``tobytes()``.

smdebug declares ``protobuf<=3.20.3``, which clashes with ONNX; dogclf's install line installs it with ``--no-deps``
(see ``constraints.txt``) and the ``dogclf[debug]`` extra adds the dependencies it does not declare.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from types import ModuleType
from typing import Any

from dogclf.diagnostics.errors import MissingExtraError

__all__ = ["SmdebugUnavailableError", "import_smdebug"]

INSTALL_HINT = (
    'pip install "dogclf[debug]" && pip install -c constraints.txt --no-deps smdebug pyinstrument pyinstrument-cext'
)
_PATCHED = False


class SmdebugUnavailableError(MissingExtraError):
    """smdebug cannot be imported here (not installed, or protobuf already loaded in a mode it cannot use)."""


def import_smdebug() -> ModuleType:
    """Imports ``smdebug.pytorch`` with the shims applied; returns it.

    Raises:
        SmdebugUnavailableError: When smdebug is not installed, or protobuf was imported earlier in this process
            with its C implementation, naming the fix.
    """
    if not _installed():
        raise SmdebugUnavailableError(f"SageMaker Debugger's smdebug is not installed. Install it with: {INSTALL_HINT}")
    _select_python_protobuf()
    try:
        with warnings.catch_warnings():
            # protobuf deprecates the descriptor calls of old generated code, and six's importer trips an
            # ImportWarning on Python 3.11; both come from smdebug's own import and say nothing about this run.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", ImportWarning)
            import smdebug.core.tfevent.util as tfevent_util
            import smdebug.core.writer as writer
            import smdebug.pytorch as smd
    except ModuleNotFoundError as exc:
        raise SmdebugUnavailableError(
            f"SageMaker Debugger's smdebug is not installed ({exc.name} is missing). Install it with: {INSTALL_HINT}"
        ) from exc
    except TypeError as exc:  # protobuf's "Descriptors cannot be created directly"
        raise SmdebugUnavailableError(_protobuf_message()) from exc
    _patch_tostring(tfevent_util, writer)
    return smd


def _installed() -> bool:
    try:
        return importlib.util.find_spec("smdebug") is not None
    except ValueError:  # sys.modules["smdebug"] is None: imports of it are blocked
        return False


def _select_python_protobuf() -> None:
    # protobuf and smdebug read these from the process environment when first imported: it has to be os.environ.
    os.environ.setdefault("SMDEBUG_LOG_LEVEL", "warning")  # its INFO lines would drown dogclf's log lines
    if "google.protobuf.internal.api_implementation" not in sys.modules:
        os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"
        return
    from google.protobuf.internal import api_implementation

    if api_implementation.Type() != "python":
        raise SmdebugUnavailableError(_protobuf_message())


def _protobuf_message() -> str:
    return (
        "smdebug needs protobuf's pure-Python implementation, but protobuf was already imported in this process with "
        "another one. Set PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python in the environment before starting Python "
        "(or create the smdebug hook before importing TensorBoard, ONNX or the SageMaker SDK)."
    )


def _patch_tostring(tfevent_util: Any, writer: Any) -> None:
    global _PATCHED
    if _PATCHED:
        return
    import numpy as np

    original = tfevent_util.make_tensor_proto

    def make_tensor_proto(nparray_data: Any, tag: str) -> Any:
        is_number, dtype = tfevent_util._get_proto_dtype(nparray_data.dtype)
        if not is_number:
            return original(nparray_data, tag)  # strings: no tostring() on that path
        dims = [tfevent_util.TensorShapeProto.Dim(size=d, name=f"{tag}_{d}") for d in nparray_data.shape]
        return tfevent_util.TensorProto(
            dtype=dtype,
            tensor_content=np.ascontiguousarray(nparray_data).tobytes(),
            tensor_shape=tfevent_util.TensorShapeProto(dim=dims),
        )

    tfevent_util.make_tensor_proto = make_tensor_proto
    writer.make_tensor_proto = make_tensor_proto
    _PATCHED = True
