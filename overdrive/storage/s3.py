"""S3-compatible object storage (AWS S3, MinIO, Ceph RGW, moto) as a :class:`Storage` backend.

Configuration is the standard AWS one, so nothing Overdrive-specific has to be learned or stored:
credentials and region come from the environment, ``~/.aws/config`` or an instance role (a boto3
session); ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``, or ``endpoint_url`` in the profile)
points at MinIO, Ceph or moto, and botocore honours it natively. When such a non-AWS endpoint is
in use the client switches to path-style addressing (``http://host:9000/bucket/key``), because
self-hosted stores rarely have wildcard DNS for ``bucket.host``.

Objects are stored under ``<prefix>/<key>``. A put replaces the object in one request
(``PutObject``, or ``CompleteMultipartUpload`` for large streams), which S3 applies atomically: a
reader sees the old or the new object, never a mixture. A failed multipart upload is aborted so no
half-written parts are left behind (add an ``AbortIncompleteMultipartUpload`` lifecycle rule to
the bucket as well, for uploads whose abort could not reach the endpoint).

Every botocore/boto3 exception is translated into :class:`NotFound`, :class:`StorageUnavailable`
or :class:`StorageError` with a one-line message naming the bucket or key, so the CLI and server
can print it as-is (see :meth:`S3Storage.translate_error`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from overdrive.storage.base import (
    CACHE_CONTROL,
    CachePolicy,
    NotFound,
    Storage,
    StorageError,
    StorageUnavailable,
    check_key,
)

if TYPE_CHECKING:
    from botocore.config import _RetryDict
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

__all__ = ["DEFAULT_PART_SIZE", "MIN_PART_SIZE", "S3Storage"]

MiB = 1 << 20
#: Size of the parts of a multipart upload, and so the memory a ``put_stream`` holds at once.
DEFAULT_PART_SIZE = 8 * MiB
#: S3 rejects non-final parts smaller than this (``EntityTooSmall``).
MIN_PART_SIZE = 5 * MiB
#: S3 allows at most this many parts per upload (80 GB objects at the default part size).
MAX_PARTS = 10_000
_READ_CHUNK = 1 * MiB

#: An unreachable endpoint should fail in seconds: short connect timeout, few retries.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
MAX_ATTEMPTS = 3  # in total, the first attempt included

#: Environment variable giving the URL vehicles fetch objects from (a CDN in front of the bucket).
PUBLIC_BASE_URL_ENV = "OVERDRIVE_PUBLIC_BASE_URL"

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_NO_BUCKET_CODES = frozenset({"NoSuchBucket"})
_DENIED_CODES = frozenset(
    {
        "403",
        "AccessDenied",
        "AccountProblem",
        "AllAccessDisabled",
        "ExpiredToken",
        "Forbidden",
        "InvalidAccessKeyId",
        "InvalidClientTokenId",
        "InvalidSecurity",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
    }
)
_AWS_HOST_SUFFIXES = (".amazonaws.com", ".amazonaws.com.cn", ".api.aws")


def _one_line(text: str) -> str:
    """Collapse whitespace so a message (e.g. a multi-line botocore one) stays on one line."""
    return " ".join(text.split())


def _is_aws_endpoint(url: str) -> bool:
    """Whether ``url`` is one of AWS's own S3 endpoints (as opposed to MinIO, Ceph, moto…)."""
    host = urlsplit(url).hostname or ""
    return host.endswith(_AWS_HOST_SUFFIXES)


def _client_config() -> Config:
    """Timeouts and retries that make an unreachable endpoint fail in seconds, not minutes.

    ``AWS_MAX_ATTEMPTS`` / ``AWS_RETRY_MODE`` in the environment still win, as usual for AWS tools.
    """
    retries: _RetryDict = {}
    if "AWS_MAX_ATTEMPTS" not in os.environ:
        retries["total_max_attempts"] = MAX_ATTEMPTS  # like AWS_MAX_ATTEMPTS: incl. the first
    if "AWS_RETRY_MODE" not in os.environ:
        retries["mode"] = "standard"
    return Config(
        connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT, retries=retries or None
    )


