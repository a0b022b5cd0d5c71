"""Every botocore failure becomes NotFound / StorageUnavailable / StorageError with one line."""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from overdrive.storage import NotFound, StorageError, StorageUnavailable
from overdrive.storage.s3 import MIN_PART_SIZE, S3Storage

from .conftest import BUCKET

DENIED = r"^access denied to bucket 'overdrive-contract': check AWS credentials \({code} "

Op = Callable[[S3Storage], object]
#: Every operation, so none of them can leak a raw botocore exception.
OPERATIONS: dict[str, Op] = {
    "check": lambda s: s.check(),
    "put_bytes": lambda s: s.put_bytes("metadata/1.root.json", b"{}"),
    "put_stream_small": lambda s: s.put_stream("t/a.bin", io.BytesIO(b"abc")),
    "put_stream_multipart": lambda s: s.put_stream(
        "t/b.bin", io.BytesIO(b"b" * (MIN_PART_SIZE + 1))
    ),
    "get_bytes": lambda s: s.get_bytes("metadata/1.root.json"),
    "open_range": lambda s: b"".join(s.open_range("metadata/1.root.json", 0, 10)),
    "exists": lambda s: s.exists("metadata/1.root.json"),
    "size": lambda s: s.size("metadata/1.root.json"),
    "list": lambda s: s.list("metadata/"),
    "delete": lambda s: s.delete("metadata/1.root.json"),
}
ALL_OPS = pytest.mark.parametrize("op", list(OPERATIONS.values()), ids=list(OPERATIONS))


def assert_one_line(error: BaseException) -> None:
    message = str(error)
    assert message and "\n" not in message and len(message) < 300, message


# -- missing bucket -------------------------------------------------------------------------------


@ALL_OPS
def test_missing_bucket(s3: S3Storage, op: Op) -> None:
    storage = S3Storage("no-such-bucket", "p", part_size=MIN_PART_SIZE)
    with pytest.raises(StorageUnavailable) as info:
        op(storage)
    assert str(info.value) == f"bucket 'no-such-bucket' does not exist at {storage.endpoint}"


def test_missing_key_is_not_a_missing_bucket(s3: S3Storage) -> None:
    """A HEAD 404 is ambiguous: the backend checks the bucket once, then trusts it."""
    assert not s3.exists("nope")
    with pytest.raises(NotFound):
        s3.size("nope")


# -- bad credentials (moto checks signatures and IAM policies once IAM auth is enabled) -----------


@pytest.fixture
def iam_auth(s3: S3Storage) -> Iterator[None]:
    from moto.core.authorization import enable_iam_authentication

    with enable_iam_authentication():
        yield


def iam_user_key(*, with_policy: bool) -> tuple[str, str]:
    """An access key of a moto IAM user (made before IAM auth is on), optionally allowed S3."""
    iam = boto3.client("iam")
    iam.create_user(UserName="publisher")
    if with_policy:
        iam.put_user_policy(
            UserName="publisher",
            PolicyName="s3",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
                }
            ),
        )
    key = iam.create_access_key(UserName="publisher")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


@ALL_OPS
def test_unknown_access_key(s3: S3Storage, iam_auth: None, op: Op) -> None:
    # HEAD responses have no body, so only the status tells what happened.
    code = "(InvalidAccessKeyId|403)"
    with pytest.raises(StorageUnavailable, match=DENIED.format(code=code)) as info:
        op(s3)
    assert_one_line(info.value)


