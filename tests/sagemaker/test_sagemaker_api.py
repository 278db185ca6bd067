"""The Python API ``from dogclf.sagemaker import ...``: exported lazily, and the example script run on a moto server."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import dogclf.sagemaker

pytest.importorskip("moto", reason="moto (dogclf[dev]) is not installed")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sagemaker_api.py"
ROLE = "arn:aws:iam::123456789012:role/SageMakerExecutionRole"


def test_the_api_names_resolve_and_importing_the_package_imports_no_aws_library() -> None:
    from dogclf.sagemaker import Endpoint, TrainingJob, TuningJob, launch_training_job, launch_tuning_job

    assert TrainingJob.__module__ == "dogclf.sagemaker.training_job"
    assert TuningJob.best_training_job.__qualname__ == "TuningJob.best_training_job"
    assert Endpoint.attach.__qualname__ == "Endpoint.attach"
    assert launch_training_job.__module__ == "dogclf.sagemaker.training_job"
    assert launch_tuning_job.__module__ == "dogclf.sagemaker.tuning_job"
    for name in dogclf.sagemaker.__all__:
        assert getattr(dogclf.sagemaker, name) is not None
    assert sorted(dir(dogclf.sagemaker)) == sorted(dogclf.sagemaker.__all__)
    check = (
        "import sys, dogclf.sagemaker; print(sorted(m for m in ('boto3', 'botocore', 'sagemaker') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_the_example_script_runs_against_a_moto_server(
    moto_environ: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in moto_environ.items():
        monkeypatch.setenv(key, value)
    args = ["--role", ROLE, "--bucket", "dogclf-example", "--create-bucket", "--tune"]
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), *args])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(EXAMPLE), run_name="__main__")
    out, err = capsys.readouterr()
    assert done.value.code == 0, err
    lines = out.splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == ["1.", "2.", "3.", "4.", "5.", "6."]
    assert lines[1].endswith("/output/model.tar.gz; 0 log lines")
    assert ": Completed; model s3://dogclf-example/" in lines[1]
    assert "best trial cannot be read" in lines[2]  # moto's canned best trial
    assert ": InService, autoscaled 2-4 instances" in lines[3]
    assert lines[4].startswith("5. transform job ")
    assert lines[4].endswith(": 6 photos -> s3://dogclf-example/answers/<photo>.out")
    assert lines[5].startswith("6. deleted endpoint ")
