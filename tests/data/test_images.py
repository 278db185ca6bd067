"""Messy real-world image files: every decodable one comes out upright RGB, broken ones are reported and skipped."""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import IMAGEWOOF, needs_imagewoof
from PIL import Image, ImageFile

import dogclf
from dogclf.data.folder import load_splits
from dogclf.data.images import find_unreadable, is_image_file, load_rgb
from dogclf.errors import DatasetError, UnreadableImageError

WHITE = (255, 255, 255)


def _close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 6) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def _noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = random.Random(seed)
    return Image.frombytes("RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3)))


# --- messy but decodable files ---------------------------------------------------------------------------------------
# Each writer saves a 40x30 image whose left half and right half differ, and returns the expected RGB colours of the
# left and right halves after decoding (transparent pixels are composited on white).


def _greyscale_jpeg(path: Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    image = Image.new("L", (40, 30), 40)
    image.paste(200, (20, 0, 40, 30))
    image.save(path.with_suffix(".jpg"), quality=95)
    return (40, 40, 40), (200, 200, 200)


def _cmyk_jpeg(path: Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    image = Image.new("CMYK", (40, 30), (0, 255, 255, 0))  # red
    image.paste((255, 255, 0, 0), (20, 0, 40, 30))  # blue
    image.save(path.with_suffix(".jpg"), quality=95)
    return (255, 0, 0), (0, 0, 255)


def _palette_png_with_transparency(path: Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    image = Image.new("P", (40, 30), 0)
    image.putpalette([0, 0, 0, 0, 160, 0] + [0, 0, 0] * 254)
    image.paste(1, (20, 0, 40, 30))
    image.save(path.with_suffix(".png"), transparency=0)  # index 0 (black) is transparent
    return WHITE, (0, 160, 0)


def _rgba_png(path: Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    image = Image.new("RGBA", (40, 30), (255, 0, 0, 0))  # fully transparent red
    image.paste((0, 0, 255, 255), (20, 0, 40, 30))
    image.save(path.with_suffix(".png"))
    return WHITE, (0, 0, 255)


def _la_png(path: Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    image = Image.new("LA", (40, 30), (0, 0))
    image.paste((50, 255), (20, 0, 40, 30))
    image.save(path.with_suffix(".png"))
    return WHITE, (50, 50, 50)


def _sixteen_bit_png(path: Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    image = Image.new("I;16", (40, 30), 65535)
    image.paste(Image.new("I;16", (20, 30), 40000), (20, 0))  # (pasting an int into I;16 is not 16-bit safe)
    image.save(path.with_suffix(".png"))
    return WHITE, (156, 156, 156)  # 16-bit values scaled to 8 bits, not clipped at 255


def _animated_gif(path: Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    frames = []
    for colour in ((255, 0, 0), (0, 255, 0)):
        frame = Image.new("RGB", (40, 30), colour)
        frame.paste((0, 0, 255), (20, 0, 40, 30))
        frames.append(frame.convert("P"))
    frames[0].save(path.with_suffix(".gif"), save_all=True, append_images=frames[1:])
    return (255, 0, 0), (0, 0, 255)  # the first frame


def _bmp(path: Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    image = Image.new("RGB", (40, 30), (10, 20, 30))
    image.paste((250, 240, 230), (20, 0, 40, 30))
    image.save(path.with_suffix(".bmp"))
    return (10, 20, 30), (250, 240, 230)


MESSY_WRITERS: list[Callable[[Path], tuple[tuple[int, ...], tuple[int, ...]]]] = [
    _greyscale_jpeg,
    _cmyk_jpeg,
    _palette_png_with_transparency,
    _rgba_png,
    _la_png,
    _sixteen_bit_png,
    _animated_gif,
    _bmp,
]


def _written(tmp_path: Path, writer: Callable[[Path], tuple[tuple[int, ...], tuple[int, ...]]]) -> tuple[Path, ...]:
    expected = writer(tmp_path / writer.__name__.strip("_"))
    (path,) = tmp_path.glob(writer.__name__.strip("_") + ".*")
    return path, *expected


@pytest.mark.parametrize("writer", MESSY_WRITERS, ids=lambda w: w.__name__.strip("_"))
def test_messy_image_decodes_to_rgb_with_the_right_colours(
    tmp_path: Path, writer: Callable[[Path], tuple[tuple[int, ...], tuple[int, ...]]]
) -> None:
    path, left, right = _written(tmp_path, writer)
    with Image.open(path) as original:
        assert original.mode != "RGB" or path.suffix == ".bmp"  # the writer really made a non-RGB file

    image = load_rgb(path)

    assert image.mode == "RGB"
    assert image.size == (40, 30)
    assert _close(image.getpixel((5, 15)), left), image.getpixel((5, 15))
    assert _close(image.getpixel((35, 15)), right), image.getpixel((35, 15))


@pytest.mark.parametrize("writer", [_cmyk_jpeg, _rgba_png], ids=lambda w: w.__name__.strip("_"))
def test_bytes_and_pil_images_decode_like_paths(
    tmp_path: Path, writer: Callable[[Path], tuple[tuple[int, ...], tuple[int, ...]]]
) -> None:
    path, _, _ = _written(tmp_path, writer)
    from_path = load_rgb(path)

    from_bytes = load_rgb(path.read_bytes())
    with Image.open(path) as opened:
        from_pil = load_rgb(opened)
        assert opened.mode != "RGB"  # the caller's image is left as it was

    assert from_bytes.mode == from_pil.mode == "RGB"
    assert from_bytes.tobytes() == from_path.tobytes() == from_pil.tobytes()


# Orientation tag -> the corner where the stored top-left marker must appear once upright.
@pytest.mark.parametrize(
    ("orientation", "upright_size", "marker_corner"),
    [
        (1, (60, 40), "top-left"),
        (3, (60, 40), "bottom-right"),
        (6, (40, 60), "top-right"),  # phone held upright: rotate 90 degrees clockwise
        (8, (40, 60), "bottom-left"),
    ],
)
def test_exif_orientation_is_applied(
    tmp_path: Path, orientation: int, upright_size: tuple[int, int], marker_corner: str
) -> None:
    stored = Image.new("RGB", (60, 40), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 12, 12))  # red marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "phone.jpg"
    stored.save(path, exif=exif.tobytes(), quality=95)

    image = load_rgb(path)

    assert image.mode == "RGB"
    assert image.size == upright_size
    w, h = image.size
    corners = {"top-left": (3, 3), "top-right": (w - 4, 3), "bottom-left": (3, h - 4), "bottom-right": (w - 4, h - 4)}
    for corner, xy in corners.items():
        expected = (255, 0, 0) if corner == marker_corner else (0, 0, 255)
        assert _close(image.getpixel(xy), expected, tolerance=12), (corner, image.getpixel(xy))


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_huge_jpeg_is_decoded_in_draft_mode_keeping_min_size(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "huge.jpg"
    Image.new(mode, (4000, 3000), 90).save(path, quality=80)

    small = load_rgb(path, min_size=64)
    full = load_rgb(path)

    assert small.mode == full.mode == "RGB"
    assert min(small.size) >= 64
    assert small.size[0] < 4000
    assert small.size[0] * 3 == small.size[1] * 4  # aspect ratio kept
    assert full.size == (4000, 3000)


@pytest.mark.parametrize(
    ("fmt", "mode"), [("PNG", "RGB"), ("PNG", "RGBA"), ("WEBP", "RGB"), ("TIFF", "L"), ("MPO", "RGB")]
)
def test_a_large_photo_of_any_format_is_decoded_reduced_keeping_min_size(fmt: str, mode: str) -> None:
    """JPEG (and the MPO of phones) by draft decoding; formats without it are reduced before any conversion."""
    buffer = io.BytesIO()
    image = Image.new(mode, (2400, 1800), 90 if mode == "L" else (200, 30, 60, 255)[: len(mode)])
    # An MPO of two pictures, as phones write them (one picture would be read as a plain JPEG).
    second = {"save_all": True, "append_images": [Image.new(mode, image.size)], "quality": 80}
    image.save(buffer, format=fmt, **(second if fmt == "MPO" else {}))
    assert Image.open(io.BytesIO(buffer.getvalue())).format == fmt

    small = load_rgb(buffer.getvalue(), min_size=64)

    assert small.mode == "RGB"
    assert 64 <= min(small.size) <= 1800 // 8  # draft decoding stops at 1/8; reducing goes down to min_size
    assert small.size[0] / small.size[1] == pytest.approx(4 / 3, abs=0.03)  # aspect ratio kept
    expected = (90, 90, 90) if mode == "L" else (200, 30, 60)
    assert _close(small.getpixel((10, 10)), expected), small.getpixel((10, 10))


def test_palette_and_16_bit_images_are_not_averaged_as_raw_values() -> None:
    palette = Image.new("P", (1200, 900), 1)
    palette.putpalette([0, 0, 0, 250, 10, 10] + [0, 0, 0] * 254)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")

    image = load_rgb(buffer.getvalue(), min_size=64)

    assert _close(image.getpixel((5, 5)), (250, 10, 10))


# --- unreadable files ------------------------------------------------------------------------------------------------


def _truncated_jpeg(path: Path) -> None:
    _noise((64, 64)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _text_file(path: Path) -> None:
    path.write_text("this is not an image\n")


def _zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


# writer, reason from load_rgb, reason from find_unreadable
UNREADABLE = [
    (_truncated_jpeg, "truncated image", "truncated image"),
    (_text_file, "not an image Pillow can identify", "not an image Pillow can identify"),
    (_zero_bytes, "not an image Pillow can identify", "empty file (0 bytes)"),
]


@pytest.mark.parametrize(
    ("writer", "load_reason", "scan_reason"), UNREADABLE, ids=[w.__name__.strip("_") for w, _, _ in UNREADABLE]
)
def test_unreadable_file_is_reported_with_path_and_reason(
    tmp_path: Path, writer: Callable[[Path], None], load_reason: str, scan_reason: str
) -> None:
    path = tmp_path / "dog.jpg"
    writer(path)
    good = tmp_path / "good.jpg"
    Image.new("RGB", (8, 8)).save(good)

    with pytest.raises(UnreadableImageError, match=load_reason) as info:
        load_rgb(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)

    [(bad_path, reason)] = find_unreadable([good, path, good])
    assert bad_path == path
    assert scan_reason in reason


# A minimal EPS: Pillow identifies it from the header and would run Ghostscript on the bytes to decode it.
_EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\nnewpath 0 0 moveto 8 8 lineto stroke\n"


def test_eps_is_refused_without_running_ghostscript(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import EpsImagePlugin

    from dogclf.serving.codec import RequestError, open_image

    with Image.open(io.BytesIO(_EPS)) as unrestricted:
        assert unrestricted.format == "EPS"  # Pillow alone would take it
    runs: list[object] = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *args, **kwargs: runs.append(args))
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", "gs")  # as if Ghostscript were installed
    path = tmp_path / "dog.jpg"
    path.write_bytes(_EPS)

    with pytest.raises(
        UnreadableImageError, match=r"not an image Pillow can identify as JPEG, PNG, WebP, BMP, GIF or TIFF"
    ):
        load_rgb(path)
    with pytest.raises(RequestError, match=r"not an image \(JPEG, PNG, WebP, BMP, GIF or TIFF expected\)") as info:
        open_image(_EPS)

    assert info.value.status == 400
    assert find_unreadable([path])[0][0] == path
    assert runs == []


@pytest.mark.parametrize("fmt", ["PPM", "TGA", "ICO", "PCX"])
def test_formats_pillow_knows_but_dogclf_does_not_support_are_refused(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "dog.jpg"  # the name does not matter, the bytes do
    Image.new("RGB", (16, 16), (10, 200, 30)).save(path, format=fmt)

    with pytest.raises(UnreadableImageError, match="Pillow can identify as JPEG, PNG, WebP, BMP, GIF or TIFF"):
        load_rgb(path)
    with pytest.raises(UnreadableImageError, match="Pillow can identify as JPEG, PNG, WebP, BMP, GIF or TIFF"):
        load_rgb(path.read_bytes())


@pytest.mark.parametrize(("fmt", "options"), [("WEBP", {"lossless": True}), ("TIFF", {}), ("MPO", {}), ("GIF", {})])
def test_every_supported_format_decodes(tmp_path: Path, fmt: str, options: dict[str, object]) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buffer, format=fmt, **options)

    image = load_rgb(buffer.getvalue())

    assert _close(image.getpixel((8, 8)), (10, 200, 30), tolerance=12), image.getpixel((8, 8))


def test_find_unreadable_in_threads_keeps_the_order_of_paths(tmp_path: Path) -> None:
    paths = []
    for i in range(40):  # more than 32: decoded in worker threads
        path = tmp_path / f"{i:02d}.jpg"
        if i % 10 == 3:
            _text_file(path)
        else:
            Image.new("RGB", (8, 8)).save(path)
        paths.append(path)

    bad = find_unreadable(paths, workers=4)

    assert [p.name for p, _ in bad] == ["03.jpg", "13.jpg", "23.jpg", "33.jpg"]


@pytest.mark.parametrize(
    ("pixel_limit", "message"),
    [
        (900, r"decompression bomb"),  # over twice the limit: Pillow refuses to open it
        (1500, r"50x40 pixels is over the decompression-bomb limit of 1500 pixels; not decoded"),
    ],
)
# Between one and two times the limit Pillow only warns on open; the test is that dogclf refuses such images anyway.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_is_refused_without_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pixel_limit: int, message: str
) -> None:
    path = tmp_path / "bomb.png"
    Image.new("RGB", (50, 40), (1, 2, 3)).save(path)  # 2000 pixels
    decoded: list[object] = []
    real_load = ImageFile.ImageFile.load

    def recording_load(self: ImageFile.ImageFile) -> object:
        decoded.append(self)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording_load)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pixel_limit)

    with pytest.raises(UnreadableImageError, match=message) as info:
        load_rgb(path)
    assert str(path) in str(info.value)
    assert decoded == []
    [(bad, reason)] = find_unreadable([path])
    assert bad == path
    assert "decompression" in reason.lower()


@pytest.mark.parametrize(
    ("name", "is_image"),
    [
        ("dog.jpg", True),
        ("DOG.JPEG", True),
        ("dog.Png", True),
        ("dog.webp", True),
        ("scan.tiff", True),
        ("README.txt", False),
        (".DS_Store", False),
        ("._dog.jpg", False),  # macOS resource fork, not a photo
        ("dog.jpg.part", False),
    ],
)
def test_is_image_file_by_extension(name: str, is_image: bool) -> None:
    assert is_image_file(name) is is_image


# --- load_splits and training over a messy folder --------------------------------------------------------------------


def _messy_tree(root: Path) -> tuple[Path, list[Path]]:
    """The tiny tree plus messy-but-readable files, three unreadable ones and non-image clutter."""
    data = dogclf.make_synthetic_dataset(root, num_classes=2, per_split=(6, 2, 0), size=40, seed=3)
    train_a = data / "train" / "001.Synthetic_red_discs"
    train_b = data / "train" / "002.Synthetic_blue_stripes"
    for writer in MESSY_WRITERS:
        writer(train_a / f"messy_{writer.__name__.strip('_')}")
    bad = [train_a / "truncated.jpg", train_b / "notes.jpg", data / "valid" / "002.Synthetic_blue_stripes" / "z.jpg"]
    _truncated_jpeg(bad[0])
    _text_file(bad[1])
    _zero_bytes(bad[2])
    for folder in (train_a, train_b):
        (folder / "README.txt").write_text("photos from the shelter")
        (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    return data, bad


def test_load_splits_skips_unreadable_files_and_ignores_clutter(tmp_path: Path) -> None:
    data, bad = _messy_tree(tmp_path / "data")

    splits = load_splits(data)

    assert [p for p, _ in splits.skipped] == bad
    reasons = dict(splits.skipped)
    assert reasons[bad[0]] == "truncated image"
    assert "not an image Pillow can identify" in reasons[bad[1]]
    assert reasons[bad[2]] == "empty file (0 bytes)"
    kept = {s.path for s in splits.train + splits.valid}
    assert not kept & set(bad)
    assert {p.name for p in kept if p.name.startswith("messy_")} == {
        f"messy_{w.__name__.strip('_')}{ext}"
        for w, ext in zip(MESSY_WRITERS, [".jpg", ".jpg", ".png", ".png", ".png", ".png", ".gif", ".bmp"], strict=True)
    }
    assert not {p.name for p in kept} & {"README.txt", ".DS_Store"}
    assert (len(splits.train), len(splits.valid)) == (12 + len(MESSY_WRITERS), 4)


def test_strict_mode_raises_listing_every_unreadable_path(tmp_path: Path) -> None:
    data, bad = _messy_tree(tmp_path / "data")

    with pytest.raises(UnreadableImageError, match=r"3 unreadable image file\(s\) \(strict mode\)") as info:
        load_splits(data, strict=True)
    message = str(info.value)
    for path in bad:
        assert str(path) in message
    assert "without --strict" in message


def test_class_with_only_unreadable_images_is_an_error(tmp_path: Path) -> None:
    data = dogclf.make_synthetic_dataset(tmp_path / "data", num_classes=2, per_split=(2, 1, 0), size=24)
    for path in (data / "train" / "002.Synthetic_blue_stripes").iterdir():
        _zero_bytes(path)

    with pytest.raises(DatasetError, match=r"Every image of class folder\(s\) 002\.Synthetic_blue_stripes"):
        load_splits(data)


def test_training_runs_over_a_messy_folder_and_reports_skipped_files(
    tmp_path: Path, tiny_spec: dogclf.BackboneSpec, dogclf_log: list[str]
) -> None:
    data, bad = _messy_tree(tmp_path / "data")
    dogclf_log.clear()  # from here on
    messages = dogclf_log

    result = dogclf.train(
        data,
        "tinynet",
        tmp_path / "model",
        config=dogclf.TrainConfig(epochs=1, batch_size=8, num_workers=0),
        weights=None,
        progress=False,
    )

    assert [p for p, _ in result.splits.skipped] == bad
    log = "\n".join(messages)
    assert "Skipping 3 unreadable image file(s):" in log
    for path in bad:
        assert f"skipped {path}: " in log
    assert "3 unreadable file(s) skipped" in log
    assert len(result.history) == 1
    assert (result.model_dir / "model.safetensors").is_file()


# --- real photos -----------------------------------------------------------------------------------------------------


@pytest.mark.realdata
@needs_imagewoof()
def test_real_jpegs_decode_to_rgb_including_greyscale_ones() -> None:
    greyscale: list[tuple[Path, tuple[int, int]]] = []
    colour: list[tuple[Path, tuple[int, int]]] = []
    for path in sorted((IMAGEWOOF / "train").rglob("*.JPEG")):
        with Image.open(path) as image:
            (greyscale if image.mode == "L" else colour).append((path, image.size))
        if len(greyscale) >= 5 and len(colour) >= 15:
            break
    assert len(greyscale) >= 5, "imagewoof is known to hold greyscale JPEGs"

    for path, size in greyscale[:5] + colour[:15]:
        image = load_rgb(path, min_size=128)
        assert image.mode == "RGB", path
        assert min(image.size) >= min(128, *size), path
        assert image.size[0] <= size[0], path
