"""Decoding real-world image files to RGB with Pillow, and finding the broken ones."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from dogclf.errors import UnreadableImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGE_FORMATS",
    "IMAGE_MEDIA_TYPES",
    "SUPPORTED_FORMATS_TEXT",
    "find_unreadable",
    "is_image_file",
    "load_rgb",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# The Pillow formats an image file may be in, whatever its name: those of IMAGE_EXTENSIONS (Pillow's JPEG opener also
# gives the MPO files of phones that store several pictures). Nothing else is even identified: EPS would run
# Ghostscript on the bytes, and every other plugin is code that untrusted uploads need not reach.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
# The media type of each file name ending: what clients send as Content-Type, and what servers accept.
IMAGE_MEDIA_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".bmp": "image/bmp",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}
SUPPORTED_FORMATS_TEXT = "JPEG, PNG, WebP, BMP, GIF or TIFF"
_BACKGROUND = (255, 255, 255)


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` has one of :data:`IMAGE_EXTENSIONS` (case-insensitive) and is not hidden."""
    name = os.path.basename(path)
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def load_rgb(source: str | os.PathLike[str] | bytes | Image.Image, *, min_size: int | None = None) -> Image.Image:
    """Decodes an image to an upright RGB Pillow image.

    Handles greyscale, CMYK, 16-bit, palette and alpha images (alpha is
    composited on white) and EXIF orientation. For JPEGs much larger than
    ``min_size``, Pillow's draft mode decodes at a reduced scale that keeps the
    shorter side at least ``min_size``, which is several times faster; other
    formats are reduced by a whole factor right after decoding, before any
    conversion, so a large photo's full-size pixels live only briefly.

    Args:
        source: A path, the file's bytes, or an already opened image.
        min_size: Shorter side the caller will resize to; enables draft mode.

    Returns:
        A loaded RGB image.

    Raises:
        UnreadableImageError: With the path and the reason.
    """
    label = "<bytes>" if isinstance(source, bytes) else "<image>" if isinstance(source, Image.Image) else str(source)
    opened: Image.Image | None = None  # closed below: multi-frame files and refused images keep their file open
    result: Image.Image | None = None
    try:
        if isinstance(source, Image.Image):
            image = source
        else:
            image = opened = Image.open(
                io.BytesIO(source) if isinstance(source, bytes) else source, formats=IMAGE_FORMATS
            )
        width, height = image.size
        limit = Image.MAX_IMAGE_PIXELS
        if limit and width * height > limit:
            raise UnreadableImageError(
                f"{label}: {width}x{height} pixels is over the decompression-bomb limit of {limit} pixels; not decoded"
            )
        drafted = None
        if min_size and min(width, height) >= 2 * min_size:
            drafted = image.draft("RGB", (min_size, min_size))  # JPEG (MPO too) decodes at 1/2, 1/4 or 1/8
        image.load()
        if drafted is None:  # a format without draft decoding
            image = _reduced(image, min_size)
        image = ImageOps.exif_transpose(image) or image
        result = _to_rgb(image)
        return result
    except UnreadableImageError:
        raise
    except UnidentifiedImageError as exc:
        detail = "" if isinstance(source, bytes) else f" ({exc})"  # for bytes Pillow names an io.BytesIO object
        raise UnreadableImageError(
            f"{label}: not an image Pillow can identify as {SUPPORTED_FORMATS_TEXT}{detail}"
        ) from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = "truncated image" if "truncated" in str(exc).lower() else f"{type(exc).__name__}: {exc}"
        raise UnreadableImageError(f"{label}: {reason}") from exc
    finally:
        if opened is not None and opened is not result:
            opened.close()


# Modes whose pixels can be averaged as they are (not palette indices, not 16-bit), by Image.reduce.
_REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "I", "F"})


def _reduced(image: Image.Image, min_size: int | None) -> Image.Image:
    """``image`` shrunk by a whole factor that keeps its shorter side >= ``min_size``, before any conversion.

    Formats without draft decoding (PNG, WebP, TIFF, ...) are decoded at full size; reducing at once means the
    colour conversion, the EXIF rotation and the caller's resize all work on the small copy, and the full-size
    pixels are freed as soon as the caller drops the returned image.
    """
    factor = min(image.size) // min_size if min_size else 0
    if factor < 2 or image.mode not in _REDUCIBLE_MODES:
        return image
    return image.reduce(factor)  # load_rgb closes the full-size image it opened


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return image.convert("F").point(lambda v: v / 256 if image.mode.startswith("I;16") else v).convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _check(path: Path, min_size: int | None) -> tuple[Path, str] | None:
    try:
        if os.path.getsize(path) == 0:
            return path, "empty file (0 bytes)"
        load_rgb(path, min_size=min_size)
    except UnreadableImageError as exc:
        return path, str(exc).split(": ", 1)[-1]
    except OSError as exc:
        return path, f"{type(exc).__name__}: {exc}"
    return None


def find_unreadable(paths: Sequence[Path], *, min_size: int | None = 64, workers: int = 4) -> list[tuple[Path, str]]:
    """Decodes every file and returns the ones that fail, with the reason.

    Decoding runs in threads (Pillow releases the GIL while decoding) and uses
    draft mode, so a pass over thousands of photos takes seconds.

    Args:
        paths: Image files.
        min_size: Draft-mode target; small is fine, only decodability matters.
        workers: Decoding threads.

    Returns:
        ``(path, reason)`` for each unreadable file, in the order of ``paths``.
    """
    results: Iterable[tuple[Path, str] | None]
    if workers > 1 and len(paths) > 32:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(lambda p: _check(p, min_size), paths, chunksize=16))
    else:
        results = [_check(p, min_size) for p in paths]
    return [r for r in results if r is not None]
