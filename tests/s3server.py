"""Pytest fixtures for a real S3 endpoint over HTTP: moto's threaded server on loopback.

Register them once for the whole suite from the root ``tests/conftest.py``::

    pytest_plugins = ["tests.s3server"]

Then a test asks for ``s3_env`` to get a fresh, empty bucket on the server and an environment
(``AWS_ENDPOINT_URL``, dummy credentials, region) under which ``open_storage(s3_env.url)``, boto3
and any subprocess that inherits the environment talk to it::

    def test_publish(s3_env):
        storage = open_storage(s3_env.url)
        ...

``aws_env`` is the same clean environment without an endpoint, for ``moto.mock_aws()`` tests.
``moto_server`` is session-scoped: one server per pytest process, so with pytest-xdist every
worker has its own (on a free port). Unlike ``moto.mock_aws()`` this is real HTTP, so URLs from
``public_url()`` can be fetched with urllib, and other processes can use the endpoint too.

Do not use ``moto.mock_aws()`` inside a test that uses these fixtures: it shares moto's
in-process backends with the threaded server and resets them (dropping the test's bucket).
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "S3Env",
    "aws_env",
    "moto_enforce_auth",
    "moto_server",
    "s3_env",
    "set_aws_test_env",
]

TEST_REGION = "us-east-1"
TEST_CREDENTIALS = "testing"

#: Environment that could point boto3 somewhere other than moto; cleared by set_aws_test_env.
_AWS_VARS_TO_CLEAR = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
    "OVERDRIVE_PUBLIC_BASE_URL",
)


@dataclass(frozen=True)
class S3Env:
    """A fresh bucket on the test S3 server; the environment points boto3 at it."""

    endpoint: str  # http://127.0.0.1:<port>
    bucket: str
    prefix: str = "overdrive"

    @property
    def url(self) -> str:
        """The storage URL for :func:`overdrive.storage.open_storage`."""
        return f"s3://{self.bucket}/{self.prefix}"

    def client(self) -> S3Client:
        """A plain boto3 client for the server (to inspect objects behind the backend's back)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=TEST_REGION,
            aws_access_key_id=TEST_CREDENTIALS,
            aws_secret_access_key=TEST_CREDENTIALS,
        )


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """Start moto's S3 (and every other service) on 127.0.0.1, a free port; yield its URL."""
    from moto.server import ThreadedMotoServer

    # verbose=False only silences the banner; werkzeug still logs every request.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()  # the port the OS picked for port=0
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def set_aws_test_env(monkeypatch: pytest.MonkeyPatch, endpoint: str | None = None) -> None:
    """Dummy credentials and region, ``AWS_ENDPOINT_URL=endpoint`` (unset for None), and
    nothing from the developer's environment or ~/.aws that could reach a real account."""
    for var in _AWS_VARS_TO_CLEAR:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_CREDENTIALS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_CREDENTIALS)
    monkeypatch.setenv("AWS_DEFAULT_REGION", TEST_REGION)
    if endpoint is None:
        monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The AWS environment for ``moto.mock_aws()`` (in-process): dummy keys, no endpoint URL."""
    set_aws_test_env(monkeypatch)


@pytest.fixture
def s3_env(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Env]:
    """A new, uniquely named bucket on the test server, and the environment to reach it.

    The bucket has a public-read policy (anonymous GETs of objects succeed), so the URLs from
    ``public_url()`` can be fetched without credentials, as a vehicle does.
    """
    set_aws_test_env(monkeypatch, moto_server)
    env = S3Env(endpoint=moto_server, bucket=f"test-{uuid.uuid4().hex[:16]}")
    client = env.client()
    client.create_bucket(Bucket=env.bucket)
    client.put_bucket_policy(Bucket=env.bucket, Policy=_public_read_policy(env.bucket))
    yield env
    # Best effort: keep the session-long server small; a test may have broken auth or the bucket.
    with suppress(Exception):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=env.bucket):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=env.bucket, Key=obj["Key"])
        uploads = client.list_multipart_uploads(Bucket=env.bucket).get("Uploads", [])
        for upload in uploads:
            client.abort_multipart_upload(
                Bucket=env.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        client.delete_bucket(Bucket=env.bucket)


def _public_read_policy(bucket: str) -> str:
    """Let anyone GET objects, as a bucket serving vehicles directly (no CDN) is set up."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "PublicRead",
                    "Effect": "Allow",
                    "Principal": "*",
                    "Action": "s3:GetObject",
                    "Resource": f"arn:aws:s3:::{bucket}/*",
                }
            ],
        }
    )


def _reset_auth(endpoint: str, count: str) -> None:
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=count.encode(),
        method="POST",
        headers={"Content-Type": "text/plain"},  # not a form: moto reads the raw body
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


@contextmanager
def moto_enforce_auth(endpoint: str) -> Iterator[None]:
    """Make the moto server check credentials (against its IAM) until the block ends.

    By default moto accepts any credentials. Inside this block the dummy ``testing`` key is
    unknown to moto's IAM, so every request fails with ``InvalidAccessKeyId`` (HTTP 403), just as
    real S3 answers a wrong access key.
    """
    _reset_auth(endpoint, "0")
    try:
        yield
    finally:
        _reset_auth(endpoint, "inf")
