"""The deploy check: a trained model served under the torch of the AWS PyTorch inference image.

Run: make test-deploy   (DEPLOY_TORCH=2.6.0 unless given; it builds .venv-deploy-torch<version> first)

Jobs trained here, with the training torch, write their model folders; each folder is then served in
a process of the older torch's venv (`TSA_DEPLOY_PYTHON`, torch `TSA_DEPLOY_TORCH`, the SageMaker
PyTorch inference toolkit and TorchServe of that image), where `import tsa` fails: through the
toolkit's handler service (tests/toolkit_request.py) and through the real TorchServe the toolkit
starts (Java 17), as the image runs it. Both also run under the training torch, so one run prints
the largest score difference under each torch (`-s` shows the lines). Scores must equal the job's
prediction file within 1e-6. A missing venv fails: nothing here is skipped.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.jobs import (
    QUICK,
    ROWS_SMALL,
    free_port,
    fresh_environment,
    make_job,
    predictions,
    run_job,
    torchserve_post,
    validation_instances,
    wait_until_serving,
)

pytestmark = pytest.mark.slow

TOOLKIT_REQUEST = Path(__file__).parents[1] / "toolkit_request.py"
# MoE: eval without random draws (Q4), and scored in row order, so the request (rows 0-31, one batch) is the batch the
# job scored: a row's MoE routing depends on the other rows of its batch (capacity, Q3).
MOE = {"use_moe": "1", "num_experts": "3", "fix_moe_eval_deterministic": "1", "fix_evaluation_order": "1"}
JOBS = {
    "single": {**QUICK, "model_type": "single"},
    "dual_moe": {**QUICK, **MOE, "model_type": "dual"},
    "single_moe_fast_mode": {**QUICK, **MOE, "model_type": "single", "fast_mode": "1"},  # fused attention kernels
}
JSON = "application/json"
NPZ = "application/x-npz"
TOLERANCE = 1e-6


def deploy_python() -> str:
    """The older torch's interpreter; fails (never skips) without it."""
    python = os.environ.get("TSA_DEPLOY_PYTHON", "")
    if not Path(python).is_file() or not os.environ.get("TSA_DEPLOY_TORCH"):
        pytest.fail(f"TSA_DEPLOY_PYTHON={python!r} is no interpreter, or TSA_DEPLOY_TORCH (its torch version) is "
                    "unset: run these tests with make test-deploy, which builds the venv of the older torch")
    return os.path.abspath(python)  # not resolved: the venv's python is a link out of the venv


PYTHONS = {"deploy_torch": deploy_python, "training_torch": lambda: sys.executable}


@pytest.fixture(scope="module", params=list(JOBS))
def job(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = make_job(tmp_path_factory.mktemp(request.param) / "job", JOBS[request.param], rows=ROWS_SMALL)
    proc = run_job(root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    instances = validation_instances(root)
    expected = predictions(root, "validation")
    return {"name": request.param, "model_dir": str(root / "model"), "instances": instances,
            "expected": [expected[str(row)] for row in range(len(instances))]}


def npz_body(instances: list[dict[str, Any]]) -> str:
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray([i[name] for i in instances]) for name in instances[0]})
    return base64.b64encode(buffer.getvalue()).decode()


def one_column_short(instance: dict[str, Any]) -> dict[str, Any]:
    name = "X_seq_num" if "X_seq_num" in instance else "ccid_X_seq_num"
    return {**instance, name: [row[:-1] for row in instance[name]]}


def expected_torch(python_kind: str) -> str:
    return os.environ["TSA_DEPLOY_TORCH"] if python_kind == "deploy_torch" else torch.__version__


def report(job: dict[str, Any], where: str, torch_version: str, scores: list[float]) -> float:
    """The largest difference to the job's prediction file, printed (`-s`) for the docs' table."""
    difference = float(np.max(np.abs(np.asarray(scores) - np.asarray(job["expected"]))))
    print(f"\n{where}, torch {torch_version}, job {job['name']}: max |score - prediction file| = {difference:.3g} "
          f"over {len(scores)} rows")
    return difference


@pytest.mark.parametrize("python_kind", list(PYTHONS))
def test_the_toolkit_scores_as_the_job_did(job: dict[str, Any], python_kind: str, tmp_path: Path) -> None:
    python = PYTHONS[python_kind]()
    requests = [
        {"body": json.dumps({"instances": job["instances"]}), "headers": {"Content-Type": f"{JSON}; charset=utf-8"}},
        {"body": {"base64": npz_body(job["instances"])}, "headers": {"Content-Type": NPZ, "Accept": "*/*"}},
        {"body": json.dumps({"instances": [one_column_short(job["instances"][0])]}),
         "headers": {"Content-Type": JSON}},
    ]
    (tmp_path / "requests.json").write_text(json.dumps(requests))
    env = {key: value for key, value in fresh_environment().items() if key != "PYTHONPATH"}
    proc = subprocess.run([python, str(TOOLKIT_REQUEST), job["model_dir"], str(tmp_path / "requests.json")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["torch"].startswith(expected_torch(python_kind)), result["torch"]
    json_answer, npz_answer, short_answer = result["answers"]
    for body, answer in (("json", json_answer), ("npz", npz_answer)):
        assert answer["status"] == 200 and answer["content_type"] == JSON, answer
        scores = [p["score"] for p in json.loads(answer["body"])["predictions"]]
        assert report(job, f"toolkit {result['toolkit']} ({body})", result["torch"], scores) <= TOLERANCE
    assert short_answer["status"] == 400 and "expected (8, 34)" in short_answer["message"], short_answer


@pytest.mark.parametrize("python_kind", list(PYTHONS))
def test_real_torchserve_scores_as_the_job_did(job: dict[str, Any], python_kind: str, tmp_path: Path) -> None:
    from local_mode import serve_torchserve

    python = PYTHONS[python_kind]()
    port = free_port()
    log = tmp_path / "server.log"
    with serve_torchserve.one_per_machine():
        server = serve_torchserve.start(Path(job["model_dir"]), port, tmp_path, env=serve_torchserve.isolated_ports(),
                                        python=python)
        try:
            wait_until_serving(port, 180, alive=lambda: server.poll() is None,
                               describe=lambda: f"TorchServe did not start:\n{log.read_text()[-3000:]}")
            status, kind, text = torchserve_post(port, json.dumps({"instances": job["instances"]}).encode(),
                                                 {"Content-Type": JSON, "Accept": JSON})
        finally:
            code, left = serve_torchserve.stop(server, tmp_path)
    assert status == 200 and kind.startswith(JSON), text[:2000]
    assert f"Python executable: {Path(python).parent}" in log.read_text()  # TorchServe's workers run it
    worker_torch = subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                                  text=True, check=True).stdout.strip()
    assert worker_torch.startswith(expected_torch(python_kind))
    scores = [p["score"] for p in json.loads(text)["predictions"]]
    assert report(job, "TorchServe", worker_torch, scores) <= TOLERANCE
    assert code == 0 and not left, f"exit {code}, still running {left}:\n{log.read_text()[-3000:]}"
