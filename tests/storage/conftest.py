"""Fixtures for the storage tests: every backend, S3 on in-process moto, a clean AWS env."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from overdrive.storage import LocalStorage, Storage
from overdrive.storage.s3 import MIN_PART_SIZE, S3Storage

# aws_env, moto_server and s3_env come from tests/s3server.py (registered by the root conftest).

BUCKET = "overdrive-contract"
PREFIX = "fleet/prod"


@pytest.fixture(scope="session")
def boto_session() -> boto3.session.Session:
    """One boto3 session for the in-process tests: it caches the service models, which makes
    creating a client per test several times cheaper (S3Storage's own client set-up from the
    environment is covered by test_s3.py and the HTTP tests)."""
    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )


@pytest.fixture
def s3(aws_env: None, boto_session: boto3.session.Session) -> Iterator[S3Storage]:
    """An S3Storage on an in-process moto bucket, with the smallest part size S3 allows."""
    with mock_aws():
        client = boto_session.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield S3Storage(BUCKET, PREFIX, client=client, part_size=MIN_PART_SIZE)


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """Each storage backend in turn: the contract tests must pass on all of them."""
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    storage: S3Storage = request.getfixturevalue("s3")
    return storage
