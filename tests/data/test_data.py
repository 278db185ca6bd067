"""Data layout: class discovery, names files, one class list for every split, stratified validation splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import IMAGEWOOF, needs_imagewoof
from PIL import Image

from dogclf.data.folder import (
    Sample,
    find_classes,
    load_splits,
    read_names_file,
    stratified_split,
)
from dogclf.errors import DatasetError


def _write_images(folder: Path, count: int, *, colour: tuple[int, int, int] = (200, 40, 40)) -> list[Path]:
    """Writes ``count`` tiny real JPEGs into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img_{i:03d}.jpg"
        Image.new("RGB", (12, 10), colour).save(path)
        paths.append(path)
    return paths


def _make_tree(root: Path, layout: dict[str, int]) -> Path:
    """Writes ``{"train/001.A": 3, ...}``: that many images in each folder."""
    for folder, count in layout.items():
        _write_images(root / folder, count)
    return root


# --- class discovery -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("folders", "expected_order", "expected_names"),
    [
        (
            ["002.Border_collie", "010.Cairn_terrier", "001.Affenpinscher"],
            ["001.Affenpinscher", "002.Border_collie", "010.Cairn_terrier"],
            ["Affenpinscher", "Border collie", "Cairn terrier"],
        ),
        # Unpadded numbers: a plain string sort would give 10, 100, 9.
        (
            ["100.Chow_chow", "9.Akita", "10.Beagle"],
            ["9.Akita", "10.Beagle", "100.Chow_chow"],
            ["Akita", "Beagle", "Chow chow"],
        ),
    ],
)
def test_dogimages_classes_are_ordered_by_number_and_named_with_spaces(
    tmp_path: Path, folders: list[str], expected_order: list[str], expected_names: list[str]
) -> None:
    for folder in folders:
        (tmp_path / folder).mkdir()

    classes = find_classes(tmp_path)

    assert [c.folder for c in classes] == expected_order
    assert [c.name for c in classes] == expected_names


@pytest.mark.parametrize(
    ("folders", "expected_order"),
    [
        (["n02115641", "n02086240", "n02099601"], ["n02086240", "n02099601", "n02115641"]),
        (["class10", "class2", "Class1"], ["Class1", "class2", "class10"]),
        # One folder without a number: not the dogImages layout, so natural sort over the whole name.
        (["2.b", "10.a", "misc"], ["2.b", "10.a", "misc"]),
    ],
)
def test_generic_imagefolder_classes_are_naturally_sorted(
    tmp_path: Path, folders: list[str], expected_order: list[str]
) -> None:
    for folder in folders:
        (tmp_path / folder).mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "notes.txt").write_text("not a class")

    classes = find_classes(tmp_path)

    assert [c.folder for c in classes] == expected_order
    assert [c.name for c in classes] == expected_order  # no names map: the folder is the name


def test_numbered_folders_sharing_a_number_are_an_error_naming_both(tmp_path: Path) -> None:
    (tmp_path / "001.Akita").mkdir()
    (tmp_path / "1.Beagle").mkdir()

    with pytest.raises(DatasetError, match=r"share the number 1") as info:
        find_classes(tmp_path)
    assert "001.Akita" in str(info.value)
    assert "1.Beagle" in str(info.value)


@pytest.mark.parametrize(
    ("filename", "content"),
    [
        (
            "names.txt",
            "# wnid name\nn02086240 Shih-Tzu\nn02087394\tRhodesian ridgeback\n\nn02088364   Beagle  \n",
        ),
        (
            "names.json",
            json.dumps({"n02086240": "Shih-Tzu", "n02087394": "Rhodesian ridgeback", "n02088364": "Beagle"}),
        ),
        # JSON content is recognised without the .json suffix.
        (
            "names.map",
            json.dumps({"n02086240": "Shih-Tzu", "n02087394": "Rhodesian ridgeback", "n02088364": "Beagle"}),
        ),
    ],
    ids=["text", "json", "json-without-suffix"],
)
def test_names_file_maps_folders_to_display_names(tmp_path: Path, filename: str, content: str) -> None:
    names_file = tmp_path / filename
    names_file.write_text(content, encoding="utf-8")
    data = _make_tree(
        tmp_path / "data",
        {"train/n02088364": 2, "train/n02086240": 2, "train/n02087394": 2, "train/n02099601": 2, "valid/n02086240": 1},
    )

    assert read_names_file(names_file) == {
        "n02086240": "Shih-Tzu",
        "n02087394": "Rhodesian ridgeback",
        "n02088364": "Beagle",
    }
    splits = load_splits(data, names=names_file)

    assert [c.folder for c in splits.classes] == ["n02086240", "n02087394", "n02088364", "n02099601"]
    # A folder the names file lacks keeps its folder name.
    assert splits.class_names == ["Shih-Tzu", "Rhodesian ridgeback", "Beagle", "n02099601"]


def test_names_map_overrides_dogimages_names(tmp_path: Path) -> None:
    for folder in ("001.Affenpinscher", "002.Afghan_hound"):
        (tmp_path / folder).mkdir()

    classes = find_classes(tmp_path, {"002.Afghan_hound": "Afghan Hound (long-haired)"})

    assert [c.name for c in classes] == ["Affenpinscher", "Afghan Hound (long-haired)"]


