"""MLflow tracking (docs/mlflow.md) against a real local MLflow: a file store (one process), a `mlflow server` over
HTTP (two processes), a server that is down or never answers, no variable, and an `arn:` URI without the plugin.

Run with `--dist loadgroup`: each group's module fixtures are then built once.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import pytest

from tests.jobs import (
    QUICK,
    TINY,
    free_port,
    fresh_environment,
    make_job,
    metrics,
    only_run,
    silent_server,
    stopped_job,
)
from tsa.config import JobConfig

pytestmark = pytest.mark.slow

JOB_NAME = "tsa-job-2024-01-01-00-00-00-000"
DOWN_BOUND_S = 30.0  # MLFLOW_ENV_DEFAULTS: 3 tries of at most 5 s each, plus the backoff


def untracked_environment(**extra: str) -> dict[str, str]:
    """This process's environment without any MLFLOW_* variable (the tests' own settings come in `extra`)."""
    return {**{key: value for key, value in fresh_environment().items() if not key.startswith("MLFLOW_")}, **extra}


def run_tracked(root: Path, uri: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`tsa train` with `uri` as the tracking URI (MLFLOW_* variables of this process left out)."""
    full = untracked_environment(MLFLOW_TRACKING_URI=uri, SAGEMAKER_BASE_DIR=str(root), PYTHONUNBUFFERED="1", **env)
    return subprocess.run([sys.executable, "-m", "tsa", "train"], env=full, capture_output=True, text=True,
                          timeout=300)


def expected_params(hyperparameters: dict[str, str]) -> dict[str, str]:
    resolved = JobConfig.from_hyperparameters(hyperparameters).resolved()
    return {f"{section}/{key}": str(value) for section, values in resolved.items() for key, value in values.items()}


def check_run(uri: str, experiment: str, root: Path, hyperparameters: dict[str, str], run_name: str,
              tmp_path: Path) -> None:
    """The run holds the resolved config, every epoch of `metrics.json`, its final metrics, and the file itself."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    run = only_run(uri, experiment)
    assert run.info.run_name == run_name
    assert run.info.status == "FINISHED"
    assert run.data.params == expected_params(hyperparameters)
    written = metrics(root)
    for key in ("train_loss", "validation_loss", "validation_auc", "learning_rate"):
        history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(history) == [(epoch["epoch"], epoch[key]) for epoch in written["epochs"]], key
    final = {f"final/{split}/{name}": value for split, values in written["final"].items() for name, value in
             values.items()}
    assert {key: value for key, value in run.data.metrics.items() if key.startswith("final/")} == final
    downloaded = client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path))
    assert json.loads(Path(downloaded).read_text()) == written


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One set of channels shared by every job of the module (TINY's shapes)."""
    return make_job(tmp_path_factory.mktemp("data") / "job", TINY).joinpath("input/data")


# ---- file store, one process ----

@pytest.fixture(scope="module")
def file_store_job(tmp_path_factory: pytest.TempPathFactory, data: Path) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("file_store")
    root = make_job(folder / "job", TINY, data=data)
    uri = (folder / "mlruns").as_uri()
    proc = run_tracked(root, uri, TRAINING_JOB_NAME=JOB_NAME, MLFLOW_ALLOW_FILE_STORE="true")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, uri


