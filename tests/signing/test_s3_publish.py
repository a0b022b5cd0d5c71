"""The signing flow against S3 over real HTTP (moto's threaded server), and storage errors."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Cli, Workspace, make_image, mutate
from tests.s3server import S3Env, moto_enforce_auth
from tests.signing.test_repository import assert_one_error


def test_init_release_verify_over_s3(
    workspace: Workspace, s3_env: S3Env, cli: Cli, tmp_path: Path
) -> None:
    args = ["--storage", s3_env.url, "--keys", str(workspace.keys)]
    assert cli("repo", "init", *args).code == 0
    v1 = make_image(tmp_path / "v1", 100_000)
    v2 = mutate(v1, tmp_path / "v2")
    for image, version, extra in ((v1, "1.0", []), (v2, "1.1", ["--delta-from", "1.0"])):
        result = cli(
            "release",
            "add",
            image,
            "--hardware-id",
            "ecu",
            "--version",
            version,
            *args,
            "--quiet",
            *extra,
        )
        assert result.code == 0, result.stderr
    client = s3_env.client()
    head = client.head_object(Bucket=s3_env.bucket, Key=f"{s3_env.prefix}/metadata/timestamp.json")
    assert "max-age=60" in head["CacheControl"]
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_env.bucket)["Contents"]]
    bundle_key = next(k for k in keys if k.endswith(".full.bundle"))
    assert "immutable" in client.head_object(Bucket=s3_env.bucket, Key=bundle_key)["CacheControl"]
    trusted = tmp_path / "root.json"
    trusted.write_bytes(
        client.get_object(Bucket=s3_env.bucket, Key=f"{s3_env.prefix}/metadata/1.root.json")[
            "Body"
        ].read()
    )
    # Verification goes through the public HTTP URLs, as a vehicle's would.
    verify = cli("repo", "verify", "--storage", s3_env.url, "--root", trusted)
    assert verify.code == 0, verify.stderr
    assert "3 target(s) verified" in verify.stdout


def test_missing_bucket_and_bad_credentials(workspace: Workspace, s3_env: S3Env, cli: Cli) -> None:
    missing = cli(
        "repo", "init", "--storage", "s3://no-such-bucket-overdrive/x", "--keys", workspace.keys
    )
    assert_one_error(missing, "no-such-bucket-overdrive", "does not exist")
    args = ["--storage", s3_env.url, "--keys", str(workspace.keys)]
    assert cli("repo", "init", *args).code == 0
    with moto_enforce_auth(s3_env.endpoint):
        denied = cli("repo", "status", *args)
    assert_one_error(denied, "access denied")


def test_unreachable_endpoint(workspace: Workspace, cli: Cli, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    result = cli("repo", "status", "--storage", "s3://bucket/x")
    assert_one_error(result, "cannot reach")
