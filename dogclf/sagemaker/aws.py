"""One AWS context for every launcher: a boto3 session built from an environment mapping, its clients, clear errors.

Credentials and region come from ``environ`` (``AWS_PROFILE``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/
``AWS_SESSION_TOKEN``, ``AWS_REGION``/``AWS_DEFAULT_REGION``) or the usual ``~/.aws`` files; ``AWS_ENDPOINT_URL``
(botocore's own setting) points every client at another endpoint, e.g. a moto server in tests. Nothing here prints
or stores a credential.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from dogclf.errors import DogclfError

__all__ = [
    "ROLE_ENV",
    "Aws",
    "AwsError",
    "NoCredentialsError",
    "NoRegionError",
    "NoRoleError",
    "as_aws",
    "aws_errors",
    "is_not_found",
    "resolve_role",
]

ROLE_ENV = "SAGEMAKER_ROLE"
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$")


class AwsError(DogclfError, RuntimeError):
    """An AWS call that failed, with the operation, AWS's message and what to try."""


class NoCredentialsError(AwsError):
    """No AWS credentials could be found."""


class NoRegionError(AwsError):
    """No AWS region is configured."""


class NoRoleError(AwsError, ValueError):
    """No (or a malformed) SageMaker execution role."""


def _hint(code: str, operation: str) -> str:
    if code in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation"):
        return (
            " Check that your credentials may call it and that the execution role (--role) can be passed to "
            "SageMaker (iam:PassRole) and reads and writes the bucket."
        )
    if code in ("ResourceLimitExceeded",):
        return " Ask AWS for a higher quota for this instance type (Service Quotas, SageMaker), or pick another one."
    if code in ("ExpiredToken", "ExpiredTokenException", "InvalidClientTokenId", "UnrecognizedClientException"):
        return " Your credentials are expired or invalid: renew them (aws sso login, aws configure)."
    if operation.startswith("Describe") and code in ("ValidationException", "ResourceNotFound"):
        return " Check the name (and --region)."
    return ""


@contextlib.contextmanager
def aws_errors(what: str) -> Iterator[None]:
    """Turns botocore's errors raised inside the block into :class:`AwsError` naming ``what`` was being done."""
    import botocore.exceptions

    try:
        yield
    except botocore.exceptions.NoCredentialsError as exc:
        raise NoCredentialsError(f"{what}: {exc}. {_CREDENTIALS_HELP}") from None
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Error"))
        operation = exc.operation_name or ""
        message = error.get("Message") or str(exc)
        raise AwsError(f"{what}: {operation} failed ({code}): {message}.{_hint(code, operation)}") from None
    except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
        raise AwsError(f"{what}: cannot reach AWS ({exc}). Check the network and the region.") from None


_NOT_FOUND_CODES = frozenset({"ResourceNotFound", "ResourceNotFoundException", "NotFound", "NoSuchKey", "404"})


def is_not_found(exc: Exception) -> bool:
    """Whether a botocore ``ClientError`` is AWS saying the resource does not exist (and nothing else).

    SageMaker answers a Describe* of a missing endpoint, endpoint config or model with ``ValidationException``
    "Could not find ...", of a missing training job with ``ValidationException`` "Requested resource not found.";
    other services use a ``*NotFound*`` code. Credentials, permissions, throttling and every other error are not
    "not found".
    """
    response = getattr(exc, "response", None)
    if not isinstance(response, Mapping):
        return False
    error = response.get("Error") or {}
    code, message = str(error.get("Code", "")), str(error.get("Message", ""))
    if code in _NOT_FOUND_CODES:
        return True
    return code == "ValidationException" and message.lower().startswith(
        ("could not find", "requested resource not found")
    )


_CREDENTIALS_HELP = (
    "Configure credentials with `aws configure` (or `aws sso login --profile NAME` and AWS_PROFILE=NAME), or set "
    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
)


