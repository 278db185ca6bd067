"""``dogclf predict`` on folders and to files, closed pipes, and progress lines when stderr is not a terminal."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import dogclf_command, plugin_environ, run_cli, train_tiny_model
from PIL import Image

import dogclf
from dogclf._progress import ProgressLines, progress_reporter

SYNTHETIC = {"Synthetic red discs", "Synthetic blue stripes", "Synthetic green squares"}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tinynet model and its data tree (9 test images in three class folders)."""
    data, model_dir = train_tiny_model(tmp_path_factory.mktemp("predict"))
    return {"data": data, "model": model_dir}


def _photos(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A folder with images at two depths, plus files predict must leave alone; returns it and the images in order."""
    root = tmp_path / "photos"
    (root / "trip" / "day10").mkdir(parents=True)
    (root / "trip" / "day9").mkdir(parents=True)
    (root / ".thumbnails").mkdir()
    images = [root / "a.jpg", root / "trip" / "day9" / "b.png", root / "trip" / "day10" / "c.JPEG"]
    for i, path in enumerate(images):
        Image.new("RGB", (48, 40), (60 * i, 120, 200)).save(path)
    Image.new("RGB", (48, 40)).save(root / ".thumbnails" / "hidden.jpg")
    (root / "notes.txt").write_text("not a photo")
    return root, images


def _predict(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    return run_cli(["predict", *args], capsys)


def test_predict_a_folder_predicts_every_image_under_it(
    model: dict[str, Path], tiny_spec: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, images = _photos(tmp_path)

    code, out, _ = _predict(["--model", str(model["model"]), str(folder), "--json", "--top-k", "2"], capsys)

    assert code == 0
    results = json.loads(out)
    assert [r["image"] for r in results] == [str(p) for p in images]  # recursive, natural order, no hidden/non-image
    for result in results:
        assert len(result["predictions"]) == 2
        assert {p["label"] for p in result["predictions"]} <= SYNTHETIC
        assert isinstance(result["unknown"], bool)


def test_predict_json_is_a_list_even_for_one_image(
    model: dict[str, Path], tiny_spec: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, images = _photos(tmp_path)

    code, out, _ = _predict(["--model", str(model["model"]), str(images[0]), "--json"], capsys)

    assert code == 0
    [result] = json.loads(out)
    assert result["image"] == str(images[0])


def test_a_folder_without_images_is_an_error_entry(
    model: dict[str, Path], tiny_spec: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("nothing here")

    code, out, _ = _predict(["--model", str(model["model"]), str(empty), "--json"], capsys)

    assert code == 1
    [result] = json.loads(out)
    assert result["image"] == str(empty)
    assert "folder has no image files" in result["error"]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".json"])
def test_output_file_holds_one_record_per_image(
    model: dict[str, Path], tiny_spec: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    folder, images = _photos(tmp_path)
    broken = folder / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    output = tmp_path / f"results{suffix}"

    code, out, err = _predict(
        ["--model", str(model["model"]), str(folder), "--output", str(output), "--top-k", "3"], capsys
    )

    assert code == 1  # one image failed
    assert out.strip() == f"Wrote 4 result(s) to {output} (1 with errors)"
    assert f"error: {broken}: not an image Pillow can identify" in err
    text = output.read_text(encoding="utf-8")
    if suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        assert list(rows[0]) == [
            "image",
            "label_1",
            "score_1",
            "label_2",
            "score_2",
            "label_3",
            "score_3",
            "unknown",
            "error",
        ]
        by_image = {row["image"]: row for row in rows}
        assert by_image[str(broken)]["error"].startswith(f"{broken}: not an image")
        good = by_image[str(images[0])]
        assert good["label_1"] in SYNTHETIC
        assert float(good["score_1"]) >= float(good["score_2"]) >= float(good["score_3"]) > 0
        assert good["unknown"] in ("true", "false")
        assert good["error"] == ""
    else:
        records = [json.loads(line) for line in text.splitlines()] if suffix == ".jsonl" else json.loads(text)
        assert [r["image"] for r in records] == [str(p) for p in (images[0], broken, images[1], images[2])]
        assert all(len(r["predictions"]) == 3 for r in records if "error" not in r)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".results")]  # no temporary file left


def test_output_is_checked_before_the_model_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    existing = tmp_path / "results.csv"
    existing.write_text("keep me")
    no_model = tmp_path / "no_model"

    bad_suffix, _, suffix_err = _predict(
        ["--model", str(no_model), str(tmp_path), "-o", str(tmp_path / "r.txt")], capsys
    )
    exists, _, exists_err = _predict(["--model", str(no_model), str(tmp_path), "-o", str(existing)], capsys)

    assert bad_suffix == exists == 2
    assert "name a .jsonl, .csv or .json file" in suffix_err
    assert "already exists; pass --overwrite to replace it" in exists_err
    assert existing.read_text() == "keep me"


@pytest.mark.parametrize(
    "command",
    [
        ["evaluate", "--model", "{model}", "--data", "{data}"],
        ["predict", "--model", "{model}", "{data}/test"],
        ["backbones"],
    ],
    ids=["evaluate", "predict", "backbones"],
)
def test_a_closed_stdout_ends_quietly_without_a_traceback(
    model: dict[str, Path], tiny_plugin_dir: Path, tmp_path: Path, command: list[str]
) -> None:
    """``dogclf ... | head``: the reader goes away; dogclf stops with 141 (as a command killed by SIGPIPE), silently."""
    args = [a.replace("{model}", str(model["model"])).replace("{data}", str(model["data"])) for a in command]
    if command[0] == "evaluate":
        args += ["--plot", str(tmp_path / "cm.png")]
    proc = subprocess.Popen(
        [*dogclf_command(), *args],
        env=plugin_environ(tiny_plugin_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # the reader is gone before dogclf writes its first line
    _, stderr = proc.communicate(timeout=120)

    assert proc.returncode == 141, stderr.decode()
    assert b"Traceback" not in stderr
    assert b"BrokenPipeError" not in stderr
    assert b"Exception ignored" not in stderr


# --- progress lines --------------------------------------------------------------------------------------------


def test_progress_lines_report_count_rate_and_time_left(capsys: pytest.CaptureFixture[str]) -> None:
    progress = ProgressLines(200, desc="extract features", unit="img", interval=0.0)
    progress.update(50)
    quiet = ProgressLines(200, desc="quiet", unit="img", interval=3600.0)
    quiet.update(100)
    quiet.close()
    progress.close()

    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("extract features: 50/200 img (25%), ")
    assert " img/s, about " in lines[0]
    assert lines[0].endswith(" left")
    assert lines[1].startswith("extract features: 50/200 img (25%)")
    assert " in 0 s" in lines[1]


def test_progress_reporter_is_a_bar_only_on_request_or_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from tqdm import tqdm

    bar = progress_reporter(3, desc="x", bar=True)
    bar.close()
    lines = progress_reporter(3, desc="x", environ={"DOGCLF_PROGRESS_SECONDS": "2"})

    assert isinstance(bar, tqdm)
    assert isinstance(lines, ProgressLines)  # pytest's stderr is not a terminal
    assert lines.interval == 2.0
    with pytest.raises(ValueError, match="DOGCLF_PROGRESS_SECONDS='soon' must be a positive number"):
        progress_reporter(3, desc="x", environ={"DOGCLF_PROGRESS_SECONDS": "soon"})


def test_extraction_prints_progress_lines_when_stderr_is_not_a_terminal(
    tiny_spec: Any, tiny_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DOGCLF_PROGRESS_SECONDS", "0.000001")
    config = dogclf.TrainConfig(epochs=1, batch_size=8, num_workers=0, device="cpu")

    dogclf.train(
        tiny_tree, "tinynet", tmp_path / "m", config=config, weights=None, cache=False, extract_batch_size=8,
    )  # fmt: skip

    err = capsys.readouterr().err
    assert "\r" not in err  # no bar
    assert "extract features: 8/42 img (19%)" in err
    assert "extract features: 42/42 img (100%)" in err
