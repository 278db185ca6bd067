"""Batch transform: every photo under an S3 prefix scored by the endpoint's own handlers, with no endpoint running.

:func:`launch_transform_job` creates a Model (the same request :func:`~dogclf.sagemaker.endpoint.deploy` sends) and a
transform job over a manifest of the prefix's photos (JPEG, PNG, WebP, BMP, GIF and TIFF by their file endings,
:data:`~dogclf.data.images.IMAGE_EXTENSIONS`; anything else is left out, since one unreadable object fails a whole
transform job). SageMaker starts the PyTorch inference container, sends each
photo to ``/invocations`` as one ``application/x-image`` request (``SingleRecord``, no splitting) and writes the
JSON answer to ``<output>/<path under the input prefix>.out``: exactly what ``dogclf sagemaker invoke`` gets for it.
:func:`run_transform_locally` does the same here, through the same handlers (``model_fn``, ``input_fn``,
``predict_fn``, ``output_fn``) in this process, reading and writing S3 (or local folders).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dogclf._logging import deprecated_log
from dogclf.data.images import IMAGE_EXTENSIONS
from dogclf.errors import DogclfError

if TYPE_CHECKING:
    from dogclf.sagemaker.aws import Aws

__all__ = [
    "IMAGE_SUFFIXES",
    "TransformError",
    "TransformJob",
    "TransformResult",
    "build_transform_request",
    "launch_transform_job",
    "list_images",
    "run_transform_locally",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = IMAGE_EXTENSIONS
CONTENT_TYPE = "application/x-image"
_MAX_PAYLOAD_MB = 6  # SageMaker's own cap on one invocation's payload


class TransformError(DogclfError, RuntimeError):
    """A transform job (or its local run) that could not score every photo."""


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.rsplit("/", 1)[-1].startswith(".")


def list_images(source: str, aws: Aws | None = None) -> list[str]:
    """The photos under an ``s3://`` prefix or a local folder, as paths relative to it, sorted.

    Raises:
        TransformError: None there.
    """
    if source.startswith("s3://"):
        from dogclf.sagemaker.aws import aws_errors
        from dogclf.sagemaker.s3 import S3Uri

        if aws is None:
            raise TransformError(f"Reading {source} needs AWS credentials and a region")
        uri = S3Uri.parse(source)
        base = uri.prefix()
        with aws_errors(f"Listing {source}"):
            pages = aws.client("s3").get_paginator("list_objects_v2").paginate(Bucket=uri.bucket, Prefix=base)
            keys = [item["Key"][len(base) :] for page in pages for item in page.get("Contents", [])]
    else:
        root = Path(source)
        if not root.is_dir():
            raise TransformError(f"Input folder {source!r} does not exist")
        keys = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    images = sorted(k for k in keys if _is_image(k))
    if not images:
        raise TransformError(f"No photos ({', '.join(IMAGE_SUFFIXES)}) under {source}")
    return images


def build_transform_request(
    name: str, *, model_name: str, manifest_uri: str, output: str, instance_type: str, instance_count: int
) -> dict[str, Any]:
    """The CreateTransformJob request: one photo per request, JSON answers as ``.out`` objects."""
    return {
        "TransformJobName": name,
        "ModelName": model_name,
        "BatchStrategy": "SingleRecord",
        "MaxPayloadInMB": _MAX_PAYLOAD_MB,
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "ManifestFile", "S3Uri": manifest_uri}},
            "ContentType": CONTENT_TYPE,
            "SplitType": "None",
            "CompressionType": "None",
        },
        "TransformOutput": {"S3OutputPath": output.rstrip("/"), "Accept": "application/json", "AssembleWith": "None"},
        "TransformResources": {"InstanceType": instance_type, "InstanceCount": instance_count},
    }


@dataclass
class TransformJob:
    """A launched transform job.

    Attributes:
        name: Its name (also the name of its Model).
        aws: The AWS context.
        requests: CreateModel and CreateTransformJob, as sent.
        images: The photos it scores, relative to the input prefix.
    """

    name: str
    aws: Aws
    requests: tuple[dict[str, Any], dict[str, Any]]
    images: list[str]

    def describe(self) -> dict[str, Any]:
        """DescribeTransformJob's answer."""
        from dogclf.sagemaker.aws import aws_errors

        with aws_errors(f"Reading transform job {self.name}"):
            return dict(self.aws.client("sagemaker").describe_transform_job(TransformJobName=self.name))

    @deprecated_log
    def wait(self, *, poll: int = 30) -> dict[str, Any]:
        """Waits until the job ends; returns its description.

        Raises:
            TransformError: It failed or was stopped (its reason, and where its logs are).
        """
        import botocore.exceptions

        logger.info(f"Waiting for transform job {self.name} ...")
        with contextlib.suppress(botocore.exceptions.WaiterError):  # the description below says why
            self.aws.client("sagemaker").get_waiter("transform_job_completed_or_stopped").wait(
                TransformJobName=self.name, WaiterConfig={"Delay": poll}
            )
        description = self.describe()
        if description["TransformJobStatus"] != "Completed":
            raise TransformError(
                f"Transform job {self.name} is {description['TransformJobStatus']}: "
                f"{description.get('FailureReason', 'no reason given')}. Its logs are in CloudWatch, "
                f"/aws/sagemaker/TransformJobs, streams {self.name}/..."
            )
        logger.info(f"Transform job {self.name} completed: {len(self.images)} answers in {self.output}")
        return description

    @property
    def output(self) -> str:
        """Where the ``.out`` answers go."""
        return str(self.requests[1]["TransformOutput"]["S3OutputPath"])


