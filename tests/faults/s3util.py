"""S3 helpers for the fault tests."""

from __future__ import annotations

from pathlib import Path

from tests.s3server import S3Env


def upload_tree(s3: S3Env, local: Path) -> None:
    """Copy a local repository into the test bucket under the same keys, as a publish to S3
    would have stored it (much faster than publishing it again)."""
    client = s3.client()
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        key = f"{s3.prefix}/{path.relative_to(local).as_posix()}"
        client.put_object(Bucket=s3.bucket, Key=key, Body=path.read_bytes())
