"""The deploy section's SDK v2 block (docs/serving.md) runs, and its version pair resolves to the images.

Run: .venv/bin/pytest tests/unit/test_deploy_sdk.py   (offline: `deploy` records its call instead of
calling AWS; every AWS endpoint is a dead port). The v3 block: tests/sdk_v3/test_sdk_v3.py.

The block's `framework_version` must be the torch that `make test-deploy` checks by default (the
Makefile's DEPLOY_TORCH): the version the documentation says was tested.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.docs import python_block

AWS = {"AWS_DEFAULT_REGION": "eu-west-1", "AWS_EC2_METADATA_DISABLED": "true",
       "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "SAGEMAKER_SUPPRESS_V2_WARNING": "1"}
MAKEFILE = Path(__file__).parents[2] / "Makefile"


@pytest.fixture
def deployed(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Runs the v2 block; what its `deploy` was called on and with."""
    from sagemaker.pytorch import PyTorchModel

    for key, value in AWS.items():
        monkeypatch.setenv(key, value)
    calls: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(PyTorchModel, "deploy", lambda self, **kwargs: calls.append((self, kwargs)))
    exec(python_block("serving.md", "PyTorchModel("), {})
    assert len(calls) == 1
    return {"model": calls[0][0], **calls[0][1]}


def makefile_deploy_torch() -> str:
    return re.search(r"^DEPLOY_TORCH \?= (\S+)$", MAKEFILE.read_text(), flags=re.M).group(1)  # type: ignore[union-attr]


def test_the_v2_block_names_the_tested_torch_and_the_handler_in_the_archive(deployed: dict[str, Any]) -> None:
    import boto3
    from sagemaker import Session

    model = deployed["model"]
    assert model.framework_version == makefile_deploy_torch() and model.py_version == "py312"
    assert model.entry_point is None, "no entry_point: the SDK would repack and upload the archive again"
    assert model.env == {"SAGEMAKER_PROGRAM": "inference.py"}  # code/inference.py, which the job writes
    model.sagemaker_session = Session(boto_session=boto3.Session(region_name="eu-west-1"))
    # What the container gets (`prepare_container_def` adds it to `env`, and needs S3): without `env` the
    # program is "", and the toolkit serves its default handler, which looks for a TorchScript file.
    assert model._script_mode_env_vars()["SAGEMAKER_PROGRAM"] == "inference.py"


@pytest.mark.parametrize(("instance_type", "tag"), [("ml.m5.xlarge", "cpu"), ("ml.g5.xlarge", "gpu")])
def test_the_pair_resolves_to_the_pytorch_inference_image(deployed: dict[str, Any], instance_type: str,
                                                          tag: str) -> None:
    from sagemaker import image_uris

    model = deployed["model"]
    expected = f"763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-inference:{makefile_deploy_torch()}-{tag}-py312"
    assert model.serving_image_uri("eu-west-1", instance_type) == expected
    assert image_uris.retrieve("pytorch", region="eu-west-1", version=model.framework_version,
                               py_version=model.py_version, instance_type=instance_type,
                               image_scope="inference") == expected
    if tag == "cpu":
        assert deployed["instance_type"] == instance_type


def test_no_newer_pytorch_inference_image_is_in_the_sdk_catalogue() -> None:
    """The tested torch is the newest inference image the SDK knows: a newer SDK adding one should update the docs."""
    from sagemaker import image_uris

    versions = image_uris.config_for_framework("pytorch")["inference"]["versions"]
    newest = max(versions, key=lambda v: tuple(int(part) for part in v.split(".")))
    assert newest == makefile_deploy_torch()
