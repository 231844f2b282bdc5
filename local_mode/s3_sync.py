"""S3 for local mode, with boto3: channels downloaded as SageMaker's File mode does, checkpoints synced.

boto3's own configuration applies: `AWS_ENDPOINT_URL_S3` (or `AWS_ENDPOINT_URL`) for a local S3
endpoint such as a moto server, `AWS_PROFILE`, `AWS_DEFAULT_REGION`, the usual credentials.
`sync_down`/`sync_up` copy a checkpoint folder as SageMaker does with `checkpoint_s3_uri` (down
before the job starts, up when it ends or stops: SageMaker also uploads while it runs), so a
spot interruption and its resume can be rehearsed on one machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse


def split_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix/` -> (`bucket`, `some/prefix/`)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{uri!r} is not an s3://bucket/prefix URI")
    prefix = parsed.path.lstrip("/")
    return parsed.netloc, prefix if not prefix or prefix.endswith("/") else prefix + "/"


def client() -> Any:
    import boto3

    return boto3.client("s3")


def _objects(s3: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []) if not item["Key"].endswith("/"))
    return keys


def sync_down(uri: str, folder: Path) -> int:
    """Every object under `uri` into `folder`, keeping the relative paths; returns how many."""
    s3, (bucket, prefix) = client(), split_uri(uri)
    keys = _objects(s3, bucket, prefix)
    for key in keys:
        target = folder / key[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(target))
    return len(keys)


def sync_up(folder: Path, uri: str) -> int:
    """Every file under `folder` to `uri` (multipart above boto3's threshold); returns how many."""
    s3, (bucket, prefix) = client(), split_uri(uri)
    files = sorted(path for path in folder.rglob("*") if path.is_file() and not path.name.endswith(".tmp"))
    for path in files:
        s3.upload_file(str(path), bucket, prefix + str(path.relative_to(folder)))
    return len(files)
