"""A job's inputs on S3: where a local data folder and a local feature cache go, and putting them there.

A local data folder goes to ``s3://BUCKET/PREFIX/data/<folder name>-<content digest>/``: the prefix is named by what
the folder holds (:class:`~dogclf.sagemaker.s3.FolderManifest`), so another dataset in a folder of the same name gets
its own prefix, relaunching on the same photos reuses the one already uploaded, and the upload deletes anything under
the prefix the folder lacks. The job's ``training`` channel is therefore exactly the local folder. A local feature
cache goes to ``s3://BUCKET/PREFIX/features/<folder name>/`` and only grows (its files are named by their content).
Nothing is uploaded until the request has been checked (:func:`upload_inputs` runs after planning and validation).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dogclf.errors import DatasetError

if TYPE_CHECKING:
    from dogclf.sagemaker.aws import Aws
    from dogclf.sagemaker.s3 import FolderManifest, S3Uri
    from dogclf.sagemaker.training_job import TrainingJobSpec

__all__ = ["DIGEST_LENGTH", "data_uri", "features_uri", "upload_inputs"]

logger = logging.getLogger(__name__)

DIGEST_LENGTH = 16
"""Hex digits of the content digest in a data prefix (64 bits: collisions are not a practical concern)."""


def data_uri(root: S3Uri, data: str, manifest: FolderManifest | None = None) -> str:
    """The ``training`` channel's prefix: an ``s3://`` prefix as it is, a local folder's content-named prefix.

    Args:
        root: ``s3://BUCKET/PREFIX``.
        data: A local folder or an ``s3://`` prefix.
        manifest: The local folder's manifest, when already made (else it is made here).
    """
    if data.startswith("s3://"):
        return data
    from dogclf.sagemaker.s3 import folder_manifest

    listing = manifest if manifest is not None else folder_manifest(data)
    return str(root.join("data", f"{Path(data).resolve().name}-{listing.digest[:DIGEST_LENGTH]}")) + "/"


def features_uri(root: S3Uri, features: str | None) -> str | None:
    """The ``features`` channel's prefix: an ``s3://`` prefix as it is, a local feature cache's planned prefix.

    Raises:
        DatasetError: A local folder that does not exist.
    """
    if features is None or features.startswith("s3://"):
        return features
    folder = Path(features).expanduser()
    if not folder.is_dir():
        raise DatasetError(
            f"--features folder {str(folder)!r} does not exist (a feature cache, e.g. ~/.cache/dogclf/features)"
        )
    return str(root.join("features", folder.resolve().name)) + "/"


def _channel_uri(request: Mapping[str, Any], name: str) -> str | None:
    for channel in request.get("InputDataConfig", []):
        if channel["ChannelName"] == name:
            return str(channel["DataSource"]["S3DataSource"]["S3Uri"])
    return None


def upload_inputs(
    spec: TrainingJobSpec,
    data: str,
    aws: Aws,
    request: Mapping[str, Any],
    *,
    manifest: FolderManifest | None = None,
    features: str | None = None,
) -> None:
    """Puts a checked request's inputs where it says: the data folder, the feature cache, the source directory.

    Args:
        spec: What the job runs (its backbone's package and names file go into the source directory).
        data: The local data folder (mirrored to the ``training`` channel) or an ``s3://`` prefix (left alone).
        aws: The AWS context.
        request: The CreateTrainingJob request (or a tuning job's trial template).
        manifest: The data folder's manifest, when already made.
        features: A local feature cache to upload to the ``features`` channel (an ``s3://`` one is left alone).

    Raises:
        AwsError: An upload failed.
    """
    from dogclf.sagemaker.s3 import S3Uri, sync_folder, upload_file
    from dogclf.sagemaker.source import build_source_dir

    training = _channel_uri(request, "training")
    if not data.startswith("s3://") and training is not None:
        sync_folder(aws, data, S3Uri.parse(training), manifest=manifest, mirror=True)
    cache = _channel_uri(request, "features")
    if features is not None and not features.startswith("s3://") and cache is not None:
        sync_folder(aws, Path(features).expanduser(), S3Uri.parse(cache))
    target = S3Uri.parse(json.loads(request["HyperParameters"]["sagemaker_submit_directory"]))
    with tempfile.TemporaryDirectory(prefix="dogclf-source-") as tmp:
        source = build_source_dir(tmp, backbone=spec.backbone, names_file=spec.names_file)
        upload_file(aws, source.archive, target)
    logger.info(f"Uploaded the source directory ({source.files} files, {source.size / 1e6:.1f} MB) to {target}")
