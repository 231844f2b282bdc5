"""S3 for local mode, with boto3: channels downloaded as SageMaker's File mode does, checkpoints synced.

boto3's own configuration applies: `AWS_ENDPOINT_URL_S3` (or `AWS_ENDPOINT_URL`) for a local S3
endpoint such as a moto server, `AWS_PROFILE`, `AWS_DEFAULT_REGION`, the usual credentials.
`sync_down`/`sync_up` copy a checkpoint folder as SageMaker does with `checkpoint_s3_uri` (down
before the job starts, up when it ends or stops: SageMaker also uploads while it runs), so a
spot interruption and its resume can be rehearsed on one machine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

# Every S3 call is bounded: 5 s to connect, 20 s to read, 3 attempts (a dead endpoint fails in about 30 s).
CONNECT_TIMEOUT_S, READ_TIMEOUT_S, ATTEMPTS = 5, 20, 3


class S3Error(Exception):
    """An S3 location that cannot be used: the message names the URI, the cause and the fix."""


def split_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix/` -> (`bucket`, `some/prefix/`)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{uri!r} is not an s3://bucket/prefix URI")
    prefix = parsed.path.lstrip("/")
    return parsed.netloc, prefix if not prefix or prefix.endswith("/") else prefix + "/"


def client() -> Any:
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                    retries={"max_attempts": ATTEMPTS, "mode": "standard"})
    return boto3.client("s3", config=config)


@contextlib.contextmanager
def explained(uri: str, what: str) -> Iterator[None]:
    """botocore's errors as an `S3Error` naming `what` (e.g. "channel train") and the URI."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    try:
        yield
    except NoCredentialsError as exc:
        raise S3Error(f"{what} {uri}: no AWS credentials ({exc}): set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
                      "AWS_PROFILE") from exc
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "?"), error.get("Message", "")
        if code == "NoSuchBucket":
            raise S3Error(f"{what} {uri}: bucket '{split_uri(uri)[0]}' does not exist: create it or fix the URI") \
                from exc
        raise S3Error(f"{what} {uri}: S3 answered {code} ({message}): check the URI and the credentials' "
                      "permissions") from exc
    except (ConnectionClosedError, EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as exc:
        raise S3Error(f"{what} {uri}: S3 did not answer ({exc}) after {ATTEMPTS} attempts of at most "
                      f"{CONNECT_TIMEOUT_S + READ_TIMEOUT_S} s: check AWS_ENDPOINT_URL_S3 and the network") from exc
    except BotoCoreError as exc:  # the AWS configuration itself (a missing profile, a bad region, ...)
        raise S3Error(f"{what} {uri}: {exc}: check the AWS configuration (AWS_PROFILE, AWS_DEFAULT_REGION, "
                      "~/.aws)") from exc


def _objects(s3: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []) if not item["Key"].endswith("/"))
    return keys


def sync_down(uri: str, folder: Path, what: str = "checkpoints from") -> int:
    """Every object under `uri` into `folder`, keeping the relative paths; returns how many."""
    with explained(uri, what):
        s3, (bucket, prefix) = client(), split_uri(uri)
        keys = _objects(s3, bucket, prefix)
        for key in keys:
            target = folder / key[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, key, str(target))
    return len(keys)


def sync_up(folder: Path, uri: str) -> int:
    """Every file under `folder` to `uri` (multipart above boto3's threshold); returns how many."""
    with explained(uri, "checkpoints to"):
        s3, (bucket, prefix) = client(), split_uri(uri)
        files = sorted(path for path in folder.rglob("*") if path.is_file() and not path.name.endswith(".tmp"))
        for path in files:
            s3.upload_file(str(path), bucket, prefix + str(path.relative_to(folder)))
    return len(files)