def _make_client() -> tuple[S3Client, str | None]:
    """An S3 client configured the standard AWS way, and the custom endpoint URL if one is set.

    botocore resolves ``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``/profile ``endpoint_url``
    itself; a client is built once to learn the result and, for a non-AWS endpoint, rebuilt with
    path-style addressing (which has to be chosen when the client is created).
    """
    session = boto3.session.Session()
    config = _client_config()
    client = session.client("s3", config=config)
    endpoint = client.meta.endpoint_url
    if _is_aws_endpoint(endpoint):
        return client, None
    path_style = config.merge(Config(s3={"addressing_style": "path"}))
    return session.client("s3", endpoint_url=endpoint, config=path_style), endpoint


def _content_type(key: str) -> str:
    return "application/json" if key.endswith(".json") else "application/octet-stream"


def _os_reason(exc: BaseException) -> str | None:
    """The ``strerror`` of the OS error behind a connection failure (``Connection refused``)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
        kwargs = getattr(e, "kwargs", None)
        if isinstance(kwargs, dict) and isinstance(kwargs.get("error"), BaseException):
            todo.append(kwargs["error"])
        todo.extend(c for c in (e.__cause__, e.__context__) if c is not None)
    return None


class S3Storage(Storage):
    """Objects in an S3 bucket, below an optional key prefix.

    ``client`` replaces the boto3 client built from the environment (for tests, or a caller with
    its own session); ``public_base_url`` is the URL vehicles fetch objects from (a CDN), defaulting
    to ``$OVERDRIVE_PUBLIC_BASE_URL`` and then to the bucket's own URL. ``part_size`` is the
    multipart part size for :meth:`put_stream` and bounds its memory use.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: S3Client | None = None,
        public_base_url: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
    ) -> None:
        if not bucket:
            raise StorageError("no S3 bucket given")
        prefix = prefix.strip("/")
        if prefix:
            try:
                check_key(prefix)
            except StorageError:
                raise StorageError(
                    f"invalid S3 key prefix {prefix!r} for bucket {bucket!r}"
                ) from None
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (the S3 minimum)")
        self.bucket = bucket
        self.prefix = prefix
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self.part_size = part_size
        if client is None:
            try:
                self._client, self.endpoint_url = _make_client()
            except BotoCoreError as e:  # e.g. AWS_PROFILE names a profile that does not exist
                raise StorageUnavailable(
                    f"cannot set up S3 access to bucket {bucket!r}: {_one_line(str(e))}"
                ) from e
        else:
            self._client = client
            url = client.meta.endpoint_url
            self.endpoint_url = None if _is_aws_endpoint(url) else url
        #: The endpoint requests go to, for messages (an AWS one when ``endpoint_url`` is None).
        self.endpoint: str = self._client.meta.endpoint_url
        self.public_base_url = public_base_url or os.environ.get(PUBLIC_BASE_URL_ENV) or None
        self._key_prefix = f"{prefix}/" if prefix else ""
        self._bucket_checked = False

    @property
    def client(self) -> S3Client:
        """The boto3 S3 client in use."""
        return self._client

    def __repr__(self) -> str:
        return f"S3Storage({self.url!r}, endpoint={self.endpoint!r})"

    # -- errors ----------------------------------------------------------------------------------

    def translate_error(
        self, exc: Exception, *, key: str | None = None, action: str = "accessing the bucket"
    ) -> StorageError:
        """Map a botocore/boto3 exception to one of our errors with a one-line message.

        ``key`` is the object the request was about (a 404 on it means :class:`NotFound`);
        ``action`` says what was being done (``"reading 'metadata/root.json'"``).
        """
        bucket = self.bucket
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = str(error.get("Code") or status or "unknown")
            message = _one_line(str(error.get("Message") or ""))
            if code in _NO_BUCKET_CODES or (
                exc.operation_name == "HeadBucket" and code in _NOT_FOUND_CODES
            ):
                return StorageUnavailable(f"bucket {bucket!r} does not exist at {self.endpoint}")
            if code in _NOT_FOUND_CODES and key is not None:
                return NotFound(f"{key!r} not found in {self.url}")
            if code in _DENIED_CODES or status == 403:
                return StorageUnavailable(
                    f"access denied to bucket {bucket!r}: check AWS credentials"
                    f" ({code} while {action})"
                )
            detail = f"{code}: {message}" if message else code
            return StorageError(f"S3 error {action} in bucket {bucket!r}: {detail}")
        if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
            return StorageUnavailable(
                f"access denied to bucket {bucket!r}: check AWS credentials ({_one_line(str(exc))})"
            )
        if isinstance(exc, BotoConnectionError | HTTPClientError):
            if isinstance(exc, ConnectTimeoutError):
                reason = f"connection timed out after {CONNECT_TIMEOUT:g}s"
            elif isinstance(exc, ReadTimeoutError):
                reason = f"no response within {READ_TIMEOUT:g}s"
            else:
                reason = _os_reason(exc) or _one_line(str(exc))
            return StorageUnavailable(
                f"cannot reach S3 endpoint {self.endpoint}: {reason} ({action} in bucket {bucket!r})"
            )
        return StorageError(f"S3 error {action} in bucket {bucket!r}: {_one_line(str(exc))}")

    @contextmanager
    def _errors(self, action: str, key: str | None = None) -> Iterator[None]:
        """Translate any botocore/boto3 exception raised inside the block (see translate_error)."""
        try:
            yield
        except (BotoCoreError, ClientError) as e:
            raise self.translate_error(e, key=key, action=action) from e

    def _full(self, key: str) -> str:
        """The S3 object key for our ``key`` (validated)."""
        return self._key_prefix + check_key(key)

    # -- writing ---------------------------------------------------------------------------------

    def put_bytes(
        self, key: str, data: bytes, *, cache: CachePolicy = CachePolicy.METADATA
    ) -> None:
        full = self._full(key)
        with self._errors(f"writing {key!r}", key):
            self._client.put_object(
                Bucket=self.bucket,
                Key=full,
                Body=data,
                ContentType=_content_type(key),
                CacheControl=CACHE_CONTROL[cache],
            )

    def put_stream(
        self, key: str, stream: BinaryIO, *, cache: CachePolicy = CachePolicy.IMMUTABLE
    ) -> None:
        """Upload ``stream`` in parts of :attr:`part_size`; one ``PutObject`` if it fits in one.

        Only one part is held in memory at a time. If anything fails (the source stream, the
        network, an interrupt) the multipart upload is aborted, so the object previously stored
        under ``key`` stays as it was and no orphaned parts are left.
        """
        full = self._full(key)
        action = f"writing {key!r}"
        part = self._read_part(stream, key)
        if len(part) < self.part_size:
            with self._errors(action, key):
                self._client.put_object(
                    Bucket=self.bucket,
                    Key=full,
                    Body=part,
                    ContentType=_content_type(key),
                    CacheControl=CACHE_CONTROL[cache],
                )
            return
        # Like boto3's own upload_fileobj: send CRC32 part checksums unless the client is
        # configured for "when_required" (some MinIO/Ceph versions reject them).
        setting = getattr(self._client.meta.config, "request_checksum_calculation", None)
        checksums = setting != "when_required"
        extra: dict[str, Any] = {"ChecksumAlgorithm": "CRC32"} if checksums else {}
        with self._errors(action, key):
            created = self._client.create_multipart_upload(
                Bucket=self.bucket,
                Key=full,
                ContentType=_content_type(key),
                CacheControl=CACHE_CONTROL[cache],
                **extra,
            )
        upload_id = created["UploadId"]
        try:
            parts: list[CompletedPartTypeDef] = []
            number = 1
            while part:
                if number > MAX_PARTS:
                    raise StorageError(
                        f"cannot write {key!r} to {self.url}: more than {MAX_PARTS} parts of"
                        f" {self.part_size} bytes (use a larger part size)"
                    )
                with self._errors(action, key):
                    uploaded = self._client.upload_part(
                        Bucket=self.bucket,
                        Key=full,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=part,
                        **extra,
                    )
                done: CompletedPartTypeDef = {"ETag": uploaded["ETag"], "PartNumber": number}
                if checksums and "ChecksumCRC32" in uploaded:
                    done["ChecksumCRC32"] = uploaded["ChecksumCRC32"]
                parts.append(done)
                number += 1
                part = b""  # drop the sent part before reading the next: one part in memory
                part = self._read_part(stream, key)
            with self._errors(action, key):
                self._client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=full,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
        except BaseException:
            self._abort(full, upload_id)
            raise

    def _read_part(self, stream: BinaryIO, key: str) -> bytes:
        """Read up to one part from ``stream`` (looping over short reads); ``b""`` at the end."""
        size = self.part_size
        try:
            data = stream.read(size)
            if not data or len(data) >= size:
                return data or b""
            buf = bytearray(data)
            del data
            while len(buf) < size:
                more = stream.read(size - len(buf))
                if not more:
                    break
                buf += more
            return bytes(buf)
        except OSError as e:
            raise StorageError(
                f"cannot write {key!r} to {self.url}: reading the source failed: {e.strerror or e}"
            ) from e

    def _abort(self, full_key: str, upload_id: str) -> None:
        """Abort a multipart upload, best effort (we are already handling another error)."""
        with suppress(BotoCoreError, ClientError):
            self._client.abort_multipart_upload(
                Bucket=self.bucket, Key=full_key, UploadId=upload_id
            )

    # -- reading ---------------------------------------------------------------------------------

    def get_bytes(self, key: str) -> bytes:
        full = self._full(key)
        with self._errors(f"reading {key!r}", key):
            body = self._client.get_object(Bucket=self.bucket, Key=full)["Body"]
            try:
                return body.read()
            finally:
                body.close()

    def open_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Yield bytes ``[start, end)`` in 1 MiB chunks from one ranged ``GetObject``.

        The request is made before returning, so a missing key raises :class:`NotFound` here
        rather than on the first ``next()``. A range past the end of the object yields nothing.
        """
        full = self._full(key)
        if start < 0 or (end is not None and end < 0):
            raise StorageError(f"invalid byte range [{start}, {end}) for {key!r}")
        if end is not None and end <= start:
            self.size(key)  # still raise NotFound for a missing key
            return iter(())
        action = f"reading {key!r}"
        try:
            with self._errors(action, key):
                if start == 0 and end is None:  # no Range: it would fail on an empty object
                    response = self._client.get_object(Bucket=self.bucket, Key=full)
                else:
                    last = "" if end is None else str(end - 1)
                    response = self._client.get_object(
                        Bucket=self.bucket, Key=full, Range=f"bytes={start}-{last}"
                    )
        except StorageError as e:
            cause = e.__cause__
            if (
                isinstance(cause, ClientError)
                and cause.response.get("Error", {}).get("Code") == "InvalidRange"
            ):
                return iter(())
            raise
        return self._iter_body(response["Body"], action, key)

    def _iter_body(self, body: StreamingBody, action: str, key: str) -> Iterator[bytes]:
        try:
            with self._errors(action, key):
                yield from body.iter_chunks(_READ_CHUNK)
        finally:
            body.close()

    def _head_size(self, key: str) -> int | None:
        """The object's size, or None if it does not exist (the bucket must, though)."""
        full = self._full(key)
        try:
            with self._errors(f"reading {key!r}", key):
                head = self._client.head_object(Bucket=self.bucket, Key=full)
        except NotFound:
            # A HEAD 404 does not say whether the key or the whole bucket is missing; find out
            # once, so a missing bucket is reported as such instead of as "no such object".
            if not self._bucket_checked:
                self.check()
            return None
        self._bucket_checked = True
        return head["ContentLength"]

    def exists(self, key: str) -> bool:
        return self._head_size(key) is not None

    def size(self, key: str) -> int:
        size = self._head_size(key)
        if size is None:
            raise NotFound(f"{key!r} not found in {self.url}")
        return size

    def list(self, prefix: str = "") -> list[str]:
        keys = []
        strip = len(self._key_prefix)
        with self._errors(f"listing {prefix!r}"):
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key_prefix + prefix):
                for obj in page.get("Contents", []):
                    name = obj.get("Key", "")
                    # Skip "directory" placeholder objects that consoles create.
                    if name.startswith(self._key_prefix) and not name.endswith("/"):
                        keys.append(name[strip:])
        return sorted(keys)

    def delete(self, key: str) -> None:
        full = self._full(key)
        with self._errors(f"deleting {key!r}", key):
            self._client.delete_object(Bucket=self.bucket, Key=full)

    def public_url(self, key: str) -> str:
        """Where a vehicle fetches ``key``: the CDN, else the endpoint or AWS bucket URL.

        ``public_base_url`` stands for the storage prefix (a CDN whose origin path is the
        prefix), so only ``key`` is appended to it; the bucket URLs include the prefix.
        """
        full = self._full(key)
        if self.public_base_url:
            return f"{self.public_base_url.rstrip('/')}/{quote(key)}"
        if self.endpoint_url:
            return f"{self.endpoint_url.rstrip('/')}/{quote(self.bucket)}/{quote(full)}"
        region = self._client.meta.region_name or "us-east-1"
        return f"https://{self.bucket}.s3.{region}.amazonaws.com/{quote(full)}"

    def check(self) -> None:
        """Raise :class:`StorageUnavailable` unless the bucket exists and we may use it."""
        with self._errors("checking the bucket"):
            self._client.head_bucket(Bucket=self.bucket)
        self._bucket_checked = True
