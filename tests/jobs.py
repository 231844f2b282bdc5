"""Helpers that build and run real `/opt/ml`-shaped jobs for the end-to-end tests."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tests.conftest import write_job
from tsa.config import JobConfig
from tsa.data.convert import write_npy_channel, write_parquet_channel
from tsa.data.synth import generate

TINY = {"n_cat_features": "32", "n_num_features": "32", "n_embedding": "192", "n_engineered_num_features": "3",
        "seq_len": "8", "dim_embedding_table": "4", "dim_attn_feedforward": "8", "num_heads": "2",
        "n_layers_order": "1", "n_layers_feature": "1", "use_moe": "0", "batch_size": "32", "max_epoch": "2",
        "scheduler_maxlr": "0.003", "seed": "5", "test_name": "tiny", "log_every_n_steps": "5"}
ROWS = "train=320,validation=160,calibration=96"


QUICK = {**TINY, "max_epoch": "1"}  # one epoch of the tiny model
ROWS_SMALL = "train=64,validation=32,calibration=32"
USER_SCRIPT = '''
import argparse, json, os, sys
import tsa.api

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, required=True)
args, _ = parser.parse_known_args()
print("USER model_dir", os.environ["SM_MODEL_DIR"], "train", os.environ["SM_CHANNEL_TRAIN"], flush=True)
hyperparameters = json.loads(os.environ["SM_HPS"])["tsa"]  # the tsa map, passed as one JSON hyperparameter
metrics = tsa.api.train({**hyperparameters, "max_epoch": args.epochs})
with open(os.path.join(os.environ["SM_MODEL_DIR"], "user_step.json"), "w") as handle:
    json.dump({"validation_auc": metrics["validation"]["auc"]}, handle)
'''
FAILING_SCRIPT = 'import sys\nprint("about to fail", flush=True)\nsys.exit(3)\n'


def script_job(tmp_path: Path, script: str, *, with_inputdataconfig: bool = True) -> Path:
    """A job whose hyperparameters name a user entry point in a local source folder (as SDK local mode does)."""
    root = make_job(tmp_path / "job", QUICK, rows=ROWS_SMALL)
    source = tmp_path / "source"
    source.mkdir()
    (source / "user_train.py").write_text(script)
    hyperparameters = {"sagemaker_program": "user_train.py", "sagemaker_submit_directory": str(source),
                       "epochs": "1", "tsa": json.dumps(QUICK)}
    config = root / "input/config"
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "localhost", "hosts": ["localhost"]}))
    if with_inputdataconfig:
        (config / "inputdataconfig.json").write_text(json.dumps({name: {"TrainingInputMode": "File"} for name in
                                                                 ("train", "validation", "calibration")}))
    return root


PROBE_SCRIPT = '''
import json, os, sys
import torch
import torch.distributed as dist

rank = os.environ.get("RANK")  # set by torchrun only
total = None
if rank is not None:
    dist.init_process_group("gloo")
    value = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(value)
    total = value.item()
names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID")
with open(os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], f"probe_{rank}.json"), "w") as handle:
    json.dump({**{name: os.environ.get(name) for name in names}, "sum": total, "argv": sys.argv[1:]}, handle)
if rank is not None:  # every rank has written before any host ends (local mode then stops the others)
    dist.barrier()
    dist.destroy_process_group()
'''


def script_source(folder: Path, script: str) -> Path:
    """A submit directory holding `user_train.py`."""
    folder.mkdir(parents=True)
    (folder / "user_train.py").write_text(script)
    return folder


def bare_script_job(root: Path, source: Path | str, hyperparameters: dict[str, str], *, current_host: str = "localhost",
                    hosts: tuple[str, ...] = ("localhost",)) -> Path:
    """A script-mode job folder without data (the config files SageMaker writes, an empty train channel)."""
    config = root / "input/config"
    config.mkdir(parents=True)
    (root / "input/data/train").mkdir(parents=True)
    (root / "output/data").mkdir(parents=True)
    hyperparameters = {"sagemaker_program": "user_train.py", "sagemaker_submit_directory": str(source),
                       **hyperparameters}
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": current_host, "hosts": list(hosts)}))
    (config / "inputdataconfig.json").write_text(json.dumps({"train": {"TrainingInputMode": "File"}}))
    return root


def probes(root: Path) -> list[dict[str, Any]]:
    """What PROBE_SCRIPT wrote, one record per process that ran it."""
    return [json.loads(path.read_text()) for path in sorted((root / "output/data").glob("probe_*.json"))]


def artifact_names(test_name: str) -> set[str]:
    """A complete set's files (`tsa.artifacts`), for the job's `test_name`; `code/tsa_models/`: every `.py` file of
    the package `tsa.models`."""
    import tsa.models

    model_code = {f"code/tsa_models/{path.name}" for path in Path(tsa.models.__file__).parent.glob("*.py")}
    return {"model.safetensors", "config.json", f"{test_name}.pt", f"{test_name}.pt.png", "code/inference.py",
            "code/inputs.py", "metrics.json", "score_file.csv", "tag_file.csv", "cali_score_file.csv",
            "cali_tag_file.csv", "percentile_score.pkl", "percentile_score.json", *model_code}


def load_handler(model_dir: Path) -> Any:
    """The handler a job wrote (`model/code/inference.py`), loaded by path as a module of its own."""
    spec = importlib.util.spec_from_file_location("served_inference", model_dir / "code/inference.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def predictions(root: Path, split: str) -> dict[str, float]:
    """The job's prediction file: id -> score."""
    lines = (root / f"output/data/predictions_{split}.csv").read_text().splitlines()
    assert lines[0] == "id,label,score"
    return {line.split(",")[0]: float(line.split(",")[2]) for line in lines[1:]}


