"""Local mode with S3 (boto3 against a real local endpoint, moto's server): channels and checkpoint sync.

Run: .venv/bin/pytest tests/unit/test_local_mode_s3.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.jobs import QUICK, fresh_environment, make_job, moto_s3, s3_client, upload_folder

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