def test_wrong_secret(s3: S3Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    key_id, _secret = iam_user_key(with_policy=True)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    storage = S3Storage(BUCKET, "p")
    from moto.core.authorization import enable_iam_authentication

    with enable_iam_authentication():
        with pytest.raises(StorageUnavailable, match=DENIED.format(code="SignatureDoesNotMatch")):
            storage.get_bytes("x.json")
        with pytest.raises(
            StorageUnavailable, match=DENIED.format(code="(SignatureDoesNotMatch|403)")
        ):
            storage.exists("x.json")  # over HTTP a HEAD has no body: only the 403


def test_not_allowed(s3: S3Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    key_id, secret = iam_user_key(with_policy=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    storage = S3Storage(BUCKET, "p")
    from moto.core.authorization import enable_iam_authentication

    with (
        enable_iam_authentication(),
        pytest.raises(StorageUnavailable, match=DENIED.format(code="AccessDenied")),
    ):
        storage.put_bytes("x.json", b"{}")


def test_valid_iam_credentials_work(s3: S3Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: with a real (moto) key and an S3 policy, the same calls succeed."""
    key_id, secret = iam_user_key(with_policy=True)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    storage = S3Storage(BUCKET, "p")
    from moto.core.authorization import enable_iam_authentication

    with enable_iam_authentication():
        storage.put_bytes("x.json", b"{}")
        assert storage.get_bytes("x.json") == b"{}"


def test_no_credentials(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    storage = S3Storage("fleet")
    with pytest.raises(StorageUnavailable) as info:
        storage.check()
    assert str(info.value) == (
        "access denied to bucket 'fleet': check AWS credentials (Unable to locate credentials)"
    )


# -- unreachable endpoint -------------------------------------------------------------------------


def closed_port() -> int:
    """A loopback port nothing listens on (bound then released, so connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "op",
    [OPERATIONS["check"], OPERATIONS["put_stream_multipart"]],
    ids=["check", "put_stream_multipart"],
)
def test_unreachable_endpoint(aws_env: None, monkeypatch: pytest.MonkeyPatch, op: Op) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    storage = S3Storage("fleet", "prod", part_size=MIN_PART_SIZE)
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as info:
        op(storage)
    assert time.monotonic() - started < 10  # 3 attempts with short backoff, not minutes
    assert str(info.value).startswith(f"cannot reach S3 endpoint {endpoint}: Connection refused")
    assert "bucket 'fleet'" in str(info.value)
    assert_one_line(info.value)


# -- the mapping itself, for failures moto cannot produce -----------------------------------------


def client_error(code: str, operation: str = "GetObject", status: int = 400) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": f"message for {code}\nsecond line"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, operation)


@pytest.fixture
def storage(aws_env: None) -> S3Storage:
    return S3Storage("fleet", "prod", client=boto3.client("s3", region_name="us-east-1"))


@pytest.mark.parametrize(
    ("exc", "key", "kind", "message"),
    [
        (client_error("NoSuchKey", status=404), "k.json", NotFound, "'k.json' not found in s3://fleet/prod"),
        (client_error("404", "HeadObject", 404), "k.json", NotFound, "'k.json' not found in s3://fleet/prod"),
        (client_error("NoSuchBucket", status=404), "k.json", StorageUnavailable, "bucket 'fleet' does not exist at https://s3.amazonaws.com"),
        (client_error("404", "HeadBucket", 404), None, StorageUnavailable, "bucket 'fleet' does not exist at https://s3.amazonaws.com"),
        (client_error("InvalidAccessKeyId", status=403), "k", StorageUnavailable, "access denied to bucket 'fleet': check AWS credentials (InvalidAccessKeyId while doing it)"),
        (client_error("SignatureDoesNotMatch", status=403), "k", StorageUnavailable, "access denied to bucket 'fleet': check AWS credentials (SignatureDoesNotMatch while doing it)"),
        (client_error("AccessDenied", status=403), "k", StorageUnavailable, "access denied to bucket 'fleet': check AWS credentials (AccessDenied while doing it)"),
        (client_error("ExpiredToken", status=400), "k", StorageUnavailable, "access denied to bucket 'fleet': check AWS credentials (ExpiredToken while doing it)"),
        (client_error("403", "HeadObject", 403), "k", StorageUnavailable, "access denied to bucket 'fleet': check AWS credentials (403 while doing it)"),
        (client_error("InternalError", status=500), "k", StorageError, "S3 error doing it in bucket 'fleet': InternalError: message for InternalError second line"),
        (client_error("SlowDown", status=503), "k", StorageError, "S3 error doing it in bucket 'fleet': SlowDown: message for SlowDown second line"),
        (NoCredentialsError(), None, StorageUnavailable, "access denied to bucket 'fleet': check AWS credentials (Unable to locate credentials)"),
        (EndpointConnectionError(endpoint_url="https://s3.amazonaws.com/fleet", error=ConnectionRefusedError(111, "Connection refused")), None, StorageUnavailable, "cannot reach S3 endpoint https://s3.amazonaws.com: Connection refused (doing it in bucket 'fleet')"),
        (ConnectTimeoutError(endpoint_url="https://s3.amazonaws.com/fleet"), None, StorageUnavailable, "cannot reach S3 endpoint https://s3.amazonaws.com: connection timed out after 5s (doing it in bucket 'fleet')"),
        (ReadTimeoutError(endpoint_url="https://s3.amazonaws.com/fleet"), None, StorageUnavailable, "cannot reach S3 endpoint https://s3.amazonaws.com: no response within 30s (doing it in bucket 'fleet')"),
        (ResponseStreamingError(error="Connection broken: IncompleteRead"), None, StorageUnavailable, "cannot reach S3 endpoint https://s3.amazonaws.com: An error occurred while reading from response stream: Connection broken: IncompleteRead (doing it in bucket 'fleet')"),
        (ParamValidationError(report="Invalid bucket name\nmore"), None, StorageError, "S3 error doing it in bucket 'fleet': Parameter validation failed: Invalid bucket name more"),
    ],
)  # fmt: skip
def test_translate_error(
    storage: S3Storage,
    exc: Exception,
    key: str | None,
    kind: type[StorageError],
    message: str,
) -> None:
    error = storage.translate_error(exc, key=key, action="doing it")
    assert type(error) is kind
    assert str(error) == message
    assert_one_line(error)


def test_errors_chain_the_botocore_exception(s3: S3Storage) -> None:
    with pytest.raises(NotFound) as info:
        s3.get_bytes("missing")
    assert isinstance(info.value.__cause__, ClientError)
