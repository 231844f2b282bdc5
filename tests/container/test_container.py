"""The image, run for real: `make test-container` builds it, then runs these cases.

Run: make test-container    (or, with the image built: .venv/bin/pytest -m container tests/container -v)

(a) one container trains on synthetic data -> the complete artifact set, identical to the
    process engine's run of the same job; (b) two containers (algo-1, algo-2, gloo) train as one
    job -> both exit 0, only rank 0 writes artifacts; (c) bad hyperparameters -> exit 2 and the
    same failure text as the process engine; (d) `docker stop` mid-training -> checkpoint written,
    exit inside the grace period; (e) SageMaker SDK local mode, instance_count=2, file:// inputs
    -> model.tar.gz; (f) the fault catalogue's rows that need real permissions, a real volume or
    a real signal (the rest are in `tests/unit/test_catalogue.py`); (g) script mode: the SDK v2
    `PyTorch` framework estimator with an `entry_point` (local mode) runs a user script that calls
    `tsa.api.train`; (h) a failing user script -> the toolkit's failure file and exit code; (i) local
    mode with S3 channels and checkpoints (moto server), resumed after `docker stop`; (j) `docker run
    IMAGE serve`: /ping, /invocations equal to the job's predictions, a clean `docker stop`; (k) script
    mode with the `PyTorch` estimator's `distribution={"torch_distributed": ...}`, two instances in local
    mode: torchrun on each, one world of four processes (`cpu_processes=2`) with a gloo all_reduce; and
    in one container without a network (`docker run --network none`); (l) the `tracking` extra is in the
    image at the versions pyproject.toml asks for, and `import tsa.entrypoint` does not import mlflow; (m) a job
    tracked by the image's mlflow-skinny to a file store in its output folder, read back with the dev venv's mlflow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.jobs import (
    FAILING_SCRIPT,
    PROBE_SCRIPT,
    QUICK,
    TINY,
    USER_SCRIPT,
    bare_script_job,
    free_port,
    make_job,
    metrics,
    moto_s3,
    only_run,
    predictions,
    probes,
    run_job,
    script_job,
    script_source,
    snapshot,
    upload_folder,
    wait_until_serving,
)

pytestmark = pytest.mark.container

IMAGE = os.environ.get("TSA_IMAGE", "tsa-training:local")
REPO = Path(__file__).resolve().parents[2]


def docker(*args: str, timeout: int = 600, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check)


@pytest.fixture(scope="module", autouse=True)
def image_exists() -> None:
    proc = docker("image", "inspect", IMAGE)
    assert proc.returncode == 0, f"image {IMAGE} is missing: run `make test-container` (it builds it)"


def run_container(job: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return docker("run", "--rm", "--network", "none", "--shm-size", "1g", "-v", f"{job}:/opt/ml", *extra, IMAGE,
                  "train")


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_a_single_container_job_matches_the_process_engine(tmp_path: Path) -> None:
    reference = make_job(tmp_path / "process", TINY)
    assert run_job(reference).returncode == 0
    job = make_job(tmp_path / "docker", TINY, data=None)
    for channel in ("train", "validation", "calibration"):  # the same data, as files (no symlink into the mount)
        for item in (reference / "input/data" / channel).iterdir():
            (job / "input/data" / channel).mkdir(parents=True, exist_ok=True)
            (job / "input/data" / channel / item.name).write_bytes(item.read_bytes())
    proc = run_container(job)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(proc.stdout[-1500:])
    assert files_under(job / "model") == files_under(reference / "model")
    assert files_under(job / "output/data") == files_under(reference / "output/data")
    assert metrics(job)["epochs"] == metrics(reference)["epochs"]
    assert (job / "output/data/predictions_validation.csv").read_text() == \
        (reference / "output/data/predictions_validation.csv").read_text()


def test_b_two_containers_train_as_one_job(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "local_mode/run.py", "--hyperparameters", "hyperparameters/smoke.json",
                           "--synth", "--rows", "train=320,validation=160,calibration=96", "--engine", "docker",
                           "--hosts", "2", "--image", IMAGE, "--job-dir", str(tmp_path / "job")],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    print(log[-3000:])
    assert proc.returncode == 0, log[-3000:]
    assert "world: 2 node(s) x 1 cpu process(es)" in log
    assert "model.safetensors" in files_under(tmp_path / "job/algo-1/model")
    assert files_under(tmp_path / "job/algo-2/model") == set()


def test_c_bad_hyperparameters_fail_like_the_process_engine(tmp_path: Path) -> None:
    bad = json.dumps({**TINY, "dropout": "2"})
    reference = make_job(tmp_path / "process", TINY, rows="train=40,validation=20,calibration=20")
    job = make_job(tmp_path / "docker", TINY, rows="train=40,validation=20,calibration=20")
    for root in (reference, job):
        (root / "input/config/hyperparameters.json").write_text(bad)
    assert run_job(reference).returncode == 2
    proc = run_container(job)
    assert proc.returncode == 2
    failure = (job / "output/failure").read_text()
    assert failure == (reference / "output/failure").read_text()
    assert failure.startswith("hyperparameter 'dropout' = '2'")
    assert "Traceback" not in failure and "Traceback" in proc.stderr


def test_d_docker_stop_checkpoints_within_the_grace_period(tmp_path: Path) -> None:
    job = make_job(tmp_path / "job", {**TINY, "batch_size": "8", "max_epoch": "50", "log_every_n_steps": "1"},
                   rows="train=2000,validation=100,calibration=50")
    name = f"tsa-stop-{os.getpid()}"
    docker("run", "-d", "--name", name, "--network", "none", "-v", f"{job}:/opt/ml", IMAGE, "train", check=True)
    try:
        deadline = time.monotonic() + 180
        while "METRIC step=" not in docker("logs", name).stdout:
            assert time.monotonic() < deadline, docker("logs", name).stdout[-2000:]
            time.sleep(1)
        started = time.monotonic()
        docker("stop", "-t", "120", name, check=True)
        elapsed = time.monotonic() - started
        state = json.loads(docker("inspect", name, check=True).stdout)[0]["State"]
        logs = docker("logs", name)
    finally:
        docker("rm", "-f", name)
    assert elapsed < 60, f"took {elapsed:.0f} s: the job must checkpoint and exit well inside 120 s"
    assert state["ExitCode"] == 143, logs.stdout[-2000:] + logs.stderr[-2000:]
    assert (job / "checkpoints/last.ckpt").is_file()
    assert (job / "output/failure").read_text().startswith("training stopped by SIGTERM")


def test_e_sagemaker_sdk_local_mode_two_instances(tmp_path: Path) -> None:
    env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_EC2_METADATA_DISABLED": "true"}
    proc = subprocess.run([sys.executable, "local_mode/run.py", "--hyperparameters", "hyperparameters/smoke.json",
                           "--synth", "--rows", "train=320,validation=160,calibration=96", "--engine", "sagemaker",
                           "--hosts", "2", "--image", IMAGE, "--job-dir", str(tmp_path / "job")],
                          cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    log = proc.stdout + proc.stderr
    print(log[-3000:])
    assert proc.returncode == 0, log[-4000:]
    archives = list((tmp_path / "job/sagemaker").rglob("model.tar.gz"))
    assert archives, log[-3000:]
    with tarfile.open(archives[0]) as archive:
        names = set(archive.getnames())
    assert {"model.safetensors", "code/inference.py", "code/tsa_models/tsa.py", "metrics.json", "smoke.pt"} <= names


@dataclass(frozen=True)
class ContainerFault:
    id: str
    docker_args: tuple[str, ...]  # `{job}` is the job folder on this machine
    exit: int
    first_line: str  # in the failure file; with `in_log`, in the log's "job failed" line (no writable output)
    in_log: bool = False
    stop_after: str | None = None  # `docker kill -s TERM` once the log shows this text


FAULTS = [
    ContainerFault("read_only_model_volume", ("-v", "{job}/model:/opt/ml/model:ro"), 2,
                   "model folder '/opt/ml/model' is not writable (Read-only file system)"),
    ContainerFault("model_volume_too_small", ("--mount", "type=tmpfs,destination=/opt/ml/model,tmpfs-size=1m"), 2,
                   "model folder '/opt/ml/model' has 1.0 MiB free, but the job writes about"),
    ContainerFault("root_owned_job_folder_other_user", ("--user", "4321:4321"), 2,
                   "job failed: model folder '/opt/ml/model' is not writable (Permission denied)", in_log=True),
    ContainerFault("sigterm_during_a_long_validation", (), 143,
                   "training stopped by SIGTERM (stop, timeout or spot interruption) during the validation of epoch 0; "
                   "checkpoint saved to /opt/ml/checkpoints/last.ckpt with the epoch trained",
                   stop_after="METRIC step=8;"),
]
LONG_VALIDATION = {**TINY, "batch_size": "8", "max_epoch": "1", "log_every_n_steps": "1"}


@pytest.fixture(scope="module")
def previous_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished job's model folder: the set each fault row must leave in place."""
    root = make_job(tmp_path_factory.mktemp("previous") / "job", {**TINY, "max_epoch": "1"})
    assert run_job(root).returncode == 0
    return root / "model"