def validation_instances(root: Path) -> list[dict[str, Any]]:
    """The job's validation channel as request instances: one object of arrays per row, the label left out."""
    from tsa.data.convert import read_npy_arrays

    arrays = read_npy_arrays(root / "input/data/validation")
    return [{name: np.asarray(values[row]).tolist() for name, values in arrays.items() if name != "Y"}
            for row in range(len(arrays["Y"]))]


def dry_run_request(example: str, **overrides: Any) -> dict[str, Any]:
    """The CreateTrainingJob request `tsa launch --dry-run` builds for a shipped example (either SDK)."""
    from tests.conftest import load_example
    from tsa.config import typed_hyperparameters
    from tsa.launch import LaunchSpec, launch

    spec = LaunchSpec(image_uri="123456789012.dkr.ecr.eu-west-1.amazonaws.com/tsa-training:1",
                      role="arn:aws:iam::123456789012:role/SageMaker",
                      hyperparameters=typed_hyperparameters(load_example(example)),
                      channels={"train": "s3://bucket/train/", "validation": "s3://bucket/vali/"},
                      output_path="s3://bucket/output/", **overrides)
    result = launch(spec, dry_run=True)
    assert isinstance(result, dict)
    return result


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-1 of every file under `folder` (a file itself: its own digest under '')."""
    if folder.is_file():
        return {"": hashlib.sha1(folder.read_bytes()).hexdigest()}
    if not folder.is_dir():
        return {}
    return {str(path.relative_to(folder)): hashlib.sha1(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def wait_until_serving(port: int, timeout_s: float, alive: Callable[[], bool], describe: Callable[[], str]) -> None:
    """Poll `GET /ping` on 127.0.0.1:`port` until it answers 200 (fails once `alive()` is false or time is up)."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as ping:
                assert ping.status == 200
            return
        except OSError:
            assert time.monotonic() < deadline and alive(), describe()
            time.sleep(0.3)


def torchserve_post(port: int, body: bytes, headers: dict[str, str]) -> tuple[int, str, str]:
    """(status, content type, body) of one POST /invocations; waits out the 503 of a worker still loading."""
    import http.client

    deadline = time.monotonic() + 60
    while True:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("POST", "/invocations", body=body, headers=headers)
        response = connection.getresponse()
        text = response.read().decode("utf-8", "replace")
        connection.close()
        if response.status != 503 or time.monotonic() > deadline:
            return response.status, response.getheader("Content-Type", ""), text
        time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_job(root: Path, hyperparameters: dict[str, str], fmt: str = "npy", rows: str = ROWS,
             resourceconfig: dict[str, Any] | None = None, data: Path | None = None) -> Path:
    """A job folder with synthetic data (or a copy of `data`'s channels)."""
    write_job(root, hyperparameters, channels=(), resourceconfig=resourceconfig)
    hp_file = root / "input/config/hyperparameters.json"
    if data is None:
        subprocess.run([sys.executable, "-m", "tsa", "data", "synth", "--hyperparameters", str(hp_file),
                        "--output", str(root / "input/data"), "--format", fmt, "--rows", rows],
                       check=True, capture_output=True, timeout=120)
    else:
        (root / "input").mkdir(exist_ok=True)
        os.symlink(data, root / "input/data")
    return root