@deprecated_log
def launch_transform_job(
    model: str | os.PathLike[str],
    source: str,
    output: str,
    *,
    aws: Aws | Any = None,
    role: str,
    instance_type: str = "ml.m5.large",
    instance_count: int = 1,
    name: str | None = None,
    bucket: str | None = None,
    prefix: str = "dogclf",
    top_k: int = 5,
) -> TransformJob:
    """Creates a Model of ``model`` and a transform job scoring every photo under ``source`` into ``output``.

    Args:
        model: A model directory (packaged and uploaded) or an ``s3://`` ``model.tar.gz``.
        source: The ``s3://`` prefix of the photos.
        output: The ``s3://`` prefix the answers go to.
        aws: An :class:`~dogclf.sagemaker.aws.Aws`, a ``boto3.Session`` or ``None`` (the environment).
        role: The execution role ARN.
        instance_type: The transform instances' type.
        instance_count: How many (SageMaker splits the photos between them).
        name: The job's (and its Model's) name (default: unique, ``dogclf-transform-...``).
        bucket: Where the manifest (and a model directory) go (default ``sagemaker-<region>-<account>``).
        prefix: Key prefix of those uploads.
        top_k: Breeds per answer.

    Raises:
        TransformError: No photos under ``source``, or a source or output that is not ``s3://``.
        AwsError: An upload or an API call failed.
    """
    from dogclf.sagemaker.aws import as_aws, aws_errors
    from dogclf.sagemaker.endpoint import model_data_uri, model_request, resource_name
    from dogclf.sagemaker.images import inference_image
    from dogclf.sagemaker.request_check import validate_request
    from dogclf.sagemaker.s3 import S3Uri

    aws = as_aws(aws)
    for uri in (source, output):
        if not uri.startswith("s3://"):
            raise TransformError(f"A transform job reads and writes S3: expected an s3:// prefix, got {uri!r}")
    images = list_images(source, aws)
    job = name or resource_name("dogclf-transform")
    chosen_bucket = bucket or aws.default_bucket()
    manifest = S3Uri(chosen_bucket, prefix.strip("/")).join("transform", job, "input.manifest")
    model_data = model_data_uri(model, aws, name=job, bucket=chosen_bucket, prefix=prefix)
    image = inference_image(aws.region, instance_type)
    requests = (
        model_request(job, role=role, image=image, model_data=model_data, region=aws.region, top_k=top_k),
        build_transform_request(
            job,
            model_name=job,
            manifest_uri=str(manifest),
            output=output,
            instance_type=instance_type,
            instance_count=instance_count,
        ),
    )
    validate_request("CreateModel", requests[0])
    validate_request("CreateTransformJob", requests[1])
    body = json.dumps([{"prefix": _prefix_uri(source)}, *images])
    client = aws.client("sagemaker")
    with aws_errors(f"Creating transform job {job}"):
        aws.client("s3").put_object(Bucket=manifest.bucket, Key=manifest.key, Body=body.encode("utf-8"))
        client.create_model(**requests[0])
        client.create_transform_job(**requests[1])
    logger.info(
        f"Launched transform job {job}: {len(images)} photos under {source} -> {output.rstrip('/')}/<photo>.out"
    )
    logger.info(f"  {aws.console_url(f'/transform-jobs/{job}')}")
    return TransformJob(job, aws, requests, images)


def _prefix_uri(source: str) -> str:
    from dogclf.sagemaker.s3 import S3Uri

    uri = S3Uri.parse(source)
    return f"s3://{uri.bucket}/{uri.prefix()}"


@dataclass(frozen=True)
class TransformResult:
    """What a local transform wrote.

    Attributes:
        outputs: Each photo (relative to the input) and where its answer went.
        seconds: Wall time, model loading included.
        answers: Each photo's answer (the ``.out`` object's JSON).
    """

    outputs: list[tuple[str, str]]
    seconds: float
    answers: list[dict[str, Any]] = dataclasses.field(repr=False, default_factory=list)


