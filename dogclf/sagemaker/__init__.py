"""SageMaker: the training container's entry point, job launchers (training, tuning, deployment), a local runner.

The Python API that the ``dogclf sagemaker`` commands are made of::

    import boto3
    from dogclf.sagemaker import Endpoint, TrainingJob, TrainingJobSpec, TuningJob, launch_training_job

    session = boto3.Session(profile_name="ml", region_name="eu-west-1")   # or leave aws out: the environment
    job = launch_training_job(TrainingJobSpec(backbone="resnet18"), "dogImages", aws=session, role=ROLE)
    job = TrainingJob.attach(job.name, session)     # later, from anywhere
    job.wait(); job.download("models/dog")
    best = TuningJob.attach("dogclf-261206-2000-ab12", session).best_training_job()
    endpoint = Endpoint.deploy(best.model_artifact(), aws=session, role=ROLE, instance_count=2)

Every ``aws`` argument takes a :class:`Aws`, an existing ``boto3.Session``, or ``None`` (credentials and region from
the environment, as the CLI reads them). Names are imported lazily; the SageMaker SDK and boto3 (extra
``dogclf[sagemaker]``) are imported only by the functions that talk to AWS, and the training toolkit
(``dogclf[sagemaker-local]``) only by the local runner. See docs/sagemaker.md and examples/sagemaker_api.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dogclf._lazy import lazy_exports

_EXPORTS = {
    "metric_definitions": "dogclf.sagemaker.metrics",
    "OBJECTIVE_METRIC": "dogclf.sagemaker.metrics",
    "ContainerEnvironment": "dogclf.sagemaker.environment",
    "run_local": "dogclf.sagemaker.local",
    "run_spec_locally": "dogclf.sagemaker.local",
    "LocalResult": "dogclf.sagemaker.local",
    "build_source_dir": "dogclf.sagemaker.source",
    "Aws": "dogclf.sagemaker.aws",
    "AwsError": "dogclf.sagemaker.aws",
    "TrainingJob": "dogclf.sagemaker.training_job",
    "TrainingJobFailed": "dogclf.sagemaker.training_job",
    "TrainingJobSpec": "dogclf.sagemaker.training_job",
    "launch_training_job": "dogclf.sagemaker.training_job",
    "TuningJob": "dogclf.sagemaker.tuning_job",
    "TuningError": "dogclf.sagemaker.tuning_job",
    "launch_tuning_job": "dogclf.sagemaker.tuning_job",
    "Endpoint": "dogclf.sagemaker.endpoints",
    "EndpointError": "dogclf.sagemaker.endpoint",
    "deploy": "dogclf.sagemaker.endpoint",
    "invoke": "dogclf.sagemaker.endpoint",
    "delete_endpoint": "dogclf.sagemaker.endpoint",
    "update_endpoint": "dogclf.sagemaker.scaling",
    "autoscale_endpoint": "dogclf.sagemaker.scaling",
    "remove_autoscaling": "dogclf.sagemaker.scaling",
    "TransformJob": "dogclf.sagemaker.transform",
    "launch_transform_job": "dogclf.sagemaker.transform",
    "run_transform_locally": "dogclf.sagemaker.transform",
}

__all__ = [
    "OBJECTIVE_METRIC",
    "Aws",
    "AwsError",
    "ContainerEnvironment",
    "Endpoint",
    "EndpointError",
    "LocalResult",
    "TrainingJob",
    "TrainingJobFailed",
    "TrainingJobSpec",
    "TransformJob",
    "TuningError",
    "TuningJob",
    "autoscale_endpoint",
    "build_source_dir",
    "delete_endpoint",
    "deploy",
    "invoke",
    "launch_training_job",
    "launch_transform_job",
    "launch_tuning_job",
    "metric_definitions",
    "remove_autoscaling",
    "run_local",
    "run_spec_locally",
    "run_transform_locally",
    "update_endpoint",
]


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)


if TYPE_CHECKING:
    from dogclf.sagemaker.aws import Aws, AwsError
    from dogclf.sagemaker.endpoint import EndpointError, delete_endpoint, deploy, invoke
    from dogclf.sagemaker.endpoints import Endpoint
    from dogclf.sagemaker.environment import ContainerEnvironment
    from dogclf.sagemaker.local import LocalResult, run_local, run_spec_locally
    from dogclf.sagemaker.metrics import OBJECTIVE_METRIC, metric_definitions
    from dogclf.sagemaker.scaling import autoscale_endpoint, remove_autoscaling, update_endpoint
    from dogclf.sagemaker.source import build_source_dir
    from dogclf.sagemaker.training_job import TrainingJob, TrainingJobFailed, TrainingJobSpec, launch_training_job
    from dogclf.sagemaker.transform import TransformJob, launch_transform_job, run_transform_locally
    from dogclf.sagemaker.tuning_job import TuningError, TuningJob, launch_tuning_job