@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [
        ("names.txt", "n02086240 Shih-Tzu\nn02087394\n", r"names\.txt:2: expected '<folder> <display name>'"),
        ("names.json", "{not json", r"is not valid JSON"),
        ("names.json", '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", r"is not valid JSON: maximum recursion depth"),
        ("names.json", json.dumps(["a", "b"]), r"must be a JSON object of folder -> name strings"),
        ("names.json", json.dumps({"n1": 3}), r"must be a JSON object of folder -> name strings"),
    ],
    ids=["text-line-without-name", "invalid-json", "nested-too-deeply", "json-list", "json-non-string-name"],
)
def test_bad_names_file_is_an_error_naming_the_file(tmp_path: Path, filename: str, content: str, message: str) -> None:
    path = tmp_path / filename
    path.write_text(content, encoding="utf-8")

    with pytest.raises(DatasetError, match=message) as info:
        read_names_file(path)
    assert filename in str(info.value)


def test_missing_names_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"Cannot read names file .*nowhere\.txt"):
        read_names_file(tmp_path / "nowhere.txt")


# --- one class list for every split ----------------------------------------------------------------------------------


def test_class_list_of_train_labels_every_split(tmp_path: Path) -> None:
    data = _make_tree(
        tmp_path,
        {
            "train/001.Akita": 2,
            "train/002.Beagle": 2,
            "train/003.Collie": 2,
            "valid/001.Akita": 1,
            "valid/003.Collie": 2,  # valid/ lacks Beagle: Collie must still be label 2, not 1
            "test/002.Beagle": 1,
        },
    )

    splits = load_splits(data)

    assert splits.class_names == ["Akita", "Beagle", "Collie"]
    assert splits.valid_source == "valid/"
    assert {s.path.parent.name: s.label for s in splits.valid} == {"001.Akita": 0, "003.Collie": 2}
    assert [s.label for s in splits.test] == [1]
    assert {s.path.parent.name: s.label for s in splits.train} == {"001.Akita": 0, "002.Beagle": 1, "003.Collie": 2}
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (6, 3, 1)


@pytest.mark.parametrize("split", ["valid", "test"])
def test_class_that_train_lacks_is_an_error_naming_the_folder(tmp_path: Path, split: str) -> None:
    data = _make_tree(
        tmp_path, {"train/001.Akita": 2, "train/002.Beagle": 2, "valid/001.Akita": 1, f"{split}/004.Dingo": 1}
    )

    with pytest.raises(DatasetError, match=rf"{split}/ has class folder\(s\) that train/ lacks") as info:
        load_splits(data)
    assert str(data / split / "004.Dingo") in str(info.value)


@pytest.mark.parametrize(
    ("split", "extra_file"),
    [("train", None), ("valid", None), ("train", "README.txt"), ("test", ".DS_Store")],
)
def test_class_folder_without_images_is_an_error_listing_extensions(
    tmp_path: Path, split: str, extra_file: str | None
) -> None:
    data = _make_tree(tmp_path, {"train/001.Akita": 2, "train/002.Beagle": 2, "valid/001.Akita": 1})
    empty = data / split / "002.Beagle"
    empty.mkdir(parents=True, exist_ok=True)
    for image in empty.iterdir():
        image.unlink()
    if extra_file:
        (empty / extra_file).write_text("not an image")

    with pytest.raises(DatasetError, match=r"has no images") as info:
        load_splits(data)
    message = str(info.value)
    assert str(empty) in message
    assert "Supported extensions are: .jpg, .jpeg, .png" in message


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"train/001.Akita": 2}, r"has 1 class folder; a classifier needs at least 2"),
        ({"valid/001.Akita": 2, "valid/002.Beagle": 2}, r"has valid/ \(or val/\) or test/ but no train/ folder"),
        ({"001.Akita": 2, "test/001.Akita": 2}, r"has valid/ \(or val/\) or test/ but no train/ folder"),
    ],
)
def test_unusable_layouts_are_errors(tmp_path: Path, layout: dict[str, int], message: str) -> None:
    data = _make_tree(tmp_path / "data", layout)

    with pytest.raises(DatasetError, match=message):
        load_splits(data, valid_fraction=0.5)


def test_train_folder_without_class_folders_is_an_error_showing_the_layout(tmp_path: Path) -> None:
    _write_images(tmp_path / "train", 3)

    with pytest.raises(DatasetError, match=r"Found no class folders in .*train") as info:
        load_splits(tmp_path, valid_fraction=0.2)
    assert "001.Affenpinscher" in str(info.value)


def test_missing_data_dir_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_data"

    with pytest.raises(DatasetError, match=r"does not exist") as info:
        load_splits(missing, valid_fraction=0.2)
    assert str(missing) in str(info.value)
    assert isinstance(info.value, ValueError)  # callers can catch the built-in type


# --- validation splits -----------------------------------------------------------------------------------------------


