"""S3 for the launchers: ``s3://`` URIs, a folder's content manifest, a folder upload that mirrors it, downloads.

:func:`folder_manifest` lists a local folder's files with their sizes and SHA-256 and digests the list, so the same
photos always name the same prefix and different photos a different one. :func:`sync_folder` uploads a folder under a
prefix. A file whose object already exists with the same size and the same SHA-256 (kept in the object's
``x-amz-meta-sha256`` by every upload here) is skipped, so launching again on the same photos uploads nothing; with
``mirror=True`` objects under the prefix that the folder does not have are deleted, so the prefix holds exactly the
folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dogclf._logging import deprecated_log
from dogclf.errors import DogclfError

if TYPE_CHECKING:
    from dogclf.sagemaker.aws import Aws

__all__ = [
    "FolderManifest",
    "S3Uri",
    "SyncReport",
    "download_file",
    "download_prefix",
    "folder_manifest",
    "sha256_file",
    "sync_folder",
    "upload_file",
]

logger = logging.getLogger(__name__)

_SHA_KEY = "sha256"
_WORKERS = 8


class S3UriError(DogclfError, ValueError):
    """A string that is not an ``s3://bucket/key`` URI."""


@dataclass(frozen=True)
class S3Uri:
    """``s3://bucket/key``.

    Attributes:
        bucket: The bucket.
        key: The key or prefix (no leading ``/``).
    """

    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        """Reads ``s3://bucket/key``.

        Raises:
            S3UriError: Not of that form.
        """
        if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
            raise S3UriError(f"Expected an S3 URI such as s3://my-bucket/dogImages/, got {uri!r}")
        bucket, _, key = uri[5:].partition("/")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def join(self, *parts: str) -> S3Uri:
        """This URI with ``parts`` appended, one ``/`` between each."""
        key = "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/"))
        return S3Uri(self.bucket, key)

    def prefix(self) -> str:
        """The key as a folder prefix (ending in ``/``, or empty for the whole bucket)."""
        return self.key if not self.key or self.key.endswith("/") else self.key + "/"


@dataclass(frozen=True)
class SyncReport:
    """What :func:`sync_folder` did.

    Attributes:
        uri: The prefix the folder now mirrors.
        uploaded: Files uploaded.
        skipped: Files already there with the same size and checksum.
        bytes_uploaded: Bytes sent.
        deleted: Objects under the prefix the folder does not have, deleted (``mirror=True``).
    """

    uri: S3Uri
    uploaded: int
    skipped: int
    bytes_uploaded: int
    deleted: int = 0


