"""The feature cache's shard file: a safetensors file with a float32 matrix, its rows' image keys and a checksum.

A shard is a standard safetensors file (8-byte little-endian header length, JSON header, raw data) holding one
tensor ``features`` ``(n, F)`` float32; the header's ``__metadata__`` holds ``format``, ``keys`` (a JSON list of
``[sha256, size]``, one per row) and ``sha256`` (of the matrix bytes). Reading goes through plain ``open()`` so that
a file that cannot be read (``OSError``: permission denied, an I/O error) is told apart from one whose bytes are not a
valid shard (:class:`DamagedShardError`): the cache skips the first and removes only the second.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dogclf.features.keys import ImageKey

if TYPE_CHECKING:
    import torch

__all__ = ["DamagedShardError", "read_features", "read_keys", "shard_bytes"]

_MAX_HEADER = 64 << 20


class DamagedShardError(ValueError):
    """A shard file that was read but does not verify: truncated, a damaged header, or a checksum mismatch."""


def shard_bytes(keys: Sequence[ImageKey], matrix: torch.Tensor, *, format_version: int) -> bytes:
    """The bytes of a shard holding ``matrix`` (float32, one row per key)."""
    from safetensors.torch import save

    matrix = matrix.detach().to("cpu").float().contiguous()
    if len(keys) != len(matrix):
        raise ValueError(f"a shard needs one key per row: {len(keys)} keys for {len(matrix)} rows")
    metadata = {
        "format": str(format_version),
        "keys": json.dumps([[key.sha256, key.size] for key in keys]),
        "sha256": hashlib.sha256(matrix.numpy().tobytes()).hexdigest(),
    }
    return save({"features": matrix}, metadata=metadata)


def read_keys(path: str | os.PathLike[str], *, format_version: int) -> list[ImageKey]:
    """The row keys of a shard, from its header alone.

    Raises:
        OSError: The file cannot be read (``FileNotFoundError`` if it is gone).
        DamagedShardError: Its header is damaged, it is shorter than its header says, or of another format.
    """
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        prefix = file.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 0 < length <= min(_MAX_HEADER, size - 8):
            raise DamagedShardError(f"header length {length} in a file of {size} bytes")
        header = _parse_header(file.read(length))
    keys, _, end = _layout(header, format_version)
    if 8 + length + end != size:
        raise DamagedShardError(f"truncated or padded: {size} bytes, the header describes {8 + length + end}")
    return keys


def read_features(path: str | os.PathLike[str], *, format_version: int) -> tuple[list[ImageKey], torch.Tensor]:
    """A shard's row keys and its ``(n, F)`` float32 matrix, checksum verified.

    Raises:
        OSError: The file cannot be read.
        DamagedShardError: It does not verify.
    """
    import torch

    with open(path, "rb") as file:
        data = file.read()
    length = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if not 0 < length <= min(_MAX_HEADER, len(data) - 8):
        raise DamagedShardError(f"header length {length} in a file of {len(data)} bytes")
    header = _parse_header(data[8 : 8 + length])
    keys, start, end = _layout(header, format_version)
    body = data[8 + length + start : 8 + length + end]
    if 8 + length + end != len(data):
        raise DamagedShardError(f"truncated or padded: {len(data)} bytes, the header describes {8 + length + end}")
    if hashlib.sha256(body).hexdigest() != header["__metadata__"].get("sha256"):
        raise DamagedShardError("checksum mismatch")
    rows, width = header["features"]["shape"]
    matrix = torch.frombuffer(bytearray(body), dtype=torch.float32).reshape(rows, width)
    return keys, matrix


def _parse_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise DamagedShardError(f"damaged header ({exc})") from exc
    if not isinstance(header, dict):
        raise DamagedShardError("damaged header (not a JSON object)")
    return header


def _layout(header: dict[str, Any], format_version: int) -> tuple[list[ImageKey], int, int]:
    """The keys and the data offsets of the matrix, after checking the header describes a shard of this format."""
    try:
        meta = header["__metadata__"]
        if meta.get("format") != str(format_version):
            raise DamagedShardError(f"format {meta.get('format')!r}, expected {format_version}")
        keys = [ImageKey(str(sha), int(size)) for sha, size in json.loads(meta["keys"])]
        entry = header["features"]
        rows, width = (int(n) for n in entry["shape"])
        start, end = (int(n) for n in entry["data_offsets"])
    except DamagedShardError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DamagedShardError(f"damaged header ({type(exc).__name__}: {exc})") from exc
    if entry.get("dtype") != "F32" or len(keys) != rows or end - start != rows * width * 4:
        raise DamagedShardError(f"{len(keys)} keys for a {entry.get('dtype')} matrix of shape {entry['shape']}")
    return keys, start, end
