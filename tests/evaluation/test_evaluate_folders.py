"""Evaluating on the folders users have: a plain class-folder tree, one split folder, a held-out part, names files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import _tiny_namespace, run_cli, train_tiny_model
from PIL import Image

import dogclf
from dogclf.backbones.registry import default_registry
from dogclf.data.folder import ClassInfo, load_splits
from dogclf.data.labelled import load_labelled
from dogclf.errors import DatasetError

CLASSES = [
    ClassInfo("n02086240", "Shih-Tzu"),
    ClassInfo("n02087394", "Rhodesian ridgeback"),
    ClassInfo("n02088364", "beagle"),
]
SYNTHETIC = ["Synthetic red discs", "Synthetic blue stripes", "Synthetic green squares"]


def _images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (12, 10), (40 * i % 255, 90, 160)).save(folder / f"img_{i}.jpg")


def _tree(root: Path, counts: dict[str, int]) -> Path:
    for name, count in counts.items():
        _images(root / name, count)
    return root


# --- matching folders to a given class list ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("folders", "expected"),
    [
        (["n02086240", "n02087394", "n02088364"], {"n02086240": 0, "n02087394": 1, "n02088364": 2}),  # folder ids
        (["Shih-Tzu", "Rhodesian ridgeback", "beagle"], {"Shih-Tzu": 0, "Rhodesian ridgeback": 1, "beagle": 2}),
        (["shih_tzu", "042.Rhodesian_Ridgeback", "BEAGLE"], {"shih_tzu": 0, "042.Rhodesian_Ridgeback": 1, "BEAGLE": 2}),
        (["beagle", "n02086240"], {"beagle": 2, "n02086240": 0}),  # mixed, one class absent
    ],
    ids=["folder-ids", "names", "loose-names", "mixed-and-missing"],
)
def test_folders_match_the_class_list_by_folder_id_or_name(
    tmp_path: Path, folders: list[str], expected: dict[str, int]
) -> None:
    root = _tree(tmp_path / "held", dict.fromkeys(folders, 2))

    labelled = load_labelled(root, CLASSES)

    assert labelled.folders == expected
    assert sorted({s.label for s in labelled.samples}) == sorted(expected.values())
    assert len(labelled.samples) == 2 * len(folders)
    assert [c.name for c in labelled.missing] == [c.name for i, c in enumerate(CLASSES) if i not in expected.values()]
    assert all(s.path.parent.name in expected and s.label == expected[s.path.parent.name] for s in labelled.samples)


def test_a_folder_the_model_does_not_know_is_named_or_skipped(tmp_path: Path) -> None:
    root = _tree(tmp_path / "held", {"beagle": 2, "Samoyed": 2, "cats": 1})

    with pytest.raises(DatasetError) as info:
        load_labelled(root, CLASSES)
    labelled = load_labelled(root, CLASSES, unknown="skip")

    message = str(info.value)
    assert "2 folder(s) in" in message
    assert "'cats', 'Samoyed'" in message
    assert "n02086240 (Shih-Tzu)" in message  # what the model knows
    assert "--skip-unknown-folders" in message
    assert labelled.unknown == ["cats", "Samoyed"]
    assert {s.path.parent.name for s in labelled.samples} == {"beagle"}


def test_two_folders_for_one_class_are_an_error_naming_both(tmp_path: Path) -> None:
    root = _tree(tmp_path / "held", {"beagle": 1, "n02088364": 1})

    with pytest.raises(DatasetError, match=r"Folders 'beagle' and 'n02088364' both match class 'beagle'"):
        load_labelled(root, CLASSES)


def test_a_data_folder_with_splits_is_pointed_at_one_split(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data", {"train/beagle": 1, "test/beagle": 1})

    with pytest.raises(DatasetError, match=r"point at one split instead, e\.g\. '.*test'"):
        load_labelled(root, CLASSES)


# --- names files ---------------------------------------------------------------------------------------------------


def test_a_names_file_whose_ids_match_no_folder_is_an_error_naming_them(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data", {"n02086240": 2, "n02087394": 2})
    wrong = tmp_path / "names.txt"
    wrong.write_text("n09999999 Shih-Tzu\nn09999998 Rhodesian ridgeback\n", encoding="utf-8")

    with pytest.raises(DatasetError) as info:
        load_splits(root, names=wrong, valid_fraction=0.5)

    message = str(info.value)
    assert f"Names file {str(wrong)!r} does not fit" in message
    assert "2 of its 2 ids match no folder (n09999998, n09999999)" in message
    assert "2 of the 2 folders have no name in it (n02086240, n02087394)" in message


def test_a_names_file_may_name_more_folders_than_the_data_has(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data", {"n02086240": 2, "n02087394": 2})
    superset = tmp_path / "names.txt"
    superset.write_text("n02086240 Shih-Tzu\nn02087394 Rhodesian ridgeback\nn02088364 beagle\n", encoding="utf-8")

    splits = load_splits(root, names=superset, valid_fraction=0.5)

    assert splits.class_names == ["Shih-Tzu", "Rhodesian ridgeback"]


def test_two_classes_with_one_display_name_are_an_error(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data", {"a": 2, "b": 2})

    with pytest.raises(DatasetError, match=r"Class folders 'a' and 'b' .* have the same display name 'dog'"):
        load_splits(root, names={"a": "dog", "b": "dog"}, valid_fraction=0.5)


# --- dogclf evaluate on a model --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tinynet model trained on a 3-class dogImages-layout tree, and that tree."""
    data, model_dir = train_tiny_model(tmp_path_factory.mktemp("evaluate"))
    return {"data": data, "model": model_dir}


