"""`tsa launch`: the CreateTrainingJob request, captured offline from the real SDK (no AWS).

Run: .venv/bin/pytest tests/unit/test_launch.py
The request is recorded from a real `sagemaker` v2 Estimator and botocore client; botocore's
`before-call` hook answers instead of the network, so nothing leaves the machine.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import load_example
from tests.jobs import TINY, dry_run_request, expected_here, fresh_environment, make_job, run_job
from tsa.config import JobConfig
from tsa.launch import metric_definitions

ENV = {"AWS_DEFAULT_REGION": "eu-west-1", "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)


@pytest.mark.parametrize("example", ["eu_single", "na_dual"])
def test_hyperparameters_go_out_in_the_wire_form_the_job_decodes(aws_env: None, example: str) -> None:
    request = dry_run_request(example)
    wire = request["HyperParameters"]
    assert all(isinstance(v, str) for v in wire.values())
    assert wire["use_amp"] == "True" and wire["lr"] == "5e-05"  # the generic Estimator's str(value)
    assert JobConfig.from_hyperparameters(wire) == JobConfig.from_hyperparameters(load_example(example))


def test_spot_sets_max_wait_and_checkpoints(aws_env: None) -> None:
    request = dry_run_request("na_dual", spot=True, max_wait=500_000, checkpoint_s3_uri="s3://bucket/ckpt/",
                          instance_count=2, sharded_channels=["train"])
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 432_000, "MaxWaitTimeInSeconds": 500_000}
    assert request["CheckpointConfig"] == {"S3Uri": "s3://bucket/ckpt/"}
    assert request["ResourceConfig"]["InstanceCount"] == 2
    distributions = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3DataDistributionType"]
                     for c in request["InputDataConfig"]}
    assert distributions == {"train": "ShardedByS3Key", "validation": "FullyReplicated"}
    assert request["AlgorithmSpecification"]["TrainingImage"].endswith("tsa-training:1")


def test_metric_regexes_match_real_job_log_lines(aws_env: None, tmp_path: Path) -> None:
    sent = dry_run_request("eu_single")["AlgorithmSpecification"]["MetricDefinitions"]
    assert sent == metric_definitions()
    proc = run_job(make_job(tmp_path / "job", TINY))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for definition in sent:
        if not expected_here(definition):
            assert not re.findall(definition["Regex"], proc.stdout), definition
            continue
        values = re.findall(definition["Regex"], proc.stdout)
        assert values, definition
        assert all(math.isfinite(float(v)) for v in values), (definition, values)


def test_cli_dry_run_prints_the_request(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "tsa", "launch", "--image-uri", "img:1", "--role", "arn:aws:iam::1:role/r",
               "--hyperparameters", "hyperparameters/smoke.json", "--channel", "train=s3://b/t/",
               "--channel", "validation=s3://b/v/", "--output-path", "s3://b/o/", "--dry-run"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**ENV, "PATH": ""},
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-2000:]
    request = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert request["HyperParameters"]["test_name"] == "smoke"


def test_spot_without_checkpoint_uri_is_refused() -> None:
    command = [sys.executable, "-m", "tsa", "launch", "--image-uri", "img:1", "--role", "r", "--hyperparameters",
               "hyperparameters/smoke.json", "--channel", "train=s3://b/t/", "--spot", "--dry-run"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 2 and "--checkpoint-s3-uri" in proc.stderr


def test_cli_dry_run_validates_a_config_file_and_sends_it_as_written(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train/more.json").write_text(json.dumps({"weight_decay": "0.01"}))
    hp = {**load_example("smoke"), "config_file": "train/more.json"}
    (tmp_path / "hp.json").write_text(json.dumps(hp))
    command = [sys.executable, "-m", "tsa", "launch", "--image-uri", "img:1", "--role", "arn:aws:iam::1:role/r",
               "--hyperparameters", str(tmp_path / "hp.json"), "--channel", "train=s3://b/t/", "--output-path",
               "s3://b/o/", "--dry-run"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**ENV, "PATH": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    sent = json.loads(proc.stdout[proc.stdout.index("{"):])["HyperParameters"]
    assert sent["config_file"] == "train/more.json" and "weight_decay" not in sent  # the job merges it

    (tmp_path / "train/more.json").write_text(json.dumps({"weight_decay": "lots"}))
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**ENV, "PATH": ""})
    assert proc.returncode == 2 and "'weight_decay' = 'lots'" in proc.stderr


def test_tune_sends_a_tuning_job_on_the_selected_models_auc(aws_env: None, tmp_path: Path) -> None:
    """`tsa launch --tune` (dry run): the CreateHyperParameterTuningJob request the SDK would send."""
    hp_file = tmp_path / "hp.json"
    hp_file.write_text(json.dumps(load_example("eu_single")))
    image = "123.dkr.ecr.eu-west-1.amazonaws.com/t"
    proc = subprocess.run([sys.executable, "-m", "tsa", "launch", "--image-uri", image,
                           "--role", "arn:aws:iam::123456789012:role/S", "--hyperparameters", str(hp_file),
                           "--channel", "train=s3://b/train/", "--channel", "validation=s3://b/vali/",
                           "--output-path", "s3://b/out/", "--tune", "hyperparameters/tuning_ranges.json",
                           "--dry-run"], capture_output=True, text=True, timeout=120,
                          env={**fresh_environment(), **ENV})
    assert proc.returncode == 0, proc.stderr[-2000:]
    request = json.loads(proc.stdout[proc.stdout.index("{\n"):])  # after the SDK's own notices
    config = request["HyperParameterTuningJobConfig"]
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "validation:best_auc"}
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 12, "MaxParallelTrainingJobs": 2}
    ranges = config["ParameterRanges"]
    assert {r["Name"]: r["Values"] for r in ranges["CategoricalParameterRanges"]} == {
        "loss": ["CrossEntropyLoss", "FocalLoss"]}
    assert {r["Name"] for r in ranges["ContinuousParameterRanges"]} == {"scheduler_maxlr", "dropout"}
    definition = request["TrainingJobDefinition"]
    assert definition["AlgorithmSpecification"]["MetricDefinitions"] == metric_definitions()
    assert "scheduler_maxlr" not in definition["StaticHyperParameters"]  # tuned, not fixed


def test_a_range_the_job_would_refuse_is_refused_before_sending(aws_env: None, tmp_path: Path) -> None:
    from tsa.errors import JobError
    from tsa.launch import read_tuning_file

    ranges = tmp_path / "ranges.json"
    ranges.write_text(json.dumps({"ranges": {"dropout": {"type": "continuous", "min": 0.1, "max": 1.5}}}))
    with pytest.raises(JobError, match=r"range 'dropout' reaches 1.5, which the job refuses: hyperparameter "
                                       r"'dropout' = 1.5"):
        read_tuning_file(ranges, load_example("eu_single"))


def test_the_gpu_fields_of_the_step_line_match_their_regexes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU part of the METRIC step line (written on a GPU only) is what the metric definitions read."""
    from tsa.training.callbacks import gpu_fields

    monkeypatch.setattr(torch.cuda, "utilization", lambda device: 87)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 3 * 2**30)
    line = f"METRIC step=5; epoch=0; step_loss=0.5; samples_per_second=9.0;{gpu_fields(torch.device('cuda', 0))}"
    found = {d["Name"]: re.findall(d["Regex"], line) for d in metric_definitions() if d["Name"].startswith("gpu:")}
    assert found == {"gpu:utilization": ["87"], "gpu:memory_gib": ["3.00"]}
    assert gpu_fields(torch.device("cpu")) == ""