@dataclass(frozen=True)
class FolderManifest:
    """A local folder's files (hidden ones left out): relative path, size and SHA-256 of each, sorted by path.

    Attributes:
        root: The folder.
        files: ``(relative POSIX path, size, hex SHA-256)`` per file.
    """

    root: Path
    files: tuple[tuple[str, int, str], ...]

    @property
    def digest(self) -> str:
        """The hex SHA-256 of the listing: equal for equal contents, whatever the folder is called or where."""
        digest = hashlib.sha256()
        for relative, size, sha in self.files:
            digest.update(f"{sha} {size} {relative}\n".encode())
        return digest.hexdigest()

    @property
    def size(self) -> int:
        """Bytes in all."""
        return sum(size for _, size, _ in self.files)


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _local_files(folder: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def folder_manifest(folder: str | os.PathLike[str]) -> FolderManifest:
    """Lists and hashes ``folder``'s files (what :func:`sync_folder` uploads), several at a time."""
    root = Path(folder)
    paths = list(_local_files(root))

    def entry(path: Path) -> tuple[str, int, str]:
        return path.relative_to(root).as_posix(), path.stat().st_size, sha256_file(path)

    with ThreadPoolExecutor(_WORKERS) as pool:
        files = tuple(sorted(pool.map(entry, paths)))
    return FolderManifest(root, files)


def _existing_sizes(aws: Aws, uri: S3Uri) -> dict[str, int]:
    paginator = aws.client("s3").get_paginator("list_objects_v2")
    sizes: dict[str, int] = {}
    for page in paginator.paginate(Bucket=uri.bucket, Prefix=uri.prefix()):
        for item in page.get("Contents", []):
            sizes[item["Key"]] = int(item["Size"])
    return sizes


def upload_file(aws: Aws, path: Path, uri: S3Uri, *, sha256: str | None = None) -> None:
    """Uploads one file, recording its SHA-256 in the object's metadata."""
    from dogclf.sagemaker.aws import aws_errors

    digest = sha256 or sha256_file(path)
    with aws_errors(f"Uploading {path} to {uri}"):
        aws.client("s3").upload_file(str(path), uri.bucket, uri.key, ExtraArgs={"Metadata": {_SHA_KEY: digest}})


def _delete_keys(aws: Aws, bucket: str, keys: list[str]) -> None:
    from dogclf.sagemaker.aws import AwsError, aws_errors

    for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
        batch = [{"Key": key} for key in keys[start : start + 1000]]
        with aws_errors(f"Deleting {len(batch)} stale objects from s3://{bucket}"):
            answer = aws.client("s3").delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        if answer.get("Errors"):
            first = answer["Errors"][0]
            raise AwsError(
                f"Could not delete s3://{bucket}/{first.get('Key')} ({first.get('Code')}: {first.get('Message')}) "
                f"and {len(answer['Errors']) - 1} more: the prefix would not mirror the local folder."
            )


@deprecated_log
def sync_folder(
    aws: Aws,
    folder: str | os.PathLike[str],
    uri: S3Uri,
    *,
    manifest: FolderManifest | None = None,
    mirror: bool = False,
    every: float = 5.0,
) -> SyncReport:
    """Uploads ``folder`` under ``uri``, skipping files already there with the same size and SHA-256.

    Args:
        aws: The AWS context.
        folder: The local folder (hidden files and folders are left out).
        uri: The prefix to mirror it under.
        manifest: The folder's :func:`folder_manifest`, when already made (saves hashing it again).
        mirror: Also delete objects under the prefix that the folder does not have, so that it holds exactly the
            folder (what a training channel then copies).
        every: Seconds between progress lines.

    Returns:
        What was uploaded, skipped and deleted.

    Raises:
        AwsError: A listing, an upload or a deletion failed.
    """
    from dogclf.sagemaker.aws import aws_errors

    root = Path(folder)
    listing = manifest if manifest is not None else folder_manifest(root)
    with aws_errors(f"Listing {uri}"):
        existing = _existing_sizes(aws, uri)
    base = uri.prefix()

    def one(entry: tuple[str, int, str]) -> int:
        relative, size, digest = entry
        key = base + relative
        if existing.get(key) == size:
            with aws_errors(f"Reading {uri.bucket}/{key}"):
                head = aws.client("s3").head_object(Bucket=uri.bucket, Key=key)
            if head.get("Metadata", {}).get(_SHA_KEY) == digest:
                return -1
        upload_file(aws, root / relative, S3Uri(uri.bucket, key), sha256=digest)
        return size

    uploaded = skipped = sent = 0
    last = time.monotonic()
    total = len(listing.files)
    logger.info(f"Syncing {total} files from {root} to {uri.join('')}/ ...")
    with ThreadPoolExecutor(_WORKERS) as pool:
        for done, result in enumerate(pool.map(one, listing.files), 1):
            if result < 0:
                skipped += 1
            else:
                uploaded += 1
                sent += result
            if time.monotonic() - last >= every:
                last = time.monotonic()
                logger.info(f"  {done}/{total} files: {uploaded} uploaded, {skipped} already there")
    stale = sorted(set(existing) - {base + relative for relative, _, _ in listing.files}) if mirror else []
    _delete_keys(aws, uri.bucket, stale)
    removed = f", {len(stale)} stale deleted" if stale else ""
    summary = f"{uploaded} uploaded ({sent / 1e6:.1f} MB), {skipped} already there{removed}"
    logger.info(f"Synced {root} to {uri.join('')}/: {summary}")
    return SyncReport(uri=uri, uploaded=uploaded, skipped=skipped, bytes_uploaded=sent, deleted=len(stale))


def download_file(aws: Aws, uri: S3Uri, path: Path) -> Path:
    """Downloads one object to ``path`` (its folder is created)."""
    from dogclf.sagemaker.aws import aws_errors

    path.parent.mkdir(parents=True, exist_ok=True)
    with aws_errors(f"Downloading {uri}"):
        aws.client("s3").download_file(uri.bucket, uri.key, str(path))
    return path


def download_prefix(aws: Aws, uri: S3Uri, folder: str | os.PathLike[str]) -> Path:
    """Downloads every object under ``uri`` into ``folder``, keeping the key's path below the prefix.

    This is what SageMaker does for a File-mode channel (into ``/opt/ml/input/data/<channel>``).
    """
    from dogclf.sagemaker.aws import aws_errors

    root = Path(folder)
    base = uri.prefix()
    with aws_errors(f"Listing {uri}"):
        keys = list(_existing_sizes(aws, uri))
    for key in keys:
        relative = key[len(base) :]
        if not relative or relative.endswith("/"):
            continue
        target = (root / relative).resolve()
        if root.resolve() not in target.parents:
            raise S3UriError(f"Object {key} of {uri} would land outside {root}; refusing to download it")
        download_file(aws, S3Uri(uri.bucket, key), target)
    return root
