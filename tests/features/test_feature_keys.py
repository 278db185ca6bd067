"""Content keys of image files and the stat index that spares rehashing them: never a stale key for changed bytes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from dogclf.features.keys import ImageKey, StatIndex, content_keys, image_key


def _files(folder: Path, count: int = 20) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"photo_{i:03d}.jpg"
        path.write_bytes(bytes([i % 251]) * (1000 + i))
        paths.append(path)
    return paths


def test_the_key_is_the_content_wherever_the_file_is(tmp_path: Path) -> None:
    first = tmp_path / "a" / "dog.jpg"
    first.parent.mkdir()
    first.write_bytes(b"\xff\xd8 the same photo")
    copy = tmp_path / "b" / "renamed.jpeg"
    copy.parent.mkdir()
    copy.write_bytes(first.read_bytes())
    os.utime(copy, ns=(1, 1))
    assert image_key(first) == image_key(copy)
    assert image_key(first) == ImageKey("6ff28d7ebf58a4d5a62ff1ac7a594d5a219417ba5a70c7b92bf0df191bb16e99", 17)
    other = tmp_path / "a" / "other.jpg"
    other.write_bytes(b"\xff\xd8 another photo!")
    assert image_key(other).size == image_key(first).size
    assert image_key(other) != image_key(first)


def test_content_keys_in_threads_keep_the_order_and_name_unreadable_files_none(tmp_path: Path) -> None:
    paths = _files(tmp_path / "photos", 40)
    gone = tmp_path / "photos" / "deleted.jpg"
    keys = content_keys([*paths[:20], gone, *paths[20:]], workers=4)
    assert keys[20] is None
    assert [k for k in keys if k is not None] == [image_key(p) for p in paths]


def test_the_index_answers_for_unchanged_files_without_reading_them(tmp_path: Path) -> None:
    paths = _files(tmp_path / "photos")
    index = StatIndex(tmp_path / "file-index.json", racy_seconds=0)
    first = content_keys(paths, index)
    assert (index.hashed, index.hits) == (20, 0)
    index.save()

    again = StatIndex(tmp_path / "file-index.json", racy_seconds=0)
    assert len(again) == 20
    assert content_keys(paths, again) == first
    assert (again.hashed, again.hits) == (0, 20)


@pytest.mark.parametrize("how", ["rename", "in-place", "touch-back"])
def test_a_file_with_new_bytes_is_hashed_again_whatever_its_size_and_mtime_say(tmp_path: Path, how: str) -> None:
    paths = _files(tmp_path / "photos")
    index = StatIndex(tmp_path / "file-index.json", racy_seconds=0)
    content_keys(paths, index)
    index.save()
    target = paths[3]
    before = target.stat()
    time.sleep(0.05)  # past the file system's timestamp tick, as any real edit is (see the racy test below)
    new_bytes = bytes([200]) * before.st_size
    if how == "rename":  # rsync -a: a temporary file renamed over the old one
        incoming = target.with_name(".incoming")
        incoming.write_bytes(new_bytes)
        os.replace(incoming, target)
    elif how == "in-place":  # cp -p / tar x over the tree: the same inode rewritten
        target.write_bytes(new_bytes)
    else:  # the bytes were changed earlier and the mtime set back since
        with open(target, "r+b") as file:
            file.write(new_bytes)
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    again = StatIndex(tmp_path / "file-index.json", racy_seconds=0)
    keys = content_keys(paths, again)
    assert (again.hashed, again.hits) == (1, 19)
    recorded = json.loads((tmp_path / "file-index.json").read_text())["entries"][str(target)]
    assert keys[3] == image_key(target)
    assert keys[3] is not None
    assert keys[3].sha256 != recorded[5]


def test_a_file_changed_just_before_it_was_hashed_gets_no_entry(tmp_path: Path) -> None:
    # A rewrite within the same timestamp tick would keep size, mtime and ctime equal: so fresh files are not
    # recorded at all, and are hashed again next time.
    paths = _files(tmp_path / "photos")
    index = StatIndex(tmp_path / "file-index.json")  # the default racy window
    content_keys(paths, index)
    assert len(index) == 0
    index.save()
    assert not (tmp_path / "file-index.json").exists()


def test_a_damaged_or_foreign_index_file_is_ignored_and_replaced(tmp_path: Path) -> None:
    paths = _files(tmp_path / "photos", 3)
    (tmp_path / "file-index.json").write_text('{"format": 1, "entries": {"x": [1, 2')
    index = StatIndex(tmp_path / "file-index.json", racy_seconds=0)
    assert len(index) == 0
    content_keys(paths, index)
    index.save()
    assert len(StatIndex(tmp_path / "file-index.json")) == 3


def test_the_index_file_honours_the_umask(tmp_path: Path) -> None:
    paths = _files(tmp_path / "photos", 2)
    old = os.umask(0o027)
    try:
        index = StatIndex(tmp_path / "file-index.json", racy_seconds=0)
        content_keys(paths, index)
        index.save()
    finally:
        os.umask(old)
    assert (tmp_path / "file-index.json").stat().st_mode & 0o777 == 0o640