def expected_here(definition: dict[str, str]) -> bool:
    """Whether a job on this machine writes the metric `definition` reads (`gpu:*` ones: on a GPU only)."""
    import torch

    return not definition["Name"].startswith("gpu:") or torch.cuda.is_available()


SLOW_PHASES = Path(__file__).resolve().parent / "slow_phases"


def slowed(units: str, settings: str = "") -> dict[str, str]:
    """The environment that makes `tests/slow_phases/sitecustomize.py` slow these units of a job's work."""
    return {"PYTHONPATH": os.pathsep.join([str(SLOW_PHASES), os.environ.get("PYTHONPATH", "")]),
            "TSA_SLOW_UNITS": units, "TSA_SLOW_SETTINGS": settings}


def fresh_environment() -> dict[str, str]:
    """This process's environment less the `SM_*` variables a job run in-process may have exported."""
    return {key: value for key, value in os.environ.items() if not key.startswith("SM_")}


def run_job(root: Path, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """`tsa train` on `root` in a fresh process (as the container runs it)."""
    full_env = {**fresh_environment(), "SAGEMAKER_BASE_DIR": str(root), "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "tsa", "train"], env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def read_trace(path: Path) -> list[dict[str, Any]]:
    """The records of one rank's run trace (`runtime.trace`: one JSON object a line)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def stopped_job(env: dict[str, str], prefix: str, signals: tuple[int, ...] = (signal.SIGTERM,),
                timeout: int = 120) -> tuple[int, str, float]:
    """`tsa train` with `env`, sent `signals` (0.3 s apart) once a line of its output starts with `prefix`.

    Returns its exit code, its output after that line, and the seconds from the first signal to its exit.
    """
    proc = subprocess.Popen([sys.executable, "-m", "tsa", "train"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(prefix):
            for number, signum in enumerate(signals):
                time.sleep(0.3 * number)  # a second signal lands while the job stops (or shuts down)
                proc.send_signal(signum)
            break
    started = time.monotonic()
    rest = proc.communicate(timeout=timeout)[0]
    return proc.returncode, rest, time.monotonic() - started


def only_run(uri: str, experiment: str) -> Any:
    """The one MLflow run of `experiment` at `uri` (asserted to be the only one)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} at {uri}"
    runs = client.search_runs([found.experiment_id])
    assert len(runs) == 1, [run.info.run_name for run in runs]
    return runs[0]


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """The URL of a port on 127.0.0.1 that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def metrics(root: Path) -> dict[str, Any]:
    return json.loads((root / "model/metrics.json").read_text())


Arrays = dict[str, np.ndarray]


def synthetic_arrays(hyperparameters: dict[str, str], rows: int = 12, seed: int = 3) -> Arrays:
    """A channel's arrays for the model `hyperparameters` describe (`tsa.data.synth`)."""
    return generate(JobConfig.from_hyperparameters(hyperparameters).model, rows, seed=seed)


def write_channel(folder: Path, arrays: Arrays, fmt: str) -> None:
    if fmt == "npy":
        write_npy_channel(folder, folder.name, "v0", arrays)
    else:
        write_parquet_channel(folder, arrays, row_group_rows=5)


def job_with_train_arrays(root: Path, arrays: Arrays, fmt: str, hyperparameters: dict[str, str]) -> Path:
    """A job whose train channel holds `arrays`, beside a good validation channel (training needs one)."""
    write_job(root, hyperparameters, channels=())
    write_channel(root / "input/data/train", arrays, fmt)
    write_channel(root / "input/data/validation", synthetic_arrays(hyperparameters), fmt)
    return root


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true"}


@contextlib.contextmanager
def moto_s3(bucket: str) -> Iterator[dict[str, str]]:
    """A real local S3 endpoint (moto's server) with `bucket`; yields the environment that points boto3 at it."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**S3_ENV, "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}"}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "moto server did not start"
                time.sleep(0.2)
        s3_client(env).create_bucket(Bucket=bucket)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=30)


def s3_client(env: dict[str, str]) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], region_name=env["AWS_DEFAULT_REGION"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


def upload_folder(env: dict[str, str], folder: Path, bucket: str, prefix: str) -> None:
    s3 = s3_client(env)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}{path.relative_to(folder)}")
