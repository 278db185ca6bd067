"""Answers printed for people: ``dogclf predict`` and ``dogclf sagemaker invoke`` show the same text and JSON.

An answer is the JSON object the server returns per image (``{"image", "predictions", ...}`` or ``{"image",
"error"}``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from dogclf._json import dumps

__all__ = ["print_predictions", "text_lines"]


def text_lines(item: dict[str, Any]) -> Iterator[str]:
    """The lines ``dogclf predict`` prints for one answer: the image, then a ranked breed per line (or its error)."""
    yield item["image"]
    if "error" in item:
        yield f"  error: {item['error']}"
        return
    for p in item["predictions"]:
        yield f"  {p['score']:6.1%}  {p['label']}"
    if item.get("unknown"):
        yield "  unknown: looks like none of the known breeds (top score under the model's threshold)"


def print_predictions(results: Sequence[dict[str, Any]], *, as_json: bool) -> int:
    """Prints answers as ``dogclf predict`` does (text, or a JSON list); returns 1 if any image failed, else 0."""
    if as_json:
        print(dumps(list(results), indent=2))
    else:
        for item in results:
            print("\n".join(text_lines(item)))
    return 1 if any("error" in item for item in results) else 0