def test_folder_without_train_is_the_training_set_split_by_fraction(tmp_path: Path) -> None:
    data = _make_tree(tmp_path / "photos", {"n02086240": 10, "n02087394": 10, "n02088364": 5})

    splits = load_splits(data, valid_fraction=0.2, seed=3)

    assert [c.folder for c in splits.classes] == ["n02086240", "n02087394", "n02088364"]
    assert splits.valid_source == "fraction 0.2 of train (seed 3)"
    assert splits.test == []
    assert sorted(s.label for s in splits.valid) == [0, 0, 1, 1, 2]
    assert len(splits.train) + len(splits.valid) == 25
    assert not {s.path for s in splits.train} & {s.path for s in splits.valid}


def _samples(counts: dict[int, int]) -> list[Sample]:
    return [Sample(Path(f"c{label}/img{i}.jpg"), label) for label, count in counts.items() for i in range(count)]


def test_stratified_split_represents_every_class_in_proportion() -> None:
    samples = _samples({0: 10, 1: 20, 2: 5, 3: 1})

    train, valid = stratified_split(samples, 0.2, seed=0)

    per_class = {label: sum(s.label == label for s in valid) for label in range(4)}
    assert per_class == {0: 2, 1: 4, 2: 1, 3: 0}  # a class with one image stays in train
    assert not set(train) & set(valid)
    assert sorted(train + valid, key=str) == sorted(samples, key=str)


def test_stratified_split_keeps_one_image_per_class_on_each_side() -> None:
    samples = _samples({0: 2, 1: 3})

    for fraction in (0.01, 0.99):
        train, valid = stratified_split(samples, fraction, seed=0)
        assert {s.label for s in train} == {0, 1}
        assert {s.label for s in valid} == {0, 1}


def test_stratified_split_is_deterministic_per_seed() -> None:
    samples = _samples({0: 30, 1: 30})

    first = stratified_split(samples, 0.3, seed=7)
    again = stratified_split(list(samples), 0.3, seed=7)
    other = stratified_split(samples, 0.3, seed=8)

    assert first == again
    assert set(first[1]) != set(other[1])


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5, -0.2])
def test_stratified_split_rejects_fractions_outside_zero_one(fraction: float) -> None:
    with pytest.raises(DatasetError, match=r"valid fraction must be between 0 and 1"):
        stratified_split(_samples({0: 4, 1: 4}), fraction)


def test_no_valid_and_no_fraction_suggests_valid_fraction(tmp_path: Path) -> None:
    data = _make_tree(tmp_path, {"train/001.Akita": 2, "train/002.Beagle": 2})

    with pytest.raises(DatasetError, match=r"has no valid/ folder.*--valid-fraction 0\.2"):
        load_splits(data)

    splits = load_splits(data, require_valid=False)
    assert splits.valid == []
    assert splits.valid_source == "none"
    with pytest.raises(DatasetError, match=r"Split 'valid' of .* has no images"):
        splits.split("valid")


def test_valid_folder_and_fraction_together_are_an_error(tmp_path: Path) -> None:
    data = _make_tree(tmp_path, {"train/001.Akita": 3, "train/002.Beagle": 3, "valid/001.Akita": 1})

    with pytest.raises(DatasetError, match=r"has a valid/ folder and a valid fraction \(0\.2\).*one or the other"):
        load_splits(data, valid_fraction=0.2)


def test_val_folder_is_the_validation_split(tmp_path: Path) -> None:
    # The original Imagewoof download names its validation folder val/.
    data = _make_tree(tmp_path, {"train/a": 3, "train/b": 3, "val/b": 2})

    splits = load_splits(data)

    assert splits.valid_source == "val/"
    assert [s.label for s in splits.valid] == [1, 1]
    assert all(s.path.parent == data / "val" / "b" for s in splits.valid)


def test_valid_and_val_folders_together_are_an_error(tmp_path: Path) -> None:
    data = _make_tree(tmp_path, {"train/a": 3, "train/b": 3, "val/b": 1, "valid/a": 1})

    with pytest.raises(DatasetError, match=r"has both valid/ and val/; keep one"):
        load_splits(data)


def test_unknown_split_name_lists_the_choices(tmp_path: Path) -> None:
    data = _make_tree(tmp_path, {"train/001.Akita": 2, "train/002.Beagle": 2, "valid/002.Beagle": 1})
    splits = load_splits(data)

    assert splits.split("valid") == splits.valid
    with pytest.raises(DatasetError, match=r"Unknown split 'validation'; choose one of train, valid, test"):
        splits.split("validation")


# --- real photos ------------------------------------------------------------------------------------------------------


@pytest.mark.realdata
@needs_imagewoof()
def test_imagewoof_train_folder_with_a_valid_fraction() -> None:
    splits = load_splits(IMAGEWOOF / "train", valid_fraction=0.2, check_images=False)

    assert len(splits.classes) == 10
    assert all(c.folder.startswith("n0") for c in splits.classes)
    assert len(splits.train) + len(splits.valid) == 8687
    assert {s.label for s in splits.valid} == set(range(10))
    assert 0.18 < len(splits.valid) / 8687 < 0.22
