"""Asking a running server for predictions: what ``dogclf predict --url`` uses (standard library only).

Each image goes in its own JSON request (``{"images": [<base64>], "top_k": k}``), so one unreadable file gets its own
error while the others are answered, as with local ``dogclf predict``. Any server that speaks the
:mod:`dogclf.serving.codec` wire format works: ``dogclf serve``, or the SageMaker container running dogclf's handlers.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from dogclf.errors import DogclfError

__all__ = ["ServerError", "predict_remote"]

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ServerError(DogclfError, ConnectionError):
    """The server cannot be reached, or answers in a way no dogclf server would."""


def _endpoint(url: str) -> str:
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--url {url!r} is not an http(s) URL; use e.g. http://127.0.0.1:8080")
    path = parts.path.rstrip("/")
    if not path.endswith("/invocations"):
        path += "/invocations"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _opener(endpoint: str) -> urllib.request.OpenerDirector:
    """An opener; a server on this machine is never reached through a proxy from the environment."""
    host = urllib.parse.urlsplit(endpoint).hostname or ""
    if host in _LOOPBACK:
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


def _error_message(body: bytes) -> str | None:
    """The message of a dogclf JSON error body, or ``None`` if the body is not one."""
    try:
        payload = json.loads(body)
        message = payload["error"]["message"]
    except (ValueError, TypeError, KeyError):
        return None
    return message if isinstance(message, str) else None


def _post(opener: urllib.request.OpenerDirector, endpoint: str, data: bytes, top_k: int, timeout: float) -> Any:
    """One image's answer (a dict with ``predictions``), or an ``error`` string for errors about that image.

    Raises:
        ServerError: Connection failures and answers that are not from a dogclf server.
    """
    body = json.dumps({"images": [base64.b64encode(data).decode("ascii")], "top_k": top_k}).encode("utf-8")
    request = urllib.request.Request(
        endpoint, data=body, method="POST", headers={"Content-Type": "application/json", "Accept": "application/json"}
    )
    try:
        with opener.open(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        message = _error_message(raw)
        if message is None:
            raise ServerError(
                f"{endpoint} answered HTTP {exc.code} {exc.reason} without a dogclf error: is it a dogclf server "
                "(`dogclf serve --model MODEL_DIR`)? Check --url."
            ) from exc
        # The request holds one image, which the server calls images[0]; the caller names the file instead.
        return {"error": f"server answered HTTP {exc.code}: {message.removeprefix('images[0]: ')}"}
    except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServerError(
            f"Cannot reach a dogclf server at {endpoint} ({reason}). Start one with "
            "`dogclf serve --model MODEL_DIR`, or check --url."
        ) from exc
    try:
        [answer] = json.loads(raw)["results"]
        if isinstance(answer["predictions"], list):
            return answer
    except (ValueError, TypeError, KeyError):
        pass
    raise ServerError(f"{endpoint} answered 200 with something other than dogclf predictions: {raw[:200]!r}")


def predict_remote(
    url: str, images: Sequence[str | os.PathLike[str]], *, top_k: int = 5, timeout: float = 60.0
) -> list[dict[str, Any]]:
    """Predicts image files with a running server.

    Args:
        url: The server, e.g. ``http://127.0.0.1:8080`` (``/invocations`` is added unless present).
        images: Image files.
        top_k: Breeds per image.
        timeout: Seconds to wait for each answer.

    Returns:
        Per image, in order: ``{"image": path, "predictions": [{"label", "score", "index"}, ...], "unknown": bool}``, or
        ``{"image": path, "error": message}`` for a file that cannot be read or that the server refuses.

    Raises:
        ValueError: A malformed URL.
        ServerError: The server is down or does not speak dogclf's format.
    """
    endpoint = _endpoint(url)
    opener = _opener(endpoint)
    results: list[dict[str, Any]] = []
    for path in images:
        item: dict[str, Any] = {"image": str(path)}
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            item["error"] = f"{path}: {exc.strerror or exc}"
            results.append(item)
            continue
        if not data:
            item["error"] = f"{path}: empty file (0 bytes)"
            results.append(item)
            continue
        answer = _post(opener, endpoint, data, top_k, timeout)
        if "error" in answer:
            item["error"] = f"{path}: {answer['error']}"
        else:
            item["predictions"] = answer["predictions"]
            item["unknown"] = bool(answer.get("unknown", False))
        results.append(item)
    return results
