"""Account-level settings of a job, the same for ``sagemaker train`` and ``sagemaker tune``: VPC, isolation, tags, KMS.

:class:`JobSettings` is what ``--subnets``, ``--security-group-ids``, ``--network-isolation``, ``--tag``,
``--volume-kms-key`` and ``--output-kms-key`` ask for; :meth:`JobSettings.apply` writes it into a CreateTrainingJob
request (``VpcConfig``, ``EnableNetworkIsolation``, ``Tags``, ``ResourceConfig.VolumeKmsKeyId``,
``OutputDataConfig.KmsKeyId``). A tuning job's trial definition copies the same fields from that request, and its
tags are the request's, which SageMaker also puts on every trial.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dogclf.errors import DogclfError

__all__ = ["JobSettings", "JobSettingsError", "add_job_settings_options", "job_settings_from_args"]


class JobSettingsError(DogclfError, ValueError):
    """A VPC, tag or key setting that cannot be sent."""


@dataclass(frozen=True, kw_only=True)
class JobSettings:
    """Where and how a job's containers run, and what it is labelled with.

    Attributes:
        subnets: VPC subnet ids (with ``security_group_ids``: the job runs in that VPC).
        security_group_ids: VPC security group ids.
        network_isolation: No network access from the training container (inputs and outputs still move).
        tags: Tags on the job (and, for a tuning job, on each trial).
        volume_kms_key: KMS key encrypting the instances' storage volumes.
        output_kms_key: KMS key encrypting the model artifact and output in S3.
    """

    subnets: Sequence[str] = ()
    security_group_ids: Sequence[str] = ()
    network_isolation: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)
    volume_kms_key: str | None = None
    output_kms_key: str | None = None

    def __post_init__(self) -> None:
        if bool(self.subnets) != bool(self.security_group_ids):
            raise JobSettingsError(
                "A job in a VPC needs both --subnets and --security-group-ids (comma-separated ids, e.g. --subnets "
                "subnet-0abc,subnet-0def --security-group-ids sg-0123)."
            )

    def apply(self, request: dict[str, Any]) -> None:
        """Writes these settings into a CreateTrainingJob request (tags are added to those it has)."""
        if self.subnets:
            request["VpcConfig"] = {"Subnets": list(self.subnets), "SecurityGroupIds": list(self.security_group_ids)}
        if self.network_isolation:
            request["EnableNetworkIsolation"] = True
        if self.tags:
            kept = [tag for tag in request.get("Tags", []) if tag["Key"] not in self.tags]
            request["Tags"] = kept + [{"Key": key, "Value": value} for key, value in self.tags.items()]
        if self.volume_kms_key:
            request["ResourceConfig"] = {**request["ResourceConfig"], "VolumeKmsKeyId": self.volume_kms_key}
        if self.output_kms_key:
            request["OutputDataConfig"] = {**request["OutputDataConfig"], "KmsKeyId": self.output_kms_key}


def _ids(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, e.g. --tag project=dogs, got {text!r}")
    return key.strip(), value.strip()


def add_job_settings_options(p: argparse.ArgumentParser) -> None:
    """Adds ``--subnets``, ``--security-group-ids``, ``--network-isolation``, ``--tag``, ``--*-kms-key``."""
    group = p.add_argument_group("network, tags and encryption (the same for train and tune)")
    group.add_argument("--subnets", type=_ids, default=[], metavar="IDS", help="run in a VPC: subnet ids, comma list")
    group.add_argument(
        "--security-group-ids", type=_ids, default=[], metavar="IDS", help="with --subnets: security group ids"
    )
    group.add_argument("--network-isolation", action="store_true", help="no network access from the training container")
    group.add_argument(
        "--tag", type=_tag, action="append", default=[], metavar="KEY=VALUE", help="tag the job (repeatable)"
    )
    group.add_argument("--volume-kms-key", default=None, metavar="KEY", help="KMS key of the instances' volumes")
    group.add_argument("--output-kms-key", default=None, metavar="KEY", help="KMS key of the model and output in S3")


def job_settings_from_args(args: argparse.Namespace) -> JobSettings:
    """The :class:`JobSettings` the parsed options ask for."""
    return JobSettings(
        subnets=tuple(args.subnets),
        security_group_ids=tuple(args.security_group_ids),
        network_isolation=args.network_isolation,
        tags=dict(args.tag),
        volume_kms_key=args.volume_kms_key,
        output_kms_key=args.output_kms_key,
    )
