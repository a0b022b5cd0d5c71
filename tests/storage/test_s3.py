"""S3Storage specifics on in-process moto: object metadata, multipart parts, configuration."""

from __future__ import annotations

import io
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from overdrive.storage import (
    CACHE_CONTROL,
    CachePolicy,
    StorageError,
    StorageUnavailable,
    open_storage,
)
from overdrive.storage.s3 import DEFAULT_PART_SIZE, MIN_PART_SIZE, S3Storage

from .test_contract import FailingStream, leftovers, pattern

MiB = 1 << 20


def config(storage: S3Storage) -> Any:
    """The botocore client Config (its attributes are not in the stubs)."""
    return storage.client.meta.config


def head(s3: S3Storage, key: str) -> Any:
    return s3.client.head_object(Bucket=s3.bucket, Key=f"{s3.prefix}/{key}")


@pytest.mark.parametrize("policy", list(CachePolicy))
def test_put_bytes_metadata(s3: S3Storage, policy: CachePolicy) -> None:
    s3.put_bytes("metadata/timestamp.json", b"{}", cache=policy)
    s3.put_bytes("targets/ecu-a/fw.bin", b"\0", cache=policy)
    meta = head(s3, "metadata/timestamp.json")
    assert meta["CacheControl"] == CACHE_CONTROL[policy]
    assert meta["ContentType"] == "application/json"
    meta = head(s3, "targets/ecu-a/fw.bin")
    assert meta["CacheControl"] == CACHE_CONTROL[policy]
    assert meta["ContentType"] == "application/octet-stream"


@pytest.mark.parametrize("size", [10, 2 * MIN_PART_SIZE + 1])
@pytest.mark.parametrize("policy", list(CachePolicy))
def test_put_stream_metadata(s3: S3Storage, size: int, policy: CachePolicy) -> None:
    s3.put_stream("targets/bundle.json", io.BytesIO(pattern(size)), cache=policy)
    meta = head(s3, "targets/bundle.json")
    assert meta["CacheControl"] == CACHE_CONTROL[policy]
    assert meta["ContentType"] == "application/json"
    assert meta["ContentLength"] == size


def test_default_cache_policies(s3: S3Storage) -> None:
    s3.put_bytes("metadata/snapshot.json", b"{}")
    s3.put_stream("targets/a.bin", io.BytesIO(b"a"))
    assert head(s3, "metadata/snapshot.json")["CacheControl"] == CACHE_CONTROL[CachePolicy.METADATA]
    assert head(s3, "targets/a.bin")["CacheControl"] == CACHE_CONTROL[CachePolicy.IMMUTABLE]


def test_objects_live_under_the_prefix(s3: S3Storage) -> None:
    s3.put_bytes("metadata/1.root.json", b"{}")
    s3.client.put_object(Bucket=s3.bucket, Key="elsewhere/x", Body=b"x")
    s3.client.put_object(Bucket=s3.bucket, Key=f"{s3.prefix}/dir/", Body=b"")  # console folder
    raw = s3.client.list_objects_v2(Bucket=s3.bucket)["Contents"]
    assert sorted(o["Key"] for o in raw) == sorted(
        ["elsewhere/x", "fleet/prod/dir/", "fleet/prod/metadata/1.root.json"]
    )
    assert s3.list() == ["metadata/1.root.json"]
    assert s3.url == "s3://overdrive-contract/fleet/prod"


def test_empty_prefix(s3: S3Storage) -> None:
    storage = S3Storage(s3.bucket)
    storage.put_bytes("metadata/1.root.json", b"{}")
    assert (
        s3.client.get_object(Bucket=s3.bucket, Key="metadata/1.root.json")["Body"].read() == b"{}"
    )
    assert storage.list() == ["metadata/1.root.json"]
    assert storage.url == f"s3://{s3.bucket}"


def record_parts(s3: S3Storage) -> list[int]:
    """Sizes of the UploadPart bodies the client sends."""
    sizes: list[int] = []

    def before(params: dict[str, Any], **_: Any) -> None:
        sizes.append(len(params["Body"]))

    s3.client.meta.events.register("before-parameter-build.s3.UploadPart", before)
    return sizes


def test_multipart_parts_are_bounded(s3: S3Storage) -> None:
    """Every part is exactly part_size except the last: memory is bounded by one part."""
    sizes = record_parts(s3)
    data = pattern(3 * MIN_PART_SIZE + 777)
    s3.put_stream("big.bin", io.BytesIO(data))
    assert sizes == [MIN_PART_SIZE, MIN_PART_SIZE, MIN_PART_SIZE, 777]
    assert head(s3, "big.bin")["ETag"].endswith('-4"')  # a multipart object
    assert s3.get_bytes("big.bin") == data