@pytest.mark.parametrize("fault", FAULTS, ids=[f.id for f in FAULTS])
def test_f_faults_that_need_a_real_container(tmp_path: Path, previous_set: Path, fault: ContainerFault) -> None:
    rows = "train=64,validation=40000,calibration=32" if fault.stop_after else "train=64,validation=32,calibration=32"
    job = make_job(tmp_path / "job", LONG_VALIDATION, rows=rows)
    shutil.copytree(previous_set, job / "model")
    before = snapshot(job / "model")
    name = f"tsa-fault-{os.getpid()}-{fault.id}"
    extra = [arg.format(job=job) for arg in fault.docker_args]
    docker("run", "-d", "--name", name, "--network", "none", "-v", f"{job}:/opt/ml", *extra, IMAGE, "train",
           check=True)
    try:
        if fault.stop_after is not None:
            deadline = time.monotonic() + 180
            while fault.stop_after not in docker("logs", name).stdout:
                assert time.monotonic() < deadline, docker("logs", name).stdout[-2000:]
                time.sleep(0.2)
            docker("kill", "-s", "TERM", name, check=True)
        started = time.monotonic()
        docker("wait", name, timeout=300, check=True)
        stopped_in = time.monotonic() - started
        state = json.loads(docker("inspect", name, check=True).stdout)[0]["State"]
        logs = docker("logs", name)
    finally:
        docker("rm", "-f", name)
    assert state["ExitCode"] == fault.exit, logs.stdout[-2000:] + logs.stderr[-2000:]
    if fault.in_log:
        assert fault.first_line in logs.stdout
        assert not (job / "output/failure").exists()
    else:
        text = (job / "output/failure").read_text()
        assert fault.first_line in text.splitlines()[0] and "Traceback" not in text
    if fault.stop_after is not None:
        assert stopped_in < 20, f"stopped {stopped_in:.0f} s after SIGTERM: it must stop within seconds"
    if "tmpfs" not in " ".join(fault.docker_args):  # a tmpfs model volume starts empty and goes with the container
        assert snapshot(job / "model") == before