def _held_out_tree(model: dict[str, Path], root: Path, *, extra: str | None = None) -> Path:
    """The test images re-filed as someone else would: folders named by breed, one breed absent."""
    test = model["data"] / "test"
    shutil.copytree(test / "001.Synthetic_red_discs", root / "Synthetic red discs")
    shutil.copytree(test / "003.Synthetic_green_squares", root / "synthetic_green_squares")
    if extra:
        _images(root / extra, 2)
    return root


def _evaluate(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    return run_cli(["evaluate", *args], capsys)


def test_evaluate_scores_a_plain_class_folder_tree_as_a_whole(
    model: dict[str, Path], tiny_spec: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    held = _held_out_tree(model, tmp_path / "held")
    args = ["--model", str(model["model"]), "--data", str(held), "--plot", str(tmp_path / "cm.png")]

    code, text, _ = _evaluate(args, capsys)
    json_code, out, _ = _evaluate([*args, "--json"], capsys)
    report = json.loads(out)

    assert code == json_code == 0
    assert f"Evaluated every class folder of {held}: 6 images" in text
    assert "1 of the model's 3 classes have no folder there: Synthetic blue stripes" in text
    assert report["n"] == 6  # every image, no hidden split
    assert report["split"] == "all"
    assert report["data"] == str(held)
    assert report["classes_without_folder"] == ["Synthetic blue stripes"]
    assert report["skipped_folders"] == []
    assert set(report["per_class"]) == {"Synthetic red discs", "Synthetic green squares"}
    assert report["class_names"] == SYNTHETIC  # labels index the model's classes, not the tree's own order


def test_evaluate_names_a_folder_the_model_does_not_know_in_one_line(
    model: dict[str, Path], tiny_spec: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    held = _held_out_tree(model, tmp_path / "held", extra="Golden retriever")
    args = ["--model", str(model["model"]), "--data", str(held), "--plot", str(tmp_path / "cm.png")]

    code, _, err = _evaluate(args, capsys)
    skip_code, text, _ = _evaluate([*args, "--skip-unknown-folders"], capsys)

    assert code == 2
    assert err.startswith("dogclf evaluate: error: 1 folder(s) in")
    assert "'Golden retriever'" in err
    assert err.count("\n") == 1
    assert skip_code == 0
    assert "Skipped 1 folder(s) the model does not know: Golden retriever" in text
    assert "all: n=6 " in text


def test_evaluate_reads_a_test_folder_without_train(
    model: dict[str, Path], tiny_spec: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "only_test"
    shutil.copytree(model["data"] / "test", data / "test")

    code, out, _ = _evaluate(["--model", str(model["model"]), "--data", str(data), "--json"], capsys)

    assert code == 0
    report = json.loads(out)
    assert report["split"] == "test"
    assert report["n"] == 9


def test_split_all_on_a_data_folder_with_splits_asks_for_one_split(
    model: dict[str, Path], tiny_spec: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _evaluate(["--model", str(model["model"]), "--data", str(model["data"]), "--split", "all"], capsys)

    assert code == 2
    assert "has split folders (train/, valid/ or test/); evaluate one of them with --split" in err


@pytest.fixture(scope="module")
def fraction_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A model trained on a plain class-folder tree with valid_fraction=0.25 (so it records the held-out split)."""
    root = tmp_path_factory.mktemp("fraction")
    tree = dogclf.make_synthetic_dataset(root / "synthetic", num_classes=3, per_split=(8, 0, 0), size=40)
    registry = default_registry()
    registry.register(_tiny_namespace()["tiny"](), override=True, source="tests/evaluation/test_evaluate_folders.py")  # type: ignore[operator]
    try:
        config = dogclf.TrainConfig(epochs=1, batch_size=8, num_workers=0, device="cpu", seed=5)
        result = dogclf.train(
            tree / "train", "tinynet", root / "model", config=config, weights=None, valid_fraction=0.25,
            progress=False,
        )  # fmt: skip
    finally:
        registry.unregister("tinynet")
    return {"data": tree / "train", "model": root / "model", "result": result}


def test_split_valid_on_a_foreign_folder_is_refused_not_a_silent_fraction(
    fraction_model: dict[str, Any], tiny_spec: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = dogclf.make_synthetic_dataset(tmp_path / "other", num_classes=3, per_split=(8, 0, 0), size=40, seed=9)
    args = ["--model", str(fraction_model["model"]), "--data", str(other / "train"), "--plot", str(tmp_path / "c.png")]

    code, _, err = _evaluate([*args, "--split", "valid"], capsys)
    whole, out, _ = _evaluate([*args, "--json"], capsys)

    assert code == 2
    assert "--split valid: this model held out 0.25 of" in err
    assert "does not hold the same images" in err
    assert "--split all" in err
    assert whole == 0
    assert json.loads(out)["n"] == 24  # the default for a plain tree: all of it


def test_split_valid_on_a_copy_of_the_training_folder_is_the_held_out_part(
    fraction_model: dict[str, Any], tiny_spec: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = shutil.copytree(fraction_model["data"], tmp_path / "moved")  # same files, another path
    args = ["--model", str(fraction_model["model"]), "--data", str(copy), "--plot", str(tmp_path / "c.png")]

    code, out, _ = _evaluate([*args, "--split", "valid", "--json"], capsys)

    assert code == 0
    report = json.loads(out)
    held_out = fraction_model["result"].splits.valid
    assert report["n"] == len(held_out) == 6
    assert report["evaluated"].startswith(f"the 0.25 of {copy} held out for validation")


def test_python_api_evaluates_a_folder_against_the_models_classes(
    model: dict[str, Path], tiny_spec: Any, tmp_path: Path
) -> None:
    held = _held_out_tree(model, tmp_path / "held")
    classifier = dogclf.load_model(model["model"])

    labelled = dogclf.load_labelled(held, classifier.classes)
    report = dogclf.evaluate(classifier, held)

    assert [c.folder for c in classifier.classes] == [
        f"00{i}.{n.replace(' ', '_')}" for i, n in enumerate(SYNTHETIC, 1)
    ]
    assert {s.label for s in labelled.samples} == {0, 2}
    assert [c.name for c in labelled.missing] == ["Synthetic blue stripes"]
    assert report.n == len(labelled.samples) == 6
    assert report.per_class().keys() == {"Synthetic red discs", "Synthetic green squares"}


def test_load_splits_of_a_plain_tree_points_to_load_labelled_for_its_test_split(tmp_path: Path) -> None:
    root = _tree(tmp_path / "held", {"beagle": 2, "Shih-Tzu": 2})

    with pytest.raises(DatasetError, match=r"dogclf\.evaluate\(classifier, folder\) or dogclf\.load_labelled"):
        load_splits(root, valid_fraction=0.5).split("test")


def test_split_valid_after_a_run_that_skipped_an_unreadable_image(
    tiny_spec: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = dogclf.make_synthetic_dataset(tmp_path / "synthetic", num_classes=3, per_split=(8, 0, 0), size=40) / "train"
    (tree / "002.Synthetic_blue_stripes" / "broken.jpg").write_bytes(b"not a jpeg")  # found while extracting
    config = dogclf.TrainConfig(epochs=1, batch_size=8, num_workers=0, device="cpu")
    result = dogclf.train(
        tree, "tinynet", tmp_path / "model", config=config, weights=None, valid_fraction=0.25, cache=False,
        progress=False,
    )  # fmt: skip
    assert [p.name for p, _ in result.splits.skipped] == ["broken.jpg"]
    capsys.readouterr()  # the epoch line

    code, out, err = _evaluate(
        ["--model", str(tmp_path / "model"), "--data", str(tree), "--split", "valid", "--json"], capsys
    )

    assert code == 0, err
    assert json.loads(out)["n"] == len(result.splits.valid)