def test_multipart_without_checksums(s3: S3Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    """With AWS_REQUEST_CHECKSUM_CALCULATION=when_required (for older MinIO/Ceph) no CRC32s."""
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    storage = S3Storage(s3.bucket, s3.prefix, part_size=MIN_PART_SIZE)
    sent: list[dict[str, Any]] = []
    for operation in ("CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"):
        storage.client.meta.events.register(
            f"before-parameter-build.s3.{operation}", lambda params, **_: sent.append(params)
        )
    data = pattern(MIN_PART_SIZE + 1)
    storage.put_stream("fw.bin", io.BytesIO(data))
    assert len(sent) == 4
    assert not any("ChecksumAlgorithm" in p for p in sent)
    assert s3.get_bytes("fw.bin") == data


def test_multipart_sends_crc32_part_checksums(s3: S3Storage) -> None:
    """By default, like boto3's upload_fileobj: CRC32 per part, echoed in the completion."""
    completed: list[Any] = []
    s3.client.meta.events.register(
        "before-parameter-build.s3.CompleteMultipartUpload",
        lambda params, **_: completed.extend(params["MultipartUpload"]["Parts"]),
    )
    s3.put_stream("fw.bin", io.BytesIO(pattern(MIN_PART_SIZE + 1)))
    assert [p["PartNumber"] for p in completed] == [1, 2]
    assert all(p.get("ChecksumCRC32") for p in completed)


def test_small_stream_is_one_put(s3: S3Storage) -> None:
    sizes = record_parts(s3)
    s3.put_stream("small.bin", io.BytesIO(pattern(MIN_PART_SIZE - 1)))
    assert sizes == []
    assert "-" not in head(s3, "small.bin")["ETag"]


def test_failed_upload_part_aborts(s3: S3Storage) -> None:
    """A request failing mid-upload (not the source) also aborts and keeps the old object."""
    s3.put_bytes("fw.bin", b"previous")
    calls = 0

    def fail_second(**_: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ClientError(
                {"Error": {"Code": "InternalError", "Message": "We encountered an internal error"}},
                "UploadPart",
            )

    s3.client.meta.events.register("before-call.s3.UploadPart", fail_second)
    with pytest.raises(StorageError, match=r"S3 error writing 'fw.bin' in bucket .*InternalError"):
        s3.put_stream("fw.bin", io.BytesIO(pattern(3 * MIN_PART_SIZE)))
    assert s3.get_bytes("fw.bin") == b"previous"
    assert leftovers(s3) == []


def test_keyboard_interrupt_aborts(s3: S3Storage) -> None:
    with pytest.raises(KeyboardInterrupt):
        s3.put_stream("fw.bin", FailingStream(MIN_PART_SIZE + 1, KeyboardInterrupt()))  # type: ignore[arg-type]
    assert leftovers(s3) == []


def test_part_size_knob(aws_env: None) -> None:
    assert MiB * 8 == DEFAULT_PART_SIZE
    with pytest.raises(ValueError, match="at least"):
        S3Storage("bucket", part_size=MIN_PART_SIZE - 1, client=boto3.client("s3", "us-east-1"))


@pytest.mark.parametrize("prefix", ["..", "a/../b", "a//b"])
def test_invalid_prefix(aws_env: None, prefix: str) -> None:
    with pytest.raises(StorageError, match="invalid S3 key prefix"):
        S3Storage("bucket", prefix)


# -- configuration ---------------------------------------------------------------------------------


def test_aws_endpoint_url_is_honoured_with_path_style(
    aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.internal:9000")
    storage = S3Storage("fleet", "prod")
    assert storage.endpoint_url == "http://minio.internal:9000"
    assert storage.endpoint == "http://minio.internal:9000"
    assert config(storage).s3 == {"addressing_style": "path"}
    # The service-specific variable wins, as everywhere in the AWS tooling.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://ceph.internal:7480")
    assert S3Storage("fleet").endpoint_url == "http://ceph.internal:7480"


def test_plain_aws_uses_default_addressing(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    storage = S3Storage("fleet", "prod")
    assert storage.endpoint_url is None
    assert storage.endpoint == "https://s3.eu-central-1.amazonaws.com"
    assert (config(storage).s3 or {}).get("addressing_style") != "path"


def test_broken_aws_config(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(StorageUnavailable) as info:
        S3Storage("fleet")
    assert str(info.value) == (
        "cannot set up S3 access to bucket 'fleet':"
        " The config profile (no-such-profile) could not be found"
    )


def test_timeouts_and_retries(aws_env: None) -> None:
    cfg = config(S3Storage("fleet"))
    assert cfg.connect_timeout == 5
    assert cfg.read_timeout == 30
    assert cfg.retries == {"total_max_attempts": 3, "mode": "standard"}


def test_retry_env_overrides(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "7")
    cfg = config(S3Storage("fleet"))
    assert (cfg.retries or {}).get("total_max_attempts") == 7


def test_open_storage_builds_s3(aws_env: None) -> None:
    storage = open_storage("s3://fleet-bucket/some/prefix/")
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix, storage.url) == (
        "fleet-bucket",
        "some/prefix",
        "s3://fleet-bucket/some/prefix",
    )


# -- public URLs ----------------------------------------------------------------------------------


def test_public_url_aws(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    storage = S3Storage("fleet", "prod")
    assert (
        storage.public_url("targets/ecu a/fw+1.bin")
        == "https://fleet.s3.eu-west-1.amazonaws.com/prod/targets/ecu%20a/fw%2B1.bin"
    )


def test_public_url_endpoint(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.internal:9000/")
    assert (
        S3Storage("fleet", "prod").public_url("metadata/1.root.json")
        == "http://minio.internal:9000/fleet/prod/metadata/1.root.json"
    )
    assert S3Storage("fleet").public_url("m.json") == "http://minio.internal:9000/fleet/m.json"


def test_public_url_base(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = S3Storage("fleet", "prod", public_base_url="https://cdn.example.com/ota/")
    assert (
        storage.public_url("metadata/1.root.json")
        == "https://cdn.example.com/ota/metadata/1.root.json"
    )
    monkeypatch.setenv("OVERDRIVE_PUBLIC_BASE_URL", "https://cdn2.example.com")
    assert S3Storage("fleet", "prod").public_url("a b") == "https://cdn2.example.com/a%20b"
    # An explicit argument beats the environment.
    assert storage.public_url("x") == "https://cdn.example.com/ota/x"
