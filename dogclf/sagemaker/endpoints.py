"""``Endpoint``: one SageMaker endpoint by name, and everything dogclf does with it, for Python callers.

The CLI's ``deploy``, ``invoke``, ``update``, ``autoscale`` and ``delete`` are these methods::

    from dogclf.sagemaker import Endpoint

    endpoint = Endpoint.deploy("models/dog", role=ROLE, instance_count=2, wait=True)
    endpoint.predict(["photo.jpg"])            # what `dogclf predict` prints, as records
    endpoint.update("s3://.../model.tar.gz", role=ROLE)   # no downtime
    endpoint.autoscale(max_instances=4)
    endpoint.delete()

``aws`` is an :class:`~dogclf.sagemaker.aws.Aws`, an existing ``boto3.Session``, or ``None`` (the environment).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dogclf._logging import deprecated_log

if TYPE_CHECKING:
    from dogclf.sagemaker.aws import Aws
    from dogclf.sagemaker.scaling import EndpointUpdate

__all__ = ["Endpoint"]


def _role(role: str | None) -> str:
    from dogclf.sagemaker.aws import resolve_role

    return resolve_role(role, os.environ)


@dataclass
class Endpoint:
    """A SageMaker endpoint serving a dogclf model.

    Attributes:
        name: The endpoint's name.
        aws: The AWS context.
    """

    name: str
    aws: Aws

    @classmethod
    def attach(cls, name: str, aws: Any = None) -> Endpoint:
        """The endpoint called ``name``, checked to exist.

        Raises:
            AwsError: No such endpoint in the region (or it could not be read).
        """
        from dogclf.sagemaker.aws import as_aws

        endpoint = cls(name, as_aws(aws))
        endpoint.describe()
        return endpoint

    @classmethod
    @deprecated_log
    def deploy(
        cls, model: str | os.PathLike[str], *, role: str | None = None, aws: Any = None, **options: Any
    ) -> Endpoint:
        """Deploys ``model``; ``role`` defaults to ``$SAGEMAKER_ROLE``.

        ``options`` are :func:`dogclf.sagemaker.endpoint.deploy`'s: ``instance_type``, ``instance_count``,
        ``serverless_memory``, ``endpoint_name``, ``wait``, ...
        """
        from dogclf.sagemaker.aws import as_aws
        from dogclf.sagemaker.endpoint import deploy

        context = as_aws(aws)
        return cls(deploy(model, aws=context, role=_role(role), **options).name, context)

    def describe(self) -> dict[str, Any]:
        """DescribeEndpoint's answer."""
        from dogclf.sagemaker.aws import aws_errors

        with aws_errors(f"Reading endpoint {self.name}"):
            return dict(self.aws.client("sagemaker").describe_endpoint(EndpointName=self.name))

    @property
    def status(self) -> str:
        """``EndpointStatus`` now: Creating, Updating, InService, Failed, ..."""
        return str(self.describe()["EndpointStatus"])

    @property
    def instance_counts(self) -> Mapping[str, int]:
        """Each variant's running instance count (what autoscaling changes)."""
        variants = self.describe().get("ProductionVariants", [])
        return {v["VariantName"]: int(v.get("CurrentInstanceCount", 0)) for v in variants}

    def predict(self, images: Sequence[str | os.PathLike[str]], *, top_k: int | None = None) -> list[dict[str, Any]]:
        """Each image's answer, as ``dogclf predict --json`` records (see :func:`dogclf.sagemaker.endpoint.invoke`)."""
        from dogclf.sagemaker.endpoint import invoke

        return invoke(self.aws, self.name, images, top_k=top_k)

    def update(self, model: str | os.PathLike[str], *, role: str | None = None, **options: Any) -> EndpointUpdate:
        """Serves a new model without downtime (:func:`dogclf.sagemaker.scaling.update_endpoint`)."""
        from dogclf.sagemaker.scaling import update_endpoint

        return update_endpoint(model, aws=self.aws, endpoint=self.name, role=_role(role), **options)

    @deprecated_log
    def autoscale(
        self,
        *,
        max_instances: int,
        min_instances: int = 1,
        invocations_per_instance: float = 70.0,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Target-tracking autoscaling (:func:`dogclf.sagemaker.scaling.autoscale_endpoint`)."""
        from dogclf.sagemaker.scaling import autoscale_endpoint

        return autoscale_endpoint(
            self.aws,
            self.name,
            min_instances=min_instances,
            max_instances=max_instances,
            invocations_per_instance=invocations_per_instance,
        )

    @deprecated_log
    def stop_autoscaling(self) -> bool:
        """Removes the autoscaling; ``False`` when there was none."""
        from dogclf.sagemaker.scaling import remove_autoscaling

        return remove_autoscaling(self.aws, self.name)

    @deprecated_log
    def delete(self) -> list[str]:
        """Deletes the endpoint, its config and its model (:func:`dogclf.sagemaker.endpoint.delete_endpoint`)."""
        from dogclf.sagemaker.endpoint import delete_endpoint

        return delete_endpoint(self.aws, self.name)
