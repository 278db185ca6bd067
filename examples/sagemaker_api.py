"""dogclf's SageMaker API from Python: launch, attach by name, follow, deploy, scale out, batch transform, clean up.

Everything takes an existing ``boto3.Session`` (or an ``Aws``, or nothing: the environment). It runs against AWS, or
against a moto server standing in for it (no account, nothing billed)::

    moto_server -H 127.0.0.1 -p 5055 &
    export AWS_ENDPOINT_URL=http://127.0.0.1:5055 AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
    export SAGEMAKER_USER_CONFIG_OVERRIDE=...   # optional: a config that opts out of the SDK's telemetry
    python examples/sagemaker_api.py --region us-east-1 --bucket dogclf-demo --create-bucket \\
        --role arn:aws:iam::123456789012:role/SageMakerExecutionRole

moto records every request and completes jobs at once, but runs nothing: no model is trained and its tuning job's
best trial is a canned name. Without ``--data`` a tiny synthetic dataset is made and uploaded. On AWS every step bills
(a training job, ``--tune``'s four trials, two endpoint instances while they exist, a transform instance).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence

import boto3

import dogclf
from dogclf.errors import DogclfError
from dogclf.sagemaker import (
    AwsError,
    Endpoint,
    TrainingJob,
    TrainingJobSpec,
    TuningJob,
    launch_training_job,
    launch_transform_job,
    launch_tuning_job,
)
from dogclf.tuning.space import SEED_RESNET18_SPACE


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description="The dogclf SageMaker API, step by step.")
    parser.add_argument("--role", required=True, help="SageMaker execution role ARN")
    parser.add_argument("--bucket", required=True, help="S3 bucket for data, code, models and answers")
    parser.add_argument("--region", default="us-east-1", help="AWS region (default us-east-1)")
    parser.add_argument("--profile", default=None, help="an AWS profile for the boto3 session")
    parser.add_argument("--data", default=None, help="train/ valid/ folder or s3:// prefix (default: synthetic)")
    parser.add_argument("--create-bucket", action="store_true", help="create the bucket first (e.g. on moto)")
    parser.add_argument("--tune", action="store_true", help="also run a 4-trial tuning job and attach to it")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, data: str) -> None:
    """Each step of the seeds' project through the API, printing what it did."""
    session = boto3.Session(profile_name=args.profile, region_name=args.region)  # any session you already have
    if args.create_bucket:
        session.client("s3").create_bucket(Bucket=args.bucket)

    spec = TrainingJobSpec(backbone="resnet18", hyperparameters={"epochs": "5", "lr": "0.00067", "batch-size": "16"})
    job = launch_training_job(spec, data, aws=session, role=args.role, bucket=args.bucket)
    print(f"1. launched training job {job.name}")

    attached = TrainingJob.attach(job.name, session)  # later, in another process: by name
    description = attached.wait(poll=30)
    artifact = description["ModelArtifacts"]["S3ModelArtifacts"]
    print(f"2. attached by name: {attached.status}; model {artifact}; {len(attached.logs())} log lines")

    if args.tune:
        tuning = launch_tuning_job(
            spec,
            SEED_RESNET18_SPACE,
            data,
            aws=session,
            role=args.role,
            bucket=args.bucket,
            max_jobs=4,
        )
        later = TuningJob.attach(tuning.name, session)
        later.wait(poll=60)
        try:
            best = later.best_training_job()
            print(f"3. tuning job {later.name}: {later.status}; best trial {best.name} ({best.status})")
        except (AwsError, DogclfError) as exc:  # on moto the best trial is a canned name that does not exist
            print(f"3. tuning job {later.name}: {later.status}; its best trial cannot be read: {exc}")

    endpoint = Endpoint.deploy(artifact, aws=session, role=args.role, instance_count=2, wait=True)
    endpoint.autoscale(min_instances=2, max_instances=4, invocations_per_instance=100)
    print(f"4. endpoint {endpoint.name}: {endpoint.status}, autoscaled 2-4 instances on 100 invocations/instance/min")

    training = next(c for c in job.request["InputDataConfig"] if c["ChannelName"] == "training")
    photos = training["DataSource"]["S3DataSource"]["S3Uri"].rstrip("/") + "/valid/"  # where the data was uploaded
    transform = launch_transform_job(
        artifact,
        photos,
        f"s3://{args.bucket}/answers/",
        aws=session,
        role=args.role,
        bucket=args.bucket,
    )
    transform.wait(poll=30)
    print(f"5. transform job {transform.name}: {len(transform.images)} photos -> {transform.output}/<photo>.out")

    endpoint.stop_autoscaling()
    print("6. deleted " + ", ".join(endpoint.delete()))


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the example; returns the exit code."""
    args = parse_args(argv)
    try:
        if args.data is not None:
            run(args, args.data)
            return 0
        with tempfile.TemporaryDirectory(prefix="dogclf-example-") as tmp:
            data = dogclf.make_synthetic_dataset(f"{tmp}/synthetic", num_classes=3, per_split=(4, 2, 2), size=64)
            run(args, str(data))
    except DogclfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