@pytest.mark.xdist_group("mlflow-file")
def test_file_store_one_run_named_by_the_job_with_config_epochs_and_metrics_json(
        file_store_job: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, uri = file_store_job
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    check_run(uri, "tsa-training", root, TINY, JOB_NAME, tmp_path)


# 10 steps an epoch, each with its METRIC line
RESUMED_HP = {**TINY, "batch_size": "32", "max_epoch": "3", "log_every_n_steps": "1", "test_name": "resumed"}


@pytest.mark.xdist_group("mlflow-file")
def test_a_stopped_job_resumes_its_run(tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM in epoch 1, then the rerun from the same checkpoint folder: still one run, KILLED in between, and
    in the end every epoch exactly once and the finished run's metrics, as an uninterrupted job logs them."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    root = make_job(tmp_path / "job", RESUMED_HP, data=data)
    uri = (tmp_path / "mlruns").as_uri()
    env = untracked_environment(MLFLOW_TRACKING_URI=uri, MLFLOW_ALLOW_FILE_STORE="true", SAGEMAKER_BASE_DIR=str(root),
                                PYTHONUNBUFFERED="1", TRAINING_JOB_NAME=JOB_NAME)
    code, output, _ = stopped_job(env, "METRIC step=14;")
    assert code == 143, output[-3000:]
    stopped = only_run(uri, "tsa-training")
    assert stopped.info.status == "KILLED"
    assert (root / "checkpoints/mlflow-run.json").is_file()

    resumed = run_tracked(root, uri, TRAINING_JOB_NAME="another-name", MLFLOW_ALLOW_FILE_STORE="true")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and f"{stopped.info.run_id} ({JOB_NAME}) of experiment" in resumed.stdout
    check_run(uri, "tsa-training", root, RESUMED_HP, JOB_NAME, tmp_path)


@pytest.mark.xdist_group("mlflow-file")
def test_arn_uri_without_the_plugin_is_refused_before_training(tmp_path: Path, data: Path) -> None:
    assert find_spec("sagemaker_mlflow") is None, "this test needs an environment without sagemaker-mlflow"
    root = make_job(tmp_path / "job", QUICK, data=data)
    proc = run_tracked(root, "arn:aws:sagemaker:eu-west-1:123456789012:mlflow-tracking-server/tsa")
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    first = (root / "output/failure").read_text().splitlines()[0]
    assert "MLFLOW_TRACKING_URI" in first and "'sagemaker-mlflow'" in first and "pip install sagemaker-mlflow" in first
    assert "METRIC epoch=" not in proc.stdout and not (root / "model/metrics.json").exists()


# ---- a real `mlflow server` over HTTP, two processes ----

@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 (SQLite backend, proxied artifacts in tmp), once it answers /health."""
    folder = tmp_path_factory.mktemp("server")
    port = free_port()
    log = (folder / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{folder}/mlflow.db", "--artifacts-destination",
                               str(folder / "artifacts"), "--workers", "1"],
                              env=untracked_environment(), stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as health:
                    if health.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, (folder / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        yield uri
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


HTTP_HP = {**TINY, "cpu_processes": "2", "mlflow_experiment_name": "tsa-http", "mlflow_run_name": "chosen-run"}


@pytest.fixture(scope="module")
def http_job(tmp_path_factory: pytest.TempPathFactory, data: Path, mlflow_server: str) -> Path:
    root = make_job(tmp_path_factory.mktemp("http") / "job", HTTP_HP, data=data)
    proc = run_tracked(root, mlflow_server, TRAINING_JOB_NAME=JOB_NAME, MASTER_PORT=str(free_port()))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "world: 1 node(s) x 2 cpu process(es)" in proc.stdout
    return root


@pytest.mark.xdist_group("mlflow-http")
def test_server_two_processes_one_run_with_the_chosen_names(http_job: Path, mlflow_server: str,
                                                            tmp_path: Path) -> None:
    """World size 2: one run (global rank 0's); the hyperparameters' names win over TRAINING_JOB_NAME."""
    check_run(mlflow_server, "tsa-http", http_job, HTTP_HP, "chosen-run", tmp_path)


# ---- no variable; a server that is down or never answers ----

def delay_of(stdout: str, uri: str) -> float:
    """The seconds the one tracking warning reports (asserted to be one, naming `uri`)."""
    warnings = [line for line in stdout.splitlines() if "MLflow tracking at" in line and "WARNING" in line]
    assert len(warnings) == 1 and uri in warnings[0], warnings
    found = re.search(r"after ([0-9.]+) s", warnings[0])
    assert found, warnings[0]
    return float(found.group(1))


@pytest.fixture(scope="module")
def untracked(tmp_path_factory: pytest.TempPathFactory, data: Path) -> tuple[Path, float]:
    """A job without MLFLOW_TRACKING_URI, run in-process by `main_train` in a fresh interpreter; its wall time."""
    root = make_job(tmp_path_factory.mktemp("untracked") / "job", QUICK, data=data)
    script = ("import sys\nfrom pathlib import Path\nimport tsa.entrypoint\n"
              "code = tsa.entrypoint.main_train(Path(sys.argv[1]))\n"
              "print('EXIT', code, 'MLFLOW_IMPORTED', 'mlflow' in sys.modules)\n")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script, str(root)], env=untracked_environment(), capture_output=True,
                          text=True, timeout=300)
    wall = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "EXIT 0 MLFLOW_IMPORTED False" in proc.stdout, proc.stdout[-3000:]
    return root, wall


@pytest.mark.xdist_group("mlflow-down")
def test_no_variable_never_imports_mlflow(untracked: tuple[Path, float]) -> None:
    root, _ = untracked
    assert (root / "model/metrics.json").is_file()


def assert_untracked_outcome(root: Path, uri: str, what: str, untracked: tuple[Path, float]) -> None:
    """The job with a tracking server at `uri` that does not answer: exit 0, a bounded delay, the untracked
    run's metrics."""
    reference, reference_wall = untracked
    started = time.monotonic()
    proc = run_tracked(root, uri)
    wall = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    delay = delay_of(proc.stdout, uri)
    print(f"{what}: tracking gave up after {delay:.1f} s; job {wall:.1f} s, untracked {reference_wall:.1f} s")
    assert delay < DOWN_BOUND_S
    assert metrics(root) == metrics(reference)


@pytest.mark.xdist_group("mlflow-down")
def test_closed_port_costs_a_bounded_delay_and_changes_nothing(tmp_path: Path, data: Path,
                                                               untracked: tuple[Path, float]) -> None:
    root = make_job(tmp_path / "job", QUICK, data=data)
    assert_untracked_outcome(root, f"http://127.0.0.1:{free_port()}", "closed port", untracked)  # nothing listens
    assert (root / "output/success").is_file()


@pytest.mark.xdist_group("mlflow-down")
def test_server_that_never_answers_costs_a_bounded_delay(tmp_path: Path, data: Path,
                                                         untracked: tuple[Path, float]) -> None:
    root = make_job(tmp_path / "job", QUICK, data=data)
    with silent_server() as uri:
        assert_untracked_outcome(root, uri, "silent server", untracked)


@pytest.mark.xdist_group("mlflow-down")
def test_an_artifact_store_that_never_answers_costs_the_upload_deadline(tmp_path: Path, data: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's artifacts on S3 (as with a SageMaker MLflow ARN) whose endpoint never answers: boto3's own
    timeouts are not MLflow's; the upload is given up at its deadline, the run still ends FINISHED with its
    metrics, and the job exits 0."""
    from mlflow import MlflowClient

    from tsa.training.tracking import UPLOAD_DEADLINE_S

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    MlflowClient(uri).create_experiment("tsa-s3", artifact_location="s3://tsa-bucket/mlflow")
    root = make_job(tmp_path / "job", {**QUICK, "mlflow_experiment_name": "tsa-s3"}, data=data)
    with silent_server() as endpoint:
        proc = run_tracked(root, uri, MLFLOW_ALLOW_FILE_STORE="true", MLFLOW_S3_ENDPOINT_URL=endpoint,
                           AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert delay_of(proc.stdout, uri) == UPLOAD_DEADLINE_S
    assert "while uploading metrics.json" in proc.stdout
    run = only_run(uri, "tsa-s3")
    assert run.info.status == "FINISHED"
    assert run.data.metrics["final/validation/auc"] == metrics(root)["final"]["validation"]["auc"]


def test_environment_defaults_leave_set_values_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's HTTP settings get the job's bounded defaults only where the user set nothing."""
    from tsa.training import tracking

    monkeypatch.delenv(tracking.TRACKING_URI_ENV, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    tracking.bound_http_defaults()
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "60"
    retries = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
    assert os.environ[retries] == tracking.MLFLOW_ENV_DEFAULTS[retries]
