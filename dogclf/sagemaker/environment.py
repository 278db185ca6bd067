"""What a SageMaker training container tells the entry script, read from an environment mapping at call time.

The SageMaker training toolkit (inside the AWS framework containers, or ``dogclf sagemaker train --local`` here) runs
the entry script with ``SM_*`` variables: ``SM_MODEL_DIR`` (written to ``model.tar.gz`` when the job ends),
``SM_OUTPUT_DATA_DIR`` (``output.tar.gz``), ``SM_CHANNEL_<NAME>`` for every input channel, ``SM_HOSTS``,
``SM_CURRENT_HOST``, ``SM_NUM_GPUS`` and ``SM_TRAINING_ENV`` (JSON, with the job name). Checkpoints live in
``/opt/ml/checkpoints`` (``<SAGEMAKER_BASE_DIR>/checkpoints`` where the toolkit runs on another base folder), which
SageMaker copies to and from the job's checkpoint S3 URI. Nothing here touches ``os.environ``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_BASE_DIR", "ContainerEnvironment", "in_training_container"]

DEFAULT_BASE_DIR = Path("/opt/ml")


def in_training_container(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` is a SageMaker training container's (the toolkit sets ``SM_MODEL_DIR``)."""
    return "SM_MODEL_DIR" in environ


def _json(environ: Mapping[str, str], key: str, default: Any) -> Any:
    raw = environ.get(key)
    if not raw:
        return default
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return default


@dataclass(frozen=True)
class ContainerEnvironment:
    """The parts of a training container's environment the entry script uses.

    Attributes:
        base_dir: The ``/opt/ml`` tree.
        model_dir: Where the model directory goes (``SM_MODEL_DIR``).
        output_data_dir: Plots, reports and history (``SM_OUTPUT_DATA_DIR``).
        checkpoint_dir: The local checkpoint folder SageMaker syncs with S3.
        channels: Channel name -> local folder.
        hosts: Every host of the job, sorted.
        current_host: This host.
        num_gpus: GPUs on this host.
        job_name: The training job's name ("" when unknown).
    """

    base_dir: Path
    model_dir: Path
    output_data_dir: Path
    checkpoint_dir: Path
    channels: dict[str, Path] = field(default_factory=dict)
    hosts: tuple[str, ...] = ("localhost",)
    current_host: str = "localhost"
    num_gpus: int = 0
    job_name: str = ""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> ContainerEnvironment:
        """Reads the container's variables from ``environ`` (missing ones take the container defaults)."""
        base = Path(environ.get("SAGEMAKER_BASE_DIR") or DEFAULT_BASE_DIR)
        model_dir = Path(environ.get("SM_MODEL_DIR") or base / "model")
        channels = {
            key[len("SM_CHANNEL_") :].lower(): Path(value)
            for key, value in environ.items()
            if key.startswith("SM_CHANNEL_") and key != "SM_CHANNELS"
        }
        training_env = _json(environ, "SM_TRAINING_ENV", {})
        hosts = tuple(_json(environ, "SM_HOSTS", ["localhost"]))
        return cls(
            base_dir=base,
            model_dir=model_dir,
            output_data_dir=Path(environ.get("SM_OUTPUT_DATA_DIR") or base / "output" / "data"),
            checkpoint_dir=base / "checkpoints",
            channels=channels,
            hosts=hosts or ("localhost",),
            current_host=environ.get("SM_CURRENT_HOST") or (hosts[0] if hosts else "localhost"),
            num_gpus=int(environ.get("SM_NUM_GPUS") or 0),
            job_name=str(environ.get("TRAINING_JOB_NAME") or training_env.get("job_name") or ""),
        )
