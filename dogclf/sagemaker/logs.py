"""Following a job's CloudWatch log streams (``/aws/sagemaker/TrainingJobs``, streams ``<job>/algo-N-...``).

The SDK's own log reader ignores the session it is given (sagemaker-python-sdk issue #5765), so this reads the
streams with the boto3 ``logs`` client of the launcher's AWS context.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dogclf.sagemaker.aws import Aws

__all__ = ["LogFollower"]


class LogFollower:
    """Reads new lines of every stream whose name starts with a prefix, each stream from where it stopped.

    Args:
        aws: The AWS context.
        group: The log group.
        prefix: The stream name prefix (``"<job name>/"``).
    """

    def __init__(self, aws: Aws, group: str, prefix: str) -> None:
        self.aws = aws
        self.group = group
        self.prefix = prefix
        self.tokens: dict[str, str] = {}
        self.lines: list[str] = []

    def _streams(self) -> list[str]:
        logs = self.aws.client("logs")
        try:
            pages = logs.get_paginator("describe_log_streams").paginate(
                logGroupName=self.group, logStreamNamePrefix=self.prefix
            )
            return sorted(s["logStreamName"] for page in pages for s in page.get("logStreams", []))
        except logs.exceptions.ResourceNotFoundException:
            return []  # the group appears when the first instance starts writing

    def poll(self) -> list[str]:
        """The lines written since the last call (prefixed with the stream's host when there are several)."""
        from dogclf.sagemaker.aws import aws_errors

        logs = self.aws.client("logs")
        new: list[str] = []
        with aws_errors(f"Reading the logs of {self.prefix.rstrip('/')}"):
            streams = self._streams()
            for stream in streams:
                label = f"[{stream[len(self.prefix) :]}] " if len(streams) > 1 else ""
                while True:
                    token = self.tokens.get(stream)
                    args = {"logGroupName": self.group, "logStreamName": stream, "startFromHead": True}
                    if token:
                        args["nextToken"] = token
                    page = logs.get_log_events(**args)
                    events = page.get("events", [])
                    new += [f"{label}{event['message'].rstrip()}" for event in events]
                    following = page.get("nextForwardToken")
                    if following:
                        self.tokens[stream] = following
                    if not events or following == token:
                        break
        self.lines += new
        return new