@dataclass
class Aws:
    """A boto3 session and the region and endpoint its clients use.

    Attributes:
        session: The boto3 session (its ``events`` reach every client made from it).
        region: The AWS region.
        endpoint_url: Another endpoint for every service (``AWS_ENDPOINT_URL``), or ``None``.
    """

    session: Any
    region: str
    endpoint_url: str | None = None
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str], *, region: str | None = None, require_credentials: bool = True
    ) -> Aws:
        """A context from ``environ`` (see the module docstring); ``region`` overrides the configured one.

        ``require_credentials=False`` is for work that sends nothing (``--dry-run`` with a bucket given).

        Raises:
            MissingExtraError: boto3 is not installed.
            NoCredentialsError: No credentials anywhere, with how to configure them.
            NoRegionError: No region, with how to set one.
        """
        from dogclf._extras import require

        boto3 = require("boto3", extra="sagemaker", purpose="Talking to AWS")
        keys = {
            "aws_access_key_id": environ.get("AWS_ACCESS_KEY_ID"),
            "aws_secret_access_key": environ.get("AWS_SECRET_ACCESS_KEY"),
            "aws_session_token": environ.get("AWS_SESSION_TOKEN"),
        }
        use_keys = bool(keys["aws_access_key_id"] and keys["aws_secret_access_key"])
        session = boto3.Session(
            **(keys if use_keys else {}),
            profile_name=None if use_keys else environ.get("AWS_PROFILE") or None,
            region_name=region or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or None,
        )
        if session.region_name is None:
            raise NoRegionError(
                "No AWS region is configured. Pass --region (e.g. --region us-east-1), set AWS_REGION, or add a "
                "region to ~/.aws/config (`aws configure`)."
            )
        if require_credentials and session.get_credentials() is None:
            raise NoCredentialsError(f"No AWS credentials were found. {_CREDENTIALS_HELP}")
        return cls(session=session, region=session.region_name, endpoint_url=environ.get("AWS_ENDPOINT_URL") or None)

    @classmethod
    def from_session(cls, session: Any, *, endpoint_url: str | None = None) -> Aws:
        """A context around an existing ``boto3.Session`` (its credentials and region).

        Raises:
            NoRegionError: The session has no region.
        """
        if not session.region_name:
            raise NoRegionError(
                "The boto3 session has no region: create it with boto3.Session(region_name='us-east-1') (or set "
                "AWS_REGION)."
            )
        return cls(session=session, region=session.region_name, endpoint_url=endpoint_url)

    def client(self, service: str) -> Any:
        """The (cached) boto3 client of ``service`` in this region."""
        if service not in self._clients:
            self._clients[service] = self.session.client(
                service, region_name=self.region, endpoint_url=self.endpoint_url
            )
        return self._clients[service]

    def account(self) -> str:
        """The AWS account id of the credentials (STS GetCallerIdentity)."""
        with aws_errors("Finding your AWS account"):
            return str(self.client("sts").get_caller_identity()["Account"])

    def default_bucket(self) -> str:
        """``sagemaker-<region>-<account>`` (the SageMaker SDK's default bucket), created when missing."""
        name = f"sagemaker-{self.region}-{self.account()}"
        s3 = self.client("s3")
        import botocore.exceptions

        try:
            s3.head_bucket(Bucket=name)
        except botocore.exceptions.ClientError:
            with aws_errors(f"Creating the default bucket {name}"):
                if self.region == "us-east-1":
                    s3.create_bucket(Bucket=name)
                else:
                    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": self.region})
        return name

    def console_url(self, fragment: str) -> str:
        """A link into the SageMaker console of this region (``fragment`` after ``#``)."""
        return f"https://{self.region}.console.aws.amazon.com/sagemaker/home?region={self.region}#{fragment}"


def resolve_role(role: str | None, environ: Mapping[str, str]) -> str:
    """The execution role ARN: ``role``, else ``$SAGEMAKER_ROLE``.

    Raises:
        NoRoleError: None given, or not an IAM role ARN; says how to pass one.
    """
    value = role or environ.get(ROLE_ENV) or ""
    if not value:
        raise NoRoleError(
            "SageMaker needs an execution role to run the job: pass --role arn:aws:iam::<account>:role/<name> (or set "
            f"{ROLE_ENV}). The role needs SageMaker's permissions (e.g. the AmazonSageMakerFullAccess policy) and "
            "access to the bucket; see docs/sagemaker.md."
        )
    if not _ROLE_ARN.match(value):
        raise NoRoleError(
            "--role must be an IAM role ARN such as arn:aws:iam::123456789012:role/SageMakerExecutionRole, "
            f"got {value!r}"
        )
    return value


def as_aws(context: Any = None, environ: Mapping[str, str] | None = None) -> Aws:
    """An :class:`Aws` from what a Python caller has: an ``Aws``, a ``boto3.Session``, or nothing.

    With nothing, the context comes from ``environ`` (default ``os.environ``) as the CLI builds it; a boto3 session
    keeps its credentials and region, and ``AWS_ENDPOINT_URL`` in ``environ`` still applies.
    """
    import os

    if isinstance(context, Aws):
        return context
    environ = os.environ if environ is None else environ
    if context is None:
        return Aws.from_environ(environ)
    if hasattr(context, "client") and hasattr(context, "region_name"):
        return Aws.from_session(context, endpoint_url=environ.get("AWS_ENDPOINT_URL") or None)
    raise TypeError(f"Expected a dogclf.sagemaker.aws.Aws, a boto3.Session or None, got {type(context).__name__}")
