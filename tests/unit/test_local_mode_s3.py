"""Local mode with S3 (boto3 against a real local endpoint, moto's server): channels and checkpoint sync.

Run: .venv/bin/pytest tests/unit/test_local_mode_s3.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.jobs import QUICK, free_port, fresh_environment, make_job, moto_s3, s3_client, upload_folder

pytestmark = pytest.mark.slow

BUCKET = "tsa-local"


def run_local(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "local_mode/run.py", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600, env={**fresh_environment(), **env})


def test_channels_come_from_s3_and_checkpoints_sync_both_ways(tmp_path: Path) -> None:
    data = make_job(tmp_path / "data", QUICK, rows="train=64,validation=32,calibration=32") / "input/data"
    hyperparameters = tmp_path / "hp.json"
    hyperparameters.write_text((data.parents[1] / "input/config/hyperparameters.json").read_text())
    with moto_s3(BUCKET) as env:
        upload_folder(env, data, BUCKET, "data/")
        channels = [f"--channel={name}=s3://{BUCKET}/data/{name}/" for name in ("train", "validation", "calibration")]
        common = ["--hyperparameters", str(hyperparameters), *channels, "--checkpoint-s3-uri", f"s3://{BUCKET}/ckpt/"]
        first = run_local([*common, "--job-dir", str(tmp_path / "first")], env)
        assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
        assert "channel train: 4 object(s) from s3://tsa-local/data/train/" in first.stdout
        keys = {item["Key"] for item in s3_client(env).list_objects_v2(Bucket=BUCKET, Prefix="ckpt/")["Contents"]}
        assert {"ckpt/last.ckpt", "ckpt/best-model.safetensors"} <= keys
        # Another machine: a fresh job folder, the checkpoint from S3: the job resumes instead of training again.
        second = run_local([*common, "--job-dir", str(tmp_path / "second")], env)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert f"checkpoints: {len(keys)} file(s) from s3://{BUCKET}/ckpt/" in second.stdout
    assert "resuming from" in second.stdout and "METRIC step=" not in second.stdout


NO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": "",
                  "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_CONFIG_FILE": "/dev/null",
                  "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.mark.parametrize("fault", ["endpoint_down", "bucket_missing", "empty_prefix", "no_credentials",
                                   "checkpoint_bucket_missing"])
def test_an_unusable_s3_location_fails_within_a_minute_naming_the_uri(tmp_path: Path, fault: str) -> None:
    hyperparameters = tmp_path / "hp.json"
    hyperparameters.write_text(json.dumps(QUICK))
    with moto_s3(BUCKET) as env:
        uri = f"s3://{BUCKET}/data/train/"
        args = ["--hyperparameters", str(hyperparameters), "--job-dir", str(tmp_path / "job")]
        if fault == "endpoint_down":
            env = {**env, "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{free_port()}"}  # nothing listens there
        elif fault == "bucket_missing":
            uri = "s3://no-such-bucket/data/train/"
        elif fault == "no_credentials":
            env = {key: value for key, value in env.items() if not key.startswith("AWS_ACCESS")
                   and not key.startswith("AWS_SECRET")}
            env.update(NO_CREDENTIALS)
        elif fault == "checkpoint_bucket_missing":
            args += ["--synth", "--checkpoint-s3-uri", "s3://no-such-bucket/ckpt/"]
        if fault != "checkpoint_bucket_missing":
            args.append(f"--channel=train={uri}")
            uri_named = uri
        else:
            uri_named = "s3://no-such-bucket/ckpt/"
        started = time.monotonic()
        proc = run_local(args, env)
        seconds = time.monotonic() - started
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert seconds < 60
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("local mode: ") and uri_named in message and "Traceback" not in proc.stderr
    expected = {"endpoint_down": "S3 did not answer", "bucket_missing": "bucket 'no-such-bucket' does not exist",
                "empty_prefix": "no objects under this prefix", "no_credentials": "no AWS credentials",
                "checkpoint_bucket_missing": "bucket 'no-such-bucket' does not exist"}[fault]
    assert expected in message
