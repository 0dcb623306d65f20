"""S3 I/O: boto3's transfer manager plus retries, with errors mapped to exit codes.

Permanent errors (access denied, no such bucket/key, bad credentials) become
`InvalidInputError` (exit 42, never retried; reason AccessDenied when the credentials or the policy
refuse, else decided by the caller, which knows whether it read the dataset, the model or the output); everything else that looks like the network or
the store having a bad moment is retried here with backoff and, if it persists, becomes
`TransientIOError` (exit 75, the Job is retried and resumes from its last checkpoint).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import boto3
import botocore.config
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from finetune_contract.outcomes import FailureReason
from finetune_contract.uris import S3Uri

from .exitcodes import InvalidInputError, TransientIOError
from .safepaths import escapes

log = logging.getLogger(__name__)

T = TypeVar("T")

# The credentials or the bucket policy refuse: the user fixes the Secret or the policy, not the data.
_DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"}
_PERMANENT_CODES = {
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "NoSuchBucket",
    "NoSuchKey",
    "404",
    "403",
    "InvalidBucketName",
    "InvalidURI",
}

# 64 MiB parts, 8 in flight: model shards are GBs, and multipart is what makes them resumable
# per part and parallel; small files stay single-part below the threshold.
TRANSFER = TransferConfig(
    multipart_threshold=64 * 1024 * 1024,
    multipart_chunksize=64 * 1024 * 1024,
    max_concurrency=8,
    use_threads=True,
)


# A conditional write lost to another writer (412), or raced one in flight (409 on AWS): not retried
# as is, the caller reads again and decides.
_PRECONDITION_CODES: Final = {"PreconditionFailed", "412", "ConditionalRequestConflict"}


class PreconditionFailedError(Exception):
    """A conditional write found the object not as the condition said."""


_RETRYABLE = (
    botocore.exceptions.BotoCoreError,
    botocore.exceptions.ClientError,
    boto3.exceptions.S3UploadFailedError,
    OSError,
)


def _is_permanent(exc: BaseException) -> bool:
    if isinstance(exc, botocore.exceptions.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return code in _PERMANENT_CODES
    if isinstance(exc, boto3.exceptions.S3UploadFailedError):
        # The transfer manager wraps the ClientError into a message string.
        return any(code in str(exc) for code in _PERMANENT_CODES if not code.isdigit())
    return isinstance(exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.ParamValidationError)


class S3:
    """A thin client: every call retried with backoff, errors mapped to permanent/transient."""

    def __init__(
        self,
        endpoint: str | None = None,
        region: str | None = None,
        attempts: int = 5,
        base_delay: float = 0.5,
    ) -> None:
        endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL") or None
        region = region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        # botocore retries throttling and 5xx itself; our loop on top also covers connection
        # errors during streaming bodies, which botocore does not retry.
        cfg = botocore.config.Config(
            retries={"max_attempts": 3, "mode": "standard"},
            s3={"addressing_style": "path"},
            connect_timeout=10,
            read_timeout=60,
        )
        # Credentials come from the standard env vars only; they are never logged.
        # A session of our own: the default session caches credentials process-wide.
        session = boto3.session.Session()
        self.client: Any = session.client("s3", endpoint_url=endpoint, region_name=region, config=cfg)
        self.attempts = attempts
        self.base_delay = base_delay

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except Exception as exc:
                if _error_code(exc) in _PRECONDITION_CODES:
                    raise PreconditionFailedError(f"{what}: {_describe(exc)}") from exc
                if _is_permanent(exc):
                    reason = FailureReason.ACCESS_DENIED if _error_code(exc) in _DENIED_CODES else None
                    raise InvalidInputError(f"{what}: {_describe(exc)}", reason=reason) from exc
                if not isinstance(exc, _RETRYABLE):
                    raise
                if attempt == self.attempts:
                    raise TransientIOError(f"{what}: {_describe(exc)} (after {attempt} attempts)") from exc
                delay = self.base_delay * 2 ** (attempt - 1) * (1 + random.random())  # noqa: S311
                log.warning("%s failed (%s); retrying in %.1fs", what, _describe(exc), delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    # --- objects -------------------------------------------------------------------------
    def download_file(self, uri: S3Uri, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        # The other ranks of a distributed pod fetch after its local rank 0 (distributed.py): what
        # that rank downloaded is in place, whole (boto3 renames a finished download into place).
        if dest.is_file() and dest.stat().st_size == self.size(uri):
            return dest
        self._call(
            f"download {uri}",
            lambda: self.client.download_file(uri.bucket, uri.key, str(dest), Config=TRANSFER),
        )
        return dest

    def upload_file(self, src: Path, uri: S3Uri) -> None:
        self._call(
            f"upload {uri}",
            lambda: self.client.upload_file(str(src), uri.bucket, uri.key, Config=TRANSFER),
        )

    def put_bytes(
        self,
        uri: S3Uri,
        data: bytes,
        content_type: str = "application/octet-stream",
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> None:
        """Write one object; with if_none_match only where none exists, with if_match only over the
        version whose ETag it names (S3 conditional writes): PreconditionFailedError otherwise."""
        conditions: dict[str, str] = {}
        if if_none_match:
            conditions["IfNoneMatch"] = "*"
        if if_match is not None:
            conditions["IfMatch"] = if_match
        self._call(
            f"write {uri}",
            lambda: self.client.put_object(
                Bucket=uri.bucket, Key=uri.key, Body=data, ContentType=content_type, **conditions
            ),
        )

    def get_with_etag(self, uri: S3Uri) -> tuple[bytes, str]:
        """An object's bytes and the ETag of that version (for a conditional write over it)."""

        def get() -> tuple[bytes, str]:
            resp = self.client.get_object(Bucket=uri.bucket, Key=uri.key)
            return resp["Body"].read(), str(resp["ETag"])

        return self._call(f"read {uri}", get)

    def get_bytes(self, uri: S3Uri) -> bytes:
        def get() -> bytes:
            body: bytes = self.client.get_object(Bucket=uri.bucket, Key=uri.key)["Body"].read()
            return body

        return self._call(f"read {uri}", get)

    def get_range(self, uri: S3Uri, start: int, end: int) -> bytes:
        """Bytes [start, end] inclusive (used to read safetensors headers without the weights)."""

        def get() -> bytes:
            resp = self.client.get_object(Bucket=uri.bucket, Key=uri.key, Range=f"bytes={start}-{end}")
            body: bytes = resp["Body"].read()
            return body

        return self._call(f"read {uri}", get)

    def size(self, uri: S3Uri) -> int:
        """The object's length in bytes (InvalidInputError when it does not exist)."""

        def head() -> int:
            return int(self.client.head_object(Bucket=uri.bucket, Key=uri.key)["ContentLength"])

        return self._call(f"stat {uri}", head)

    def exists(self, uri: S3Uri) -> bool:
        def head() -> bool:
            try:
                self.client.head_object(Bucket=uri.bucket, Key=uri.key)
            except botocore.exceptions.ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in {"404", "NoSuchKey", "NotFound"}:
                    return False
                raise
            return True

        return self._call(f"stat {uri}", head)

    def delete(self, uri: S3Uri) -> None:
        self._call(f"delete {uri}", lambda: self.client.delete_object(Bucket=uri.bucket, Key=uri.key))

    # --- prefixes ------------------------------------------------------------------------
    def list_keys(self, prefix: S3Uri) -> list[str]:
        def listing() -> list[str]:
            keys: list[str] = []
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=prefix.bucket, Prefix=prefix.key):
                keys.extend(obj["Key"] for obj in page.get("Contents", []))
            return keys

        return self._call(f"list {prefix}", listing)

    def list_sizes(self, prefix: S3Uri) -> dict[str, int]:
        """Object sizes under a prefix, by the key's part after it."""

        def listing() -> dict[str, int]:
            sizes: dict[str, int] = {}
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=prefix.bucket, Prefix=prefix.key):
                for obj in page.get("Contents", []):
                    sizes[obj["Key"][len(prefix.key) :]] = int(obj["Size"])
            return sizes

        return self._call(f"list {prefix}", listing)

    def list_subdirs(self, prefix: S3Uri) -> list[str]:
        """Names of the immediate "subdirectories" under a prefix ending in '/'."""

        def listing() -> list[str]:
            names: list[str] = []
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=prefix.bucket, Prefix=prefix.key, Delimiter="/"):
                for common in page.get("CommonPrefixes", []):
                    names.append(common["Prefix"][len(prefix.key) :].rstrip("/"))
            return names

        return self._call(f"list {prefix}", listing)

    def download_prefix(self, prefix: S3Uri, dest: Path) -> list[Path]:
        key_prefix = prefix.key if prefix.key.endswith("/") or not prefix.key else prefix.key + "/"
        files = []
        for key in self.list_keys(S3Uri(prefix.bucket, key_prefix)):
            rel = key[len(key_prefix) :]
            if not rel or rel.endswith("/"):
                continue
            if escapes(rel):
                raise InvalidInputError(
                    f"s3://{prefix.bucket}/{key}: the object's name leaves {prefix}; remove or rename it"
                )
            files.append(self.download_file(S3Uri(prefix.bucket, key), dest / rel))
        return files

    def delete_prefix(self, prefix: S3Uri) -> None:
        for key in self.list_keys(prefix):
            self.delete(S3Uri(prefix.bucket, key))


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return "AccessDenied"
    text = str(exc)
    return next((code for code in _DENIED_CODES if not code.isdigit() and code in text), "")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        if str(err.get("Code")) == "404":
            # A HEAD has no body to name the cause.
            return "404: no such object (or bucket)"
        return f"{err.get('Code', '?')}: {err.get('Message', '')}".strip()
    return f"{type(exc).__name__}: {exc}"


def from_config(endpoint: str | None, region: str | None) -> S3:
    return S3(endpoint=endpoint, region=region)
