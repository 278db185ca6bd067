"""The names users import keep resolving wherever the code behind them lives: ``dogclf.*``, each package's lazy
``__all__``, the import paths the docs show, and the console script pyproject.toml installs."""

from __future__ import annotations

import importlib
import re

import pytest
from conftest import REPO

LAZY_PACKAGES = [
    "dogclf",
    "dogclf.artifact",
    "dogclf.evaluation",
    "dogclf.inference",
    "dogclf.pipeline",
    "dogclf.training",
    "dogclf.sagemaker",
]


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_every_public_name_of_a_package_resolves(package: str) -> None:
    module = importlib.import_module(package)

    missing = [name for name in module.__all__ if getattr(module, name, None) is None]

    assert missing == []


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("dogclf.classifier", "load_model"),  # docs/serving.md
        ("dogclf.classifier", "Classifier"),
        ("dogclf.model", "build_model"),
        ("dogclf.model", "HeadConfig"),
        ("dogclf.artifact", "save_model"),  # docs/artifact.md
        ("dogclf.evaluation", "evaluate"),
        ("dogclf.inference.novelty", "fit_novelty"),  # docs/training.md
        ("dogclf.inference.novelty", "load_novelty"),
        ("dogclf.training.calibration", "calibrate"),
        ("dogclf.sagemaker.entry", "main"),  # the entry point a training job's train.py imports
        ("dogclf.serving.handlers", "model_fn"),  # what a packaged model.tar.gz's code/inference.py imports
    ],
)
def test_the_import_paths_the_docs_and_archives_name_resolve(module: str, name: str) -> None:
    assert callable(getattr(importlib.import_module(module), name))


def test_the_console_script_names_the_cli_main() -> None:
    scripts = (REPO / "pyproject.toml").read_text().split("[project.scripts]", 1)[1]
    module, attr = re.search(r'^dogclf = "([\w.]+):(\w+)"', scripts, re.MULTILINE).groups()  # type: ignore[union-attr]

    main = getattr(importlib.import_module(module), attr)

    assert main is importlib.import_module("dogclf.cli.app").main
