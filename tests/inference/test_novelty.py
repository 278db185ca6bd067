"""The feature-space novelty score: fitting, storing, loading, the unknown decision at every entry point, and
``dogclf evaluate --unknown-dir``."""

from __future__ import annotations

import asyncio
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import _tiny_namespace
from serving.test_package import plugin_model  # noqa: F401 (a fixture: packaging needs a plugin backbone)
from sklearn.metrics import roc_auc_score

import dogclf
from dogclf.backbones.registry import default_registry
from dogclf.cli import main
from dogclf.errors import ModelDirError
from dogclf.evaluation.openset import auroc
from dogclf.inference.novelty import DEFAULT_METHOD, NOVELTY_NAME, NoveltyScorer, fit_novelty, load_novelty


def _clusters(n: int, centres: torch.Tensor, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(centres)
    return centres[labels] + 0.5 * torch.randn(n, centres.shape[1], generator=generator), labels


def test_novelty_scores_an_unseen_cluster_far_above_the_known_ones_and_keeps_95_percent_of_valid() -> None:
    centres = torch.randn(4, 16, generator=torch.Generator().manual_seed(0)) * 3
    train, _ = _clusters(400, centres[:3], seed=1)
    valid, _ = _clusters(200, centres[:3], seed=2)
    unseen, _ = _clusters(100, centres[3:], seed=3)

    scorer = fit_novelty(train, valid, k=5)

    valid_scores, unseen_scores = scorer.score(valid), scorer.score(unseen)
    assert float(scorer.is_novel(valid_scores).float().mean()) == pytest.approx(0.05, abs=0.005)
    assert float(scorer.is_novel(unseen_scores).float().mean()) > 0.95
    # The score is one minus the cosine similarity to the 5th most similar training photo.
    similarity = torch.nn.functional.cosine_similarity(unseen[:1], train, dim=1)
    expected = 1.0 - float(similarity.sort(descending=True).values[4])
    assert float(unseen_scores[0]) == pytest.approx(expected, abs=2e-3)  # the bank is stored as float16


def test_energy_is_the_negative_log_sum_exp_of_the_tempered_logits_and_needs_them() -> None:
    logits = torch.tensor([[4.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    scorer = NoveltyScorer(method="energy", temperature=2.0)

    expected = -torch.logsumexp(logits / 2.0, dim=1)
    assert torch.allclose(scorer.score(torch.ones(2, 5), logits), expected)
    with pytest.raises(ValueError, match="'energy' novelty score needs the head's logits"):
        scorer.score(torch.ones(2, 5))


def test_mahalanobis_is_the_distance_to_the_nearest_class_mean_under_the_shrunk_shared_covariance() -> None:
    centres = torch.randn(3, 6, generator=torch.Generator().manual_seed(0)) * 3
    train, labels = _clusters(300, centres, seed=1)
    probe = torch.randn(4, 6, generator=torch.Generator().manual_seed(2))

    scorer = fit_novelty(train, None, train_labels=labels, method="mahalanobis", shrinkage=0.2)

    x = torch.nn.functional.normalize(train.double(), dim=1)
    means = torch.stack([x[labels == c].mean(0) for c in range(3)])
    centred = x - means[labels]
    covariance = centred.T @ centred / len(x)
    shrunk = 0.8 * covariance + 0.2 * covariance.trace() / 6 * torch.eye(6, dtype=torch.float64)
    p = torch.nn.functional.normalize(probe.double(), dim=1)
    d = p[:, None, :] - means[None]
    expected = torch.einsum("nkf,fg,nkg->nk", d, torch.linalg.inv(shrunk), d).min(dim=1).values
    assert torch.allclose(scorer.score(probe).double(), expected, rtol=1e-3, atol=1e-3)


def test_a_combination_adds_the_parts_on_the_validation_photos_scale_and_keeps_95_percent() -> None:
    centres = torch.randn(4, 16, generator=torch.Generator().manual_seed(0)) * 3
    train, labels = _clusters(400, centres[:3], seed=1)
    valid, _ = _clusters(200, centres[:3], seed=2)
    head = torch.nn.Linear(16, 3)
    with torch.no_grad():
        head.weight.copy_(centres[:3])
        head.bias.zero_()
        valid_logits = head(valid)

    scorer = fit_novelty(
        train, valid, train_labels=labels, valid_logits=valid_logits, temperature=1.5, method="knn+energy"
    )

    parts = scorer.component_scores(valid, valid_logits)
    assert set(parts) == set(scorer.scales) == {"knn", "energy"}
    for name, values in parts.items():  # each part: minus its median, over its interquartile range
        q = torch.quantile(values.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
        assert scorer.scales[name] == pytest.approx((float(q[1]), float(q[2] - q[0])), rel=1e-5)
    combined = sum((parts[n] - scorer.scales[n][0]) / scorer.scales[n][1] for n in parts)
    assert torch.allclose(scorer.score(valid, valid_logits), combined, atol=1e-5)
    assert float(scorer.is_novel(scorer.score(valid, valid_logits)).float().mean()) == pytest.approx(0.05, abs=0.005)
    assert scorer.to_config()["temperature"] == 1.5


def test_classknn_is_the_knn_distance_among_the_predicted_breeds_training_photos() -> None:
    centres = torch.randn(2, 16, generator=torch.Generator().manual_seed(0)) * 3
    train, labels = _clusters(200, centres, seed=1)
    probe = train[labels == 1][:3] + 0.01  # next to breed 1's photos ...
    logits = torch.tensor([[5.0, 0.0]] * 3)  # ... but the head calls them breed 0

    plain = fit_novelty(train, None, k=5, method="knn")
    scorer = fit_novelty(train, None, train_labels=labels, k=5, method="classknn")

    similarity = torch.nn.functional.cosine_similarity(probe[:, None], train[labels == 0][None], dim=2)
    expected = 1.0 - similarity.sort(dim=1, descending=True).values[:, 4]
    assert torch.allclose(scorer.score(probe, logits), expected, atol=2e-3)  # the bank is stored as float16
    assert bool((scorer.score(probe, logits) > plain.score(probe) + 0.5).all())  # far from breed 0, near breed 1
    called_right = torch.tensor([[0.0, 5.0]] * 3)
    assert torch.allclose(scorer.score(probe, called_right), plain.score(probe), atol=2e-3)
    with pytest.raises(ValueError, match="'classknn' novelty score needs the head's logits"):
        scorer.score(probe)


def test_classknn_with_fewer_photos_of_a_breed_than_k_uses_its_farthest_photo() -> None:
    train = torch.eye(4)[[0, 0, 1, 2, 3]] + 0.1
    labels = torch.tensor([0, 0, 1, 1, 1])
    scorer = fit_novelty(train, None, train_labels=labels, k=10, method="classknn")

    scores = scorer.score(torch.eye(4)[:1] + 0.1, torch.tensor([[1.0, 0.0]]))

    assert float(scores[0]) == pytest.approx(0.0, abs=2e-3)  # both photos of breed 0 are the probe itself


@pytest.mark.parametrize(
    "method", ["knn", "mahalanobis", "energy", "classknn", "knn+energy", "knn+mahalanobis", "classknn+energy"]
)
def test_every_method_saves_and_loads_back_to_the_same_scores_and_threshold(method: str, tmp_path: Path) -> None:
    features, labels = _clusters(60, torch.randn(3, 8, generator=torch.Generator().manual_seed(1)) * 3, seed=2)
    logits = torch.randn(60, 3, generator=torch.Generator().manual_seed(3))
    scorer = fit_novelty(
        features[:40], features[40:], train_labels=labels[:40], valid_logits=logits[40:], temperature=1.3, method=method
    )
    scorer.save(tmp_path)

    loaded = load_novelty(tmp_path, {"novelty": json.loads(json.dumps(scorer.to_config())), "num_features": 8})

    assert loaded is not None
    assert loaded.method == method
    assert loaded.threshold == scorer.threshold
    assert torch.allclose(loaded.score(features, logits), scorer.score(features, logits), atol=5e-3)


def test_fit_novelty_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        fit_novelty(torch.ones(3, 2), None, k=0)
    with pytest.raises(ValueError, match="needs training features"):
        fit_novelty(torch.ones(0, 2), None)
    with pytest.raises(ValueError, match="Unknown novelty method 'ssd'; choose one of knn, mahalanobis"):
        fit_novelty(torch.ones(3, 2), None, method="ssd")
    with pytest.raises(ValueError, match="needs one class label per training feature"):
        fit_novelty(torch.ones(3, 2), None, method="mahalanobis")
    with pytest.raises(ValueError, match="'classknn' novelty score needs one class label per training feature"):
        fit_novelty(torch.ones(3, 2), None, method="classknn", train_labels=torch.zeros(2, dtype=torch.long))


def test_a_classknn_file_without_bank_labels_is_a_clear_error(tmp_path: Path) -> None:
    features, labels = _clusters(60, torch.randn(3, 8, generator=torch.Generator().manual_seed(1)) * 3, seed=2)
    scorer = fit_novelty(features, None, train_labels=labels, method="classknn+energy")
    scorer.bank_labels = None
    scorer.save(tmp_path)

    with pytest.raises(ModelDirError, match="holds no 'bank_labels' tensor; the 'classknn' novelty methods need one"):
        load_novelty(tmp_path, {"novelty": scorer.to_config(), "num_features": 8})


@pytest.mark.parametrize("seed", [0, 1])
def test_auroc_is_the_roc_area_with_ties(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    positive = torch.randint(0, 5, (30,), generator=generator).float()  # many ties
    negative = torch.randint(0, 4, (40,), generator=generator).float()

    expected = roc_auc_score(np.r_[np.ones(30), np.zeros(40)], np.r_[positive.numpy(), negative.numpy()])
    assert auroc(positive, negative) == pytest.approx(expected)


# --- in a model directory ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def novelty_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny model trained on 3 synthetic classes, and a folder of a 4th class it never saw."""
    root = tmp_path_factory.mktemp("novelty")
    whole = dogclf.make_synthetic_dataset(root / "whole", num_classes=4, per_split=(12, 17, 6), size=40, seed=3)
    data = root / "data"
    for split in ("train", "valid", "test"):
        for folder in sorted((whole / split).iterdir())[:3]:
            shutil.copytree(folder, data / split / folder.name)
    unknown = root / "unknown"
    shutil.copytree(sorted((whole / "test").iterdir())[3], unknown / "nested" / "other_breed")
    registry = default_registry()
    registry.register(_tiny_namespace()["tiny"](), override=True, source="tests/inference/test_novelty.py")  # type: ignore[operator]
    try:
        config = dogclf.TrainConfig(num_workers=0, device="cpu", cv_folds=3)
        dogclf.train(data, "tinynet", root / "model", config=config, weights=None, progress=False)
    finally:
        registry.unregister("tinynet")
    return {"data": data, "model": root / "model", "unknown": unknown}


def test_train_stores_the_novelty_score_as_safetensors_named_in_the_config(
    novelty_model: dict[str, Path], tiny_spec: dogclf.BackboneSpec
) -> None:
    model = novelty_model["model"]
    config = json.loads((model / "config.json").read_text())

    assert config["novelty"]["method"] == DEFAULT_METHOD == "knn+energy"
    assert config["novelty"]["k"] == 10
    assert config["novelty"]["temperature"] == config["calibration"]["temperature"]
    assert set(config["novelty"]["scales"]) == {"knn", "energy"}
    assert config["novelty"]["file"] == NOVELTY_NAME
    assert config["novelty"]["keep"] == 0.95
    assert (model / NOVELTY_NAME).read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle
    classifier = dogclf.load_model(model)
    assert classifier.novelty is not None
    assert classifier.novelty.threshold == pytest.approx(config["novelty"]["threshold"])
    assert classifier.novelty.bank.shape == (36, 16)  # the 36 training photos' features
    assert classifier.novelty.bank.dtype == torch.float16


def test_predict_flags_unknown_by_the_novelty_score(
    novelty_model: dict[str, Path], tiny_spec: dogclf.BackboneSpec
) -> None:
    classifier = dogclf.load_model(novelty_model["model"])
    images = sorted(novelty_model["unknown"].rglob("*.jpg")) + sorted((novelty_model["data"] / "test").rglob("*.jpg"))
    batch = classifier.preprocess(images)
    scores = classifier.scores(batch).novelty
    assert scores is not None

    answers = classifier.classify(images)

    assert [a.unknown for a in answers] == (scores > classifier.novelty.threshold).tolist()  # type: ignore[union-attr]
    assert [r.unknown for r in classifier.results(batch)] == [a.unknown for a in answers]


def test_a_model_without_the_novelty_entry_loads_and_decides_by_softmax_as_before(
    novelty_model: dict[str, Path], tiny_spec: dogclf.BackboneSpec, tmp_path: Path
) -> None:
    model = Path(shutil.copytree(novelty_model["model"], tmp_path / "model"))
    config = json.loads((model / "config.json").read_text())
    del config["novelty"]
    (model / "config.json").write_text(json.dumps(config))
    (model / NOVELTY_NAME).unlink()

    classifier = dogclf.load_model(model)
    images = sorted(novelty_model["unknown"].rglob("*.jpg"))
    answers = classifier.classify(images)

    assert classifier.novelty is None
    threshold = config["calibration"]["unknown_threshold"]
    assert [a.unknown for a in answers] == [a.predictions[0].score < threshold for a in answers]


def test_a_model_saved_with_the_old_knn_entry_loads_and_scores_by_knn_alone(
    novelty_model: dict[str, Path], tiny_spec: dogclf.BackboneSpec, tmp_path: Path
) -> None:
    model = Path(shutil.copytree(novelty_model["model"], tmp_path / "model"))
    config = json.loads((model / "config.json").read_text())
    classifier = dogclf.load_model(model)
    images = sorted(novelty_model["unknown"].rglob("*.jpg"))
    features = classifier.forward(classifier.preprocess(images)).features
    bank = classifier.novelty.bank  # type: ignore[union-attr]
    from safetensors.torch import save_file

    save_file({"bank": bank}, str(model / NOVELTY_NAME), metadata={"method": "knn", "k": "10"})  # as 0.x wrote it
    config["novelty"] = {"method": "knn", "file": NOVELTY_NAME, "k": 3, "threshold": 0.01, "keep": 0.95}
    config.pop("files", None)  # 0.x wrote no manifest of the files either
    (model / "config.json").write_text(json.dumps(config))

    old = dogclf.load_model(model)

    assert old.novelty is not None
    assert old.novelty.components == ("knn",)
    similarity = torch.nn.functional.normalize(features, dim=1) @ torch.nn.functional.normalize(bank.float(), dim=1).T
    expected = 1.0 - similarity.topk(3, dim=1).values[:, -1]
    assert torch.allclose(old.novelty.score(features), expected, atol=2e-3)
    assert [a.unknown for a in old.classify(images)] == (old.novelty.score(features) > 0.01).tolist()


def test_null_temperature_and_shrinkage_load_as_their_defaults(
    novelty_model: dict[str, Path], tiny_spec: dogclf.BackboneSpec, tmp_path: Path
) -> None:
    model = Path(shutil.copytree(novelty_model["model"], tmp_path / "model"))
    config = json.loads((model / "config.json").read_text())
    config["novelty"] |= {"temperature": None, "shrinkage": None}  # what config.json's checks let through
    (model / "config.json").write_text(json.dumps(config))

    loaded = dogclf.load_model(model)

    assert loaded.novelty is not None
    assert loaded.novelty.temperature == 1.0
    assert loaded.novelty.shrinkage == NoveltyScorer().shrinkage


def test_a_config_naming_a_novelty_method_this_dogclf_does_not_know_is_a_clear_error(
    novelty_model: dict[str, Path], tiny_spec: dogclf.BackboneSpec, tmp_path: Path
) -> None:
    model = Path(shutil.copytree(novelty_model["model"], tmp_path / "model"))
    config = json.loads((model / "config.json").read_text())
    config["novelty"]["method"] = "vim"
    (model / "config.json").write_text(json.dumps(config))

    with pytest.raises(ModelDirError, match=r"has novelty method 'vim'; this dogclf knows 'knn', .*Upgrade dogclf"):
        dogclf.load_model(model)


def test_a_config_naming_a_missing_novelty_file_is_a_clear_error(
    novelty_model: dict[str, Path], tiny_spec: dogclf.BackboneSpec, tmp_path: Path
) -> None:
    model = Path(shutil.copytree(novelty_model["model"], tmp_path / "model"))
    (model / NOVELTY_NAME).unlink()

    with pytest.raises(ModelDirError, match=r"novelty file .*novelty\.safetensors.* is missing or unreadable"):
        dogclf.load_model(model)


def test_train_without_novelty_writes_none_and_removes_a_stale_file(
    tmp_path: Path, tiny_spec: dogclf.BackboneSpec, tiny_tree: Path
) -> None:
    out = tmp_path / "model"
    config = dogclf.TrainConfig(num_workers=0, device="cpu", cv_folds=3)
    for novelty in (True, False):
        dogclf.train(
            tiny_tree,
            "tinynet",
            out,
            config=config,
            weights=None,
            progress=False,
            overwrite=True,
            novelty=novelty,
        )

    assert "novelty" not in json.loads((out / "config.json").read_text())
    assert not (out / NOVELTY_NAME).exists()
    assert load_novelty(out, json.loads((out / "config.json").read_text())) is None


def test_the_package_archive_carries_the_novelty_file(
    plugin_model: tuple[Path, Any],  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    from dogclf.serving.package import package_model

    model, _ = plugin_model
    features = torch.randn(40, 16, generator=torch.Generator().manual_seed(5))
    scorer = fit_novelty(features, features[:8])
    scorer.save(model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "novelty": scorer.to_config()}))

    package_model(model, tmp_path / "model.tar.gz")

    with tarfile.open(tmp_path / "model.tar.gz") as archive:
        member = archive.extractfile(NOVELTY_NAME)
        assert member is not None
        assert member.read() == (model / NOVELTY_NAME).read_bytes()


def _with_threshold(model: Path, tmp_path: Path, images: list[Path]) -> Path:
    """A copy of ``model`` whose novelty threshold splits the scores of ``images`` in half."""
    copy = Path(shutil.copytree(model, tmp_path / "model"))
    classifier = dogclf.load_model(copy)
    scores = classifier.scores(classifier.preprocess(images)).novelty
    config = json.loads((copy / "config.json").read_text())
    ordered = scores.sort().values  # type: ignore[union-attr]
    middle = len(ordered) // 2  # halfway between the two middle scores: no image sits on the threshold
    config["novelty"]["threshold"] = float(ordered[middle - 1] + ordered[middle]) / 2
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def test_sagemaker_handlers_and_the_batcher_answer_with_the_novelty_decision(
    novelty_model: dict[str, Path], tiny_spec: dogclf.BackboneSpec, tmp_path: Path
) -> None:
    from dogclf.serving import handlers
    from dogclf.serving.batcher import Batcher

    images = (
        sorted(novelty_model["unknown"].rglob("*.jpg"))[:3]
        + sorted((novelty_model["data"] / "test").rglob("*.jpg"))[:3]
    )
    model_dir = _with_threshold(novelty_model["model"], tmp_path, images)
    reference = dogclf.load_model(model_dir)
    expected = [a.unknown for a in reference.classify(images)]
    assert any(expected)
    assert not all(expected)

    model = handlers.model_fn(str(model_dir))
    answers = [handlers.predict_fn(handlers.input_fn(p.read_bytes(), "image/jpeg"), model) for p in images]
    assert [a.results[0].unknown for a in answers] == expected

    async def batched() -> list[Any]:
        batcher = Batcher(reference)
        await batcher.start()
        try:
            answers = await asyncio.gather(*(batcher.classify([p.read_bytes()], top_k=2) for p in images))
        finally:
            await batcher.stop()
        return [answer[0] for answer in answers]

    results = asyncio.run(batched())
    assert [r.unknown for r in results] == expected
    assert all(len(r.predictions) == 2 for r in results)


def test_evaluate_unknown_dir_reports_both_scores_side_by_side(
    novelty_model: dict[str, Path], tiny_spec: dogclf.BackboneSpec, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["evaluate", "--model", str(novelty_model["model"]), "--data", str(novelty_model["data"])]

    code = main([*args, "--unknown-dir", str(novelty_model["unknown"]), "--json"])

    payload = json.loads(capsys.readouterr().out)
    assert code == 0
    report = payload["unknown_dir"]
    assert report["n_unknown"] == 6
    assert report["n_known"] == payload["n"] == 18
    by_name = {s["name"]: s for s in report["scores"]}
    assert set(by_name) == {"softmax", "novelty"}
    assert by_name["novelty"]["decides"] is True
    assert by_name["softmax"]["decides"] is False
    classifier = dogclf.load_model(novelty_model["model"])
    unknown = sorted(novelty_model["unknown"].rglob("*.jpg"))
    known = sorted((novelty_model["data"] / "test").rglob("*.jpg"))
    unknown_scores = classifier.scores(classifier.preprocess(unknown)).novelty
    known_scores = classifier.scores(classifier.preprocess(known)).novelty
    assert by_name["novelty"]["auroc"] == pytest.approx(auroc(unknown_scores, known_scores))  # type: ignore[arg-type]
    threshold = classifier.novelty.threshold  # type: ignore[union-attr]
    assert by_name["novelty"]["unknown_flagged"] == pytest.approx(float((unknown_scores > threshold).float().mean()))
    assert payload["unknown_rate"] == pytest.approx(by_name["novelty"]["known_flagged"])

    assert main([*args, "--unknown-dir", str(novelty_model["unknown"])]) == 0
    text = capsys.readouterr().out
    assert "Unknown photos: 6, known (18):" in text
    assert "(decides unknown)" in text


def test_evaluate_unknown_dir_without_images_is_a_clear_error(
    novelty_model: dict[str, Path], tiny_spec: dogclf.BackboneSpec, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    args = ["evaluate", "--model", str(novelty_model["model"]), "--data", str(novelty_model["data"])]

    assert main([*args, "--unknown-dir", str(tmp_path / "empty")]) == 2
    assert f"--unknown-dir {str(tmp_path / 'empty')!r} holds no image files" in capsys.readouterr().err


def test_scorer_threshold_none_never_flags() -> None:
    scorer = NoveltyScorer(bank=torch.tensor([[1.0, 0.0]]).half())

    assert not scorer.is_novel(scorer.score(torch.tensor([[0.0, 1.0], [-1.0, 0.0]]))).any()