SDK_ENV = {"AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_EC2_METADATA_DISABLED": "true"}


def test_g_pytorch_framework_estimator_runs_a_user_script_that_calls_tsa(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in SDK_ENV.items():
        monkeypatch.setenv(key, value)
    from sagemaker.pytorch import PyTorch

    from tsa.launch import local_session

    data = make_job(tmp_path / "data", QUICK, rows="train=64,validation=32,calibration=32") / "input/data"
    source = tmp_path / "source"
    source.mkdir()
    (source / "user_train.py").write_text(USER_SCRIPT)
    estimator = PyTorch(entry_point="user_train.py", source_dir=str(source), image_uri=IMAGE,
                        role="arn:aws:iam::000000000000:role/LocalMode", instance_count=1, instance_type="local",
                        hyperparameters={"epochs": 1, "tsa": QUICK},  # the SDK JSON-encodes each value
                        output_path=f"file://{tmp_path / 'out'}", sagemaker_session=local_session(),
                        disable_profiler=True, debugger_hook_config=False)
    estimator.fit({name: f"file://{data / name}" for name in ("train", "validation", "calibration")}, logs="All")
    archive = next((tmp_path / "out").rglob("model.tar.gz"))
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        user_step = json.loads(tar.extractfile("user_step.json").read())  # type: ignore[union-attr]
        final = json.loads(tar.extractfile("metrics.json").read())["final"]  # type: ignore[union-attr]
    assert {"model.safetensors", "code/inference.py", "code/tsa_models/tsa.py", "tiny.pt"} <= names
    assert user_step["validation_auc"] == final["validation"]["auc"]


def test_h_a_failing_user_script_gives_the_toolkits_failure_file(tmp_path: Path) -> None:
    job = script_job(tmp_path, FAILING_SCRIPT)
    source = tmp_path / "source"
    hyperparameters = json.loads((job / "input/config/hyperparameters.json").read_text())
    shutil.copytree(source, job / "code")  # the submit directory inside the mount, as local mode places it
    hyperparameters["sagemaker_submit_directory"] = "/opt/ml/code"
    (job / "input/config/hyperparameters.json").write_text(json.dumps(hyperparameters))
    proc = run_container(job)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (job / "output/failure").read_text().startswith(
        "the entry point 'user_train.py' failed with exit code 3: it wrote nothing to stderr\nExecuteUserScriptError:\n"
        "ExitCode 3\n")


def test_i_local_mode_reads_s3_channels_and_resumes_from_s3_checkpoints_after_docker_stop(tmp_path: Path) -> None:
    """A spot interruption rehearsed: `docker stop` -> last.ckpt synced up; a fresh folder resumes from it."""
    hp = {**TINY, "batch_size": "8", "max_epoch": "2", "log_every_n_steps": "5"}
    data = make_job(tmp_path / "data", hp, rows="train=2000,validation=100,calibration=50") / "input/data"
    hp_file = data.parents[1] / "input/config/hyperparameters.json"
    with moto_s3("tsa-spot") as env:
        upload_folder(env, data, "tsa-spot", "data/")
        args = [sys.executable, "local_mode/run.py", "--hyperparameters", str(hp_file), "--engine", "docker",
                "--image", IMAGE, "--checkpoint-s3-uri", "s3://tsa-spot/ckpt/",
                *[f"--channel={name}=s3://tsa-spot/data/{name}/" for name in ("train", "validation", "calibration")]]
        first = subprocess.Popen([*args, "--job-dir", str(tmp_path / "first")], cwd=REPO, env={**os.environ, **env},
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        name = f"algo-1-{first.pid}"
        deadline = time.monotonic() + 180
        while "METRIC step=" not in docker("logs", name).stdout:
            assert time.monotonic() < deadline and first.poll() is None, docker("logs", name).stdout[-2000:]
            time.sleep(0.5)
        docker("stop", "-t", "120", name, check=True)
        out, _ = first.communicate(timeout=120)
        assert first.returncode == 143, out[-3000:]
        assert "checkpoints: 1 file(s) from" in out  # last.ckpt of the stopped run (no epoch finished yet)
        second = subprocess.run([*args, "--job-dir", str(tmp_path / "second")], cwd=REPO, env={**os.environ, **env},
                                capture_output=True, text=True, timeout=600)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-3000:]
    assert "checkpoints: 1 file(s) from s3://tsa-spot/ckpt/" in log
    assert "resuming from /opt/ml/checkpoints/last.ckpt" in log
    assert len(metrics(tmp_path / "second/opt_ml")["epochs"]) == 2


def test_j_the_image_serves_its_model_and_stops_cleanly(tmp_path: Path) -> None:
    """`docker run IMAGE serve`, as SageMaker hosting runs it: /ping, /invocations, then `docker stop`."""
    import urllib.request

    from tsa.data.convert import read_npy_arrays

    job = make_job(tmp_path / "job", QUICK, rows="train=64,validation=32,calibration=32")
    assert run_job(job).returncode == 0
    arrays = read_npy_arrays(job / "input/data/validation")
    instances = [{n: v[r].tolist() for n, v in arrays.items() if n != "Y"} for r in range(8)]
    port = free_port()
    name = f"tsa-serve-{os.getpid()}"
    docker("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080", "-v", f"{job / 'model'}:/opt/ml/model:ro",
           IMAGE, "serve", check=True)
    try:
        wait_until_serving(port, 120, alive=lambda: True, describe=lambda: docker("logs", name).stdout[-2000:])
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", method="POST",
                                         data=json.dumps({"instances": instances}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            scores = [p["score"] for p in json.loads(response.read())["predictions"]]
        started = time.monotonic()
        docker("stop", "-t", "30", name, check=True)
        stopped_in = time.monotonic() - started
        state = json.loads(docker("inspect", name, check=True).stdout)[0]["State"]
    finally:
        docker("rm", "-f", name)
    expected = predictions(job, "validation")
    assert max(abs(s - expected[str(r)]) for r, s in enumerate(scores)) <= 1e-6
    assert state["ExitCode"] == 143 and stopped_in < 10  # tsa serve: 143 within 5 s of SIGTERM, plus docker's own time


def test_k_pytorch_estimator_torch_distributed_runs_torchrun_on_two_instances(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in SDK_ENV.items():
        monkeypatch.setenv(key, value)
    from sagemaker.pytorch import PyTorch

    from tsa.launch import local_session

    source = script_source(tmp_path / "source", PROBE_SCRIPT)
    train = tmp_path / "data/train"
    train.mkdir(parents=True)
    (train / "unused.txt").write_text("the probe reads no data\n")
    estimator = PyTorch(entry_point="user_train.py", source_dir=str(source), image_uri=IMAGE,
                        role="arn:aws:iam::000000000000:role/LocalMode", instance_count=2, instance_type="local",
                        hyperparameters={"cpu_processes": 2}, distribution={"torch_distributed": {"enabled": True}},
                        output_path=f"file://{tmp_path / 'out'}", sagemaker_session=local_session(),
                        disable_profiler=True, debugger_hook_config=False)
    estimator.fit({"train": f"file://{train}"}, logs="All")
    archive = next((tmp_path / "out").rglob("output.tar.gz"))  # both hosts' output/, merged
    with tarfile.open(archive) as tar:
        ranks = [json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
                 for member in sorted(tar.getmembers(), key=lambda m: m.name) if "probe_" in member.name]
    assert sorted(r["RANK"] for r in ranks) == ["0", "1", "2", "3"], ranks
    assert {r["WORLD_SIZE"] for r in ranks} == {"4"} and {r["sum"] for r in ranks} == {10.0}  # 1+2+3+4
    assert len({r["TORCHELASTIC_RUN_ID"] for r in ranks}) == 1 and ranks[0]["TORCHELASTIC_RUN_ID"]
    assert {r["LOCAL_RANK"] for r in ranks} == {"0", "1"}


def test_k_torch_distributed_in_one_container_without_a_network(tmp_path: Path) -> None:
    """The container's own name does not resolve here: torchrun must not wait on it."""
    job = bare_script_job(tmp_path / "job", "/opt/ml/code", {"sagemaker_torch_distributed_enabled": "true",
                                                             "cpu_processes": "2"})
    script_source(job / "code", PROBE_SCRIPT)  # the submit directory inside the mount, as local mode places it
    started = time.monotonic()
    proc = run_container(job)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert time.monotonic() - started < 120
    assert "torchrun --nnodes 1 --nproc_per_node 2 user_train.py --cpu_processes 2" in proc.stdout
    ranks = probes(job)
    assert sorted(r["RANK"] for r in ranks) == ["0", "1"] and {r["sum"] for r in ranks} == {3.0}


TRACKING_PROBE = """
import importlib.metadata, importlib.util, json, sys
from packaging.requirements import Requirement

def version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None

requirements = [Requirement(r) for r in json.loads(sys.argv[1])]
found = {m: importlib.util.find_spec(m) is not None for m in ("mlflow", "sagemaker_mlflow")}
import tsa.entrypoint
print(json.dumps({"versions": {r.name: version(r.name) for r in requirements},
                  "satisfied": {r.name: version(r.name) is not None and r.specifier.contains(version(r.name), True)
                                for r in requirements},
                  "found": found, "mlflow_imported_by_tsa": "mlflow" in sys.modules}))
"""


def test_l_the_image_has_the_tracking_extra_and_tsa_does_not_import_mlflow() -> None:
    tracking = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["tracking"]
    pins = [r.split("==", 1)[1].strip() for r in tracking if r.replace(" ", "").startswith("mlflow-skinny==")]
    assert len(pins) == 1, f"pyproject.toml's tracking extra pins no single mlflow-skinny version: {tracking}"
    proc = docker("run", "--rm", "--network", "none", "--entrypoint", "python", IMAGE, "-c", TRACKING_PROBE,
                  json.dumps(tracking), timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    print(probe)
    assert probe["versions"]["mlflow-skinny"] == pins[0], probe
    assert probe["versions"]["sagemaker-mlflow"] is not None, probe
    assert all(probe["satisfied"].values()), probe
    assert probe["found"] == {"mlflow": True, "sagemaker_mlflow": True}, probe
    assert not probe["mlflow_imported_by_tsa"], "import tsa.entrypoint imported mlflow: tracking must import it lazily"


MLFLOW_JOB_NAME = "tsa-container-job-2024-01-01-00-00-00-000"


def test_m_the_images_mlflow_skinny_tracks_a_job_through_lightnings_logger(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """One epoch tracked by the image's client (mlflow-skinny, test_l) to a file store in the mounted output folder,
    read back here with the dev environment's full mlflow: one FINISHED run named by the job, every epoch, the file.

    The run records container paths (file:///opt/ml/...): its artifact is checked where the mount puts it.
    """
    from mlflow import MlflowClient

    job = make_job(tmp_path / "job", QUICK, rows="train=64,validation=32,calibration=32")
    proc = run_container(job, "-e", "MLFLOW_TRACKING_URI=file:///opt/ml/output/data/mlruns",
                         "-e", "MLFLOW_ALLOW_FILE_STORE=true", "-e", f"TRAINING_JOB_NAME={MLFLOW_JOB_NAME}")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "MLflow tracking at" not in log, log[-3000:]  # the warning of a tracking that failed and turned off
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store = job / "output/data/mlruns"
    client = MlflowClient(store.as_uri())
    run = only_run(store.as_uri(), "tsa-training")
    assert run.info.run_name == MLFLOW_JOB_NAME and run.info.status == "FINISHED"
    assert f"MLflow run {run.info.run_id} ({MLFLOW_JOB_NAME}) of experiment 'tsa-training'" in proc.stdout
    written = metrics(job)
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "validation_auc")]
    assert sorted(history) == [(epoch["epoch"], epoch["validation_auc"]) for epoch in written["epochs"]]
    assert len(history) == 1  # QUICK: one epoch
    relative = f"{run.info.experiment_id}/{run.info.run_id}/artifacts"
    assert run.info.artifact_uri == f"file:///opt/ml/output/data/mlruns/{relative}"
    assert json.loads((store / relative / "metrics.json").read_text()) == written
