"""End to end over real HTTP: moto's threaded server, the environment from the s3_env fixture."""

from __future__ import annotations

import io
import urllib.request

import pytest

from overdrive.storage import CACHE_CONTROL, CachePolicy, NotFound, StorageUnavailable, open_storage
from overdrive.storage.s3 import MIN_PART_SIZE, S3Storage
from tests.s3server import S3Env, moto_enforce_auth

from .test_contract import pattern


def test_round_trip(s3_env: S3Env) -> None:
    storage = open_storage(s3_env.url)
    assert isinstance(storage, S3Storage)
    assert storage.endpoint_url == s3_env.endpoint
    storage.check()

    storage.put_bytes("metadata/1.root.json", b'{"signed": {}}')
    storage.part_size = MIN_PART_SIZE
    big = pattern(2 * MIN_PART_SIZE + 99)
    storage.put_stream("targets/ecu-a/fw.bin", io.BytesIO(big))

    assert storage.get_bytes("metadata/1.root.json") == b'{"signed": {}}'
    assert storage.get_bytes("targets/ecu-a/fw.bin") == big
    assert (
        b"".join(storage.open_range("targets/ecu-a/fw.bin", 100, 3_000_000)) == big[100:3_000_000]
    )
    assert storage.list() == ["metadata/1.root.json", "targets/ecu-a/fw.bin"]
    assert storage.size("targets/ecu-a/fw.bin") == len(big)

    # The objects really are at bucket/prefix/key.
    raw = s3_env.client().get_object(Bucket=s3_env.bucket, Key="overdrive/metadata/1.root.json")
    assert raw["Body"].read() == b'{"signed": {}}'

    storage.delete("metadata/1.root.json")
    assert storage.list("metadata/") == []
    with pytest.raises(NotFound):
        storage.get_bytes("metadata/1.root.json")
    uploads = s3_env.client().list_multipart_uploads(Bucket=s3_env.bucket)
    assert uploads.get("Uploads", []) == []


@pytest.mark.parametrize("policy", [CachePolicy.METADATA, CachePolicy.IMMUTABLE])
def test_public_url_serves_the_object(s3_env: S3Env, policy: CachePolicy) -> None:
    """What a vehicle does: a plain, unsigned HTTP GET of public_url(key)."""
    storage = open_storage(s3_env.url)
    storage.put_bytes("targets/ecu a/fw 1.bin", b"\x00firmware\xff", cache=policy)
    url = storage.public_url("targets/ecu a/fw 1.bin")
    assert url == f"{s3_env.endpoint}/{s3_env.bucket}/overdrive/targets/ecu%20a/fw%201.bin"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"\x00firmware\xff"
        assert response.headers["Cache-Control"] == CACHE_CONTROL[policy]
        assert response.headers["Content-Type"] == "application/octet-stream"


def test_missing_bucket(s3_env: S3Env) -> None:
    storage = open_storage(f"s3://not-{s3_env.bucket}/x")
    with pytest.raises(StorageUnavailable) as info:
        storage.check()
    assert str(info.value) == f"bucket 'not-{s3_env.bucket}' does not exist at {s3_env.endpoint}"


def test_bad_credentials(s3_env: S3Env) -> None:
    storage = open_storage(s3_env.url)
    storage.put_bytes("metadata/1.root.json", b"{}")
    with moto_enforce_auth(s3_env.endpoint), pytest.raises(StorageUnavailable) as info:
        storage.get_bytes("metadata/1.root.json")
    assert str(info.value) == (
        f"access denied to bucket '{s3_env.bucket}': check AWS credentials"
        " (InvalidAccessKeyId while reading 'metadata/1.root.json')"
    )
    assert storage.get_bytes("metadata/1.root.json") == b"{}"  # auth is off again