def _read(source: str, relative: str, aws: Aws | None) -> bytes:
    if not source.startswith("s3://"):
        return (Path(source) / relative).read_bytes()
    from dogclf.sagemaker.aws import aws_errors
    from dogclf.sagemaker.s3 import S3Uri

    uri = S3Uri.parse(source)
    key = uri.prefix() + relative
    with aws_errors(f"Reading s3://{uri.bucket}/{key}"):
        return bytes(aws.client("s3").get_object(Bucket=uri.bucket, Key=key)["Body"].read())  # type: ignore[union-attr]


def _write(output: str, relative: str, body: bytes, aws: Aws | None) -> str:
    if not output.startswith("s3://"):
        target = Path(output) / f"{relative}.out"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)
        return str(target)
    from dogclf.sagemaker.aws import aws_errors
    from dogclf.sagemaker.s3 import S3Uri

    uri = S3Uri.parse(output).join(f"{relative}.out")
    with aws_errors(f"Writing {uri}"):
        aws.client("s3").put_object(Bucket=uri.bucket, Key=uri.key, Body=body, ContentType="application/json")  # type: ignore[union-attr]
    return str(uri)


def _model_dir(model: str, aws: Aws | None, tmp: Path) -> Path:
    """A model directory as it is; an ``s3://`` (or local) ``model.tar.gz`` unpacked as the container does."""
    if model.startswith("s3://"):
        from dogclf.sagemaker.s3 import S3Uri, download_file

        archive = download_file(aws, S3Uri.parse(model), tmp / "model.tar.gz")  # type: ignore[arg-type]
    elif Path(model).is_file():
        archive = Path(model)
    else:
        return Path(model)
    import tarfile

    with tarfile.open(archive) as tar:
        tar.extractall(tmp / "model", filter="data")
    return tmp / "model"


def _answers(model_dir: Path, photos: Iterator[tuple[str, bytes]], top_k: int) -> Iterator[tuple[str, str, str]]:
    """``(photo, JSON answer, "")`` or ``(photo, "", error)`` for each photo.

    Through ``model_fn``, ``input_fn``, ``predict_fn`` and ``output_fn``, as the container calls them.
    """
    from dogclf.serving import handlers
    from dogclf.serving.codec import RequestError

    model = handlers.model_fn(str(model_dir))
    for relative, body in photos:
        try:
            request = dataclasses.replace(handlers.input_fn(body, CONTENT_TYPE), top_k=top_k)
            answer, _ = handlers.output_fn(handlers.predict_fn(request, model), "application/json")
        except Exception as exc:  # a RequestError, or the toolkit's error type carrying one
            error = getattr(exc, "request_error", exc)
            if not isinstance(error, RequestError):
                raise
            yield relative, "", f"{error.status} {error.message}"
            continue
        yield relative, str(answer), ""


@deprecated_log
def run_transform_locally(
    model: str | os.PathLike[str],
    source: str,
    output: str,
    *,
    aws: Aws | None = None,
    top_k: int = 5,
) -> TransformResult:
    """A transform job run here: every photo through the endpoint's handlers, answers written as ``.out`` objects.

    Args:
        model: A model directory, or a ``model.tar.gz`` (local or ``s3://``).
        source: An ``s3://`` prefix or a local folder of photos.
        output: An ``s3://`` prefix or a local folder for the answers.
        aws: The AWS context (for ``s3://`` locations).
        top_k: Breeds per answer.

    Raises:
        TransformError: A photo the handlers refused (the others' answers are written, as SageMaker writes the
            objects that succeeded and marks the job failed).
    """
    started = time.perf_counter()
    images = list_images(source, aws)
    outputs: list[tuple[str, str]] = []
    answers: list[dict[str, Any]] = []
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dogclf-transform-") as tmp:
        model_dir = _model_dir(str(model), aws, Path(tmp))
        photos = ((relative, _read(source, relative, aws)) for relative in images)
        for relative, answer, error in _answers(model_dir, photos, top_k):
            if error:
                failed.append(f"{relative}: {error}")
                logger.info(f"{relative}: FAILED {error}")
                continue
            outputs.append((relative, _write(output, relative, answer.encode("utf-8"), aws)))
            record = json.loads(answer)
            answers.append(record)
            top = record["predictions"][0]
            logger.info(
                f"{relative} -> {top['label']} {top['score']:.3f}{' (unknown)' if record.get('unknown') else ''}"
            )
    if failed:
        raise TransformError(
            f"{len(failed)} of {len(images)} photos failed (answers of the others are in {output}):\n  "
            + "\n  ".join(failed)
        )
    return TransformResult(outputs=outputs, seconds=time.perf_counter() - started, answers=answers)
