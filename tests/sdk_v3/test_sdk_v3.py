"""SDK v3 (`sagemaker>=3`, `ModelTrainer`): `tsa launch`'s request offline, and local-container jobs of the image.

Run: make test-sdk-v3 (offline request) and make test-container (the `container` cases), both in
`.venv-v3`: SDK v3 and v2 cannot share one environment.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import load_example
from tests.docs import python_block
from tests.jobs import QUICK, USER_SCRIPT, dry_run_request, make_job
from tsa.config import JobConfig
from tsa.contract import metric_definitions
from tsa.launch import sdk_major_version

IMAGE = os.environ.get("TSA_IMAGE", "tsa-training:local")
AWS = {"AWS_DEFAULT_REGION": "eu-west-1", "AWS_EC2_METADATA_DISABLED": "true",
       "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}  # a dead port: any request that escaped would fail


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert sdk_major_version() >= 3, "run these in .venv-v3 (make test-sdk-v3)"
    for key, value in AWS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "true")  # the dry run itself turns it off


@pytest.mark.parametrize("example", ["eu_single", "na_dual"])
def test_v3_request_carries_the_job_the_container_decodes(example: str) -> None:
    request = dry_run_request(example)
    wire = request["HyperParameters"]
    assert all(isinstance(v, str) for v in wire.values()) and wire["use_amp"] == "true"  # v3's JSON encoding
    assert JobConfig.from_hyperparameters(wire) == JobConfig.from_hyperparameters(load_example(example))
    assert request["AlgorithmSpecification"]["MetricDefinitions"] == metric_definitions()
    assert "ContainerEntrypoint" not in request["AlgorithmSpecification"]  # the image's own `train`


def test_v3_spot_sharding_and_checkpoints() -> None:
    request = dry_run_request("na_dual", spot=True, max_wait=500_000, checkpoint_s3_uri="s3://bucket/ckpt/",
                          instance_count=2, sharded_channels=["train"])
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 432_000, "MaxWaitTimeInSeconds": 500_000}
    assert request["CheckpointConfig"]["S3Uri"] == "s3://bucket/ckpt/"
    assert request["ResourceConfig"]["InstanceCount"] == 2
    distribution = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3DataDistributionType"]
                    for c in request["InputDataConfig"]}
    assert distribution == {"train": "ShardedByS3Key", "validation": "FullyReplicated"}


def test_v3_model_builder_block_deploys_the_archive_on_the_pytorch_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/serving.md's v3 block runs (its `build` and `deploy` record their calls): the names exist, the pair
    resolves to the PyTorch inference image, and that first-party image with no model object passes the archive
    through as it is (no model server to choose, nothing repacked)."""
    from sagemaker.serve import ModelBuilder
    from sagemaker.serve.validations.check_image_uri import is_1p_image_uri

    calls: list[tuple[str, Any, dict[str, Any]]] = []
    monkeypatch.setattr(ModelBuilder, "build", lambda self, **kwargs: calls.append(("build", self, kwargs)))
    monkeypatch.setattr(ModelBuilder, "deploy", lambda self, **kwargs: calls.append(("deploy", self, kwargs)))
    exec(python_block("serving.md", "ModelBuilder("), {})
    assert [(name, builder) for name, builder, _ in calls] == [("build", calls[0][1]), ("deploy", calls[0][1])]
    builder = calls[0][1]
    assert builder.image_uri == "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-inference:2.6.0-cpu-py312"
    assert is_1p_image_uri(builder.image_uri) and builder.model is None and builder.inference_spec is None
    assert builder.s3_model_data_url.endswith("/model.tar.gz")
    assert builder.env_vars == {"SAGEMAKER_PROGRAM": "inference.py"}


def local_trainer(tmp_path: Path, hyperparameters: dict[str, Any], source_code: Any = None) -> Any:
    from sagemaker.core.local.local_session import LocalSession
    from sagemaker.train import ModelTrainer
    from sagemaker.train.configs import Compute
    from sagemaker.train.model_trainer import Mode

    os.environ["AWS_ACCESS_KEY_ID"] = os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
    (tmp_path / "root").mkdir()
    return ModelTrainer(training_image=IMAGE, role="arn:aws:iam::000000000000:role/LocalMode",
                        training_mode=Mode.LOCAL_CONTAINER,
                        compute=Compute(instance_type="local_cpu", instance_count=1),
                        hyperparameters=hyperparameters, source_code=source_code, sagemaker_session=LocalSession(),
                        local_container_root=str(tmp_path / "root"), base_job_name="tsa-v3")


def train_locally(tmp_path: Path, trainer: Any) -> dict[str, Any]:
    from sagemaker.train.configs import InputData

    data = make_job(tmp_path / "data", QUICK, rows="train=64,validation=32,calibration=32") / "input/data"
    trainer.train(input_data_config=[InputData(channel_name=name, data_source=str(data / name))
                                     for name in ("train", "validation", "calibration")], wait=True)
    return json.loads((tmp_path / "root/model/metrics.json").read_text())


@pytest.mark.container
def test_v3_model_trainer_runs_the_image_job(tmp_path: Path) -> None:
    metrics = train_locally(tmp_path, local_trainer(tmp_path, dict(QUICK)))
    assert len(metrics["epochs"]) == 1 and (tmp_path / "root/model/model.safetensors").is_file()


@pytest.mark.container
def test_v3_model_trainer_with_source_code_runs_a_user_script_that_calls_tsa(tmp_path: Path) -> None:
    from sagemaker.train.configs import SourceCode

    source = tmp_path / "source"
    source.mkdir()
    (source / "user_train.py").write_text(USER_SCRIPT)
    trainer = local_trainer(tmp_path, {"epochs": 1, "tsa": dict(QUICK)},
                            SourceCode(source_dir=str(source), entry_script="user_train.py"))
    metrics = train_locally(tmp_path, trainer)
    user_step = json.loads((tmp_path / "root/model/user_step.json").read_text())
    assert user_step["validation_auc"] == metrics["final"]["validation"]["auc"]
