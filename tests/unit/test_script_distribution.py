"""Script mode and the estimator's `distribution`: torch_distributed runs torchrun, the rest is refused.

Run: .venv/bin/pytest -n 2 --dist loadgroup tests/unit/test_script_distribution.py
Every job is a real `tsa train` process running the toolkit's runner and torchrun; two hosts are two
processes on this machine, two job folders whose resourceconfig names `127.0.0.1` and `localhost`.
The toolkit's torchrun takes port 7777 on the first host for every multi-host job: those tests share
one xdist group and, since pytest 9 ignores the group (pytest-xdist 3.8 renames `item._nodeid`, which
pytest 9 no longer reads), hold a lock file while they run, which also keeps out other test sessions.
"""

from __future__ import annotations

import fcntl
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.jobs import (
    PROBE_SCRIPT,
    QUICK,
    artifact_names,
    bare_script_job,
    fresh_environment,
    metrics,
    probes,
    run_job,
    script_job,
    script_source,
)

pytestmark = pytest.mark.slow

TORCH_DISTRIBUTED = {"sagemaker_torch_distributed_enabled": "true", "sagemaker_instance_type": '"ml.c5.xlarge"'}
TWO_HOSTS = ("127.0.0.1", "localhost")


@pytest.fixture
def port7777() -> Iterator[None]:
    """The toolkit's fixed torchrun port, for this test alone (every process on the machine that asks)."""
    with open(Path(tempfile.gettempdir()) / "tsa-torchrun-port7777.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def start_job(root: Path) -> subprocess.Popen[bytes]:
    """`tsa train` on `root` in the background, its output in `<root>.log` (read it with `job_log`)."""
    with root.with_suffix(".log").open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "tsa", "train"],
                                env={**fresh_environment(), "SAGEMAKER_BASE_DIR": str(root), "PYTHONUNBUFFERED": "1"},
                                stdout=log, stderr=subprocess.STDOUT)


def job_log(root: Path) -> str:
    return root.with_suffix(".log").read_text(errors="replace")


def test_torch_distributed_runs_the_script_under_torchrun_with_cpu_processes(tmp_path: Path) -> None:
    source = script_source(tmp_path / "source", PROBE_SCRIPT)
    root = bare_script_job(tmp_path / "job", source, {**TORCH_DISTRIBUTED, "cpu_processes": "2"})
    started = time.monotonic()
    proc = run_job(root, timeout=60)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert time.monotonic() - started < 45
    assert "torchrun --nnodes 1 --nproc_per_node 2 user_train.py --cpu_processes 2" in log
    ranks = probes(root)
    assert sorted(r["RANK"] for r in ranks) == ["0", "1"] and {r["LOCAL_RANK"] for r in ranks} == {"0", "1"}
    assert {r["WORLD_SIZE"] for r in ranks} == {"2"} and {r["sum"] for r in ranks} == {3.0}
    assert len({r["TORCHELASTIC_RUN_ID"] for r in ranks}) == 1 and ranks[0]["TORCHELASTIC_RUN_ID"]
    assert (root / "output/success").is_file() and not (root / "output/failure").exists()


TSA_UNDER_TORCHRUN = '''
import json, os
import tsa.api
metrics = tsa.api.train(json.loads(os.environ["SM_HPS"])["tsa"])  # {} on every rank but global rank 0
with open(os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], f"user_metrics_{os.environ['RANK']}.json"), "w") as f:
    json.dump(metrics, f)
'''


def test_a_script_calling_tsa_api_train_under_torchrun_trains_one_job(tmp_path: Path) -> None:
    root = script_job(tmp_path, TSA_UNDER_TORCHRUN)
    (root / "output/data").mkdir(parents=True, exist_ok=True)
    hyperparameters = json.loads((root / "input/config/hyperparameters.json").read_text())
    hyperparameters.update(TORCH_DISTRIBUTED, cpu_processes="2", tsa=json.dumps({**QUICK, "cpu_processes": "2"}))
    (root / "input/config/hyperparameters.json").write_text(json.dumps(hyperparameters))
    proc = run_job(root, timeout=120)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "torchrun --nnodes 1 --nproc_per_node 2 user_train.py" in proc.stdout
    returned = {rank: json.loads((root / f"output/data/user_metrics_{rank}.json").read_text()) for rank in "01"}
    assert returned["1"] == {}  # one job of two ranks, not two jobs
    assert returned["0"]["validation"]["auc"] == metrics(root)["final"]["validation"]["auc"]
    assert artifact_names("tiny") <= {str(p.relative_to(root / "model")) for p in (root / "model").rglob("*")}


@pytest.mark.xdist_group("port7777")
@pytest.mark.usefixtures("port7777")
def test_two_hosts_run_one_torchrun_job_of_four_processes(tmp_path: Path) -> None:
    source = script_source(tmp_path / "source", PROBE_SCRIPT)
    roots = [bare_script_job(tmp_path / f"host{i}", source, {**TORCH_DISTRIBUTED, "cpu_processes": "2"},
                             current_host=host, hosts=TWO_HOSTS) for i, host in enumerate(TWO_HOSTS)]
    jobs = [start_job(root) for root in roots]
    codes = [job.wait(timeout=60) for job in jobs]
    logs = [job_log(root) for root in roots]
    for code, log in zip(codes, logs, strict=True):
        assert code == 0, log[-3000:]
    for node_rank, log in enumerate(logs):
        assert (f"torchrun --nnodes 2 --nproc_per_node 2 --master_addr 127.0.0.1 --master_port 7777 "
                f"--node_rank {node_rank} user_train.py") in log
    ranks = probes(roots[0]) + probes(roots[1])
    assert [r["RANK"] for r in ranks] == ["0", "1", "2", "3"]  # host 0 has global ranks 0-1, host 1 has 2-3
    assert {r["WORLD_SIZE"] for r in ranks} == {"4"} and {r["sum"] for r in ranks} == {10.0}  # 1+2+3+4
    assert len({r["TORCHELASTIC_RUN_ID"] for r in ranks}) == 1 and ranks[0]["TORCHELASTIC_RUN_ID"]


@pytest.mark.xdist_group("port7777")
@pytest.mark.usefixtures("port7777")
def test_a_host_that_never_joins_ends_the_job_at_the_rendezvous_timeout(tmp_path: Path) -> None:
    source = script_source(tmp_path / "source", PROBE_SCRIPT)
    root = bare_script_job(tmp_path / "host0", source, {**TORCH_DISTRIBUTED, "rendezvous_timeout_s": "3"},
                           current_host=TWO_HOSTS[0], hosts=TWO_HOSTS)
    started = time.monotonic()
    proc = run_job(root, timeout=60)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-3000:]  # the toolkit's code for a failed script
    assert elapsed < 30, f"took {elapsed:.0f} s with a 3 s rendezvous timeout"
    failure = (root / "output/failure").read_text()
    print(failure)
    first, second = failure.splitlines()[:2]
    assert first.startswith("the entry point 'user_train.py' failed with exit code 1: "
                            "torch.distributed.DistStoreError: Timed out after"), first
    assert second == "ExecuteUserScriptError:"
    assert probes(root) == []


# What the SDK v2 estimators write for each `distribution` this image does not run
# (`test_the_sdk_writes_these_hyperparameters` checks the PyTorch estimator's), and the key that is named first.
REFUSED = {
    "mpi": ({"sagemaker_mpi_enabled": "true", "sagemaker_mpi_num_of_processes_per_host": "2",
             "sagemaker_mpi_custom_mpi_options": '""'}, "sagemaker_mpi_enabled"),
    "pytorchddp": ({"sagemaker_distributed_dataparallel_enabled": "true",
                    "sagemaker_instance_type": '"ml.p4d.24xlarge"',
                    "sagemaker_distributed_dataparallel_custom_mpi_options": '""'},
                   "sagemaker_distributed_dataparallel_enabled"),
    "smdistributed_modelparallel": ({"sagemaker_mpi_enabled": "true", "sagemaker_mpi_num_of_processes_per_host": "8",
                                     "sagemaker_mpi_custom_mpi_options": '""', "mp_parameters": '{"partitions": 2}',
                                     "sagemaker_distributed_dataparallel_enabled": "false",
                                     "sagemaker_instance_type": '"ml.p4d.24xlarge"'}, "mp_parameters"),
    "huggingface_pytorchddp": ({"sagemaker_pytorch_ddp_enabled": "true",
                                "sagemaker_instance_type": '"ml.p4d.24xlarge"'}, "sagemaker_pytorch_ddp_enabled"),
    "pytorchxla": ({"sagemaker_pytorch_xla_multi_worker_enabled": "true"},
                   "sagemaker_pytorch_xla_multi_worker_enabled"),
}
SDK_DISTRIBUTIONS = {
    "mpi": {"mpi": {"enabled": True, "processes_per_host": 2}},
    "pytorchddp": {"pytorchddp": {"enabled": True}},
    "smdistributed_modelparallel": {"smdistributed": {"modelparallel": {"enabled": True,
                                                                        "parameters": {"partitions": 2}}},
                                    "mpi": {"enabled": True, "processes_per_host": 8}},
}


@pytest.mark.parametrize("distribution", sorted(REFUSED))
def test_other_distributions_are_refused_before_anything_starts(tmp_path: Path, distribution: str) -> None:
    hyperparameters, key = REFUSED[distribution]
    source = script_source(tmp_path / "source", PROBE_SCRIPT)
    root = bare_script_job(tmp_path / "job", source, hyperparameters)
    proc = run_job(root, timeout=60)
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    failure = (root / "output/failure").read_text()
    first = failure.splitlines()[0]
    assert first.startswith(f"hyperparameter '{key}' = {hyperparameters[key]!r} (distribution=")
    assert "is not supported by this image" in first
    assert "use distribution={'torch_distributed': {'enabled': True}}, or no distribution" in first
    assert "Traceback" not in failure
    assert probes(root) == [] and "Invoking script" not in proc.stdout + proc.stderr  # the script never ran
    assert not (root / "output/success").exists()


@pytest.mark.parametrize(("hyperparameters", "key"), [
    ({**TORCH_DISTRIBUTED, "cpu_processes": "0"}, "cpu_processes"),
    ({**TORCH_DISTRIBUTED, "cpu_processes": "two"}, "cpu_processes"),
    ({**TORCH_DISTRIBUTED, "rendezvous_timeout_s": "0"}, "rendezvous_timeout_s"),
    ({"sagemaker_torch_distributed_enabled": "yes"}, "sagemaker_torch_distributed_enabled"),
], ids=["cpu_processes=0", "cpu_processes=two", "rendezvous_timeout_s=0", "enabled=yes"])
def test_bad_torchrun_settings_are_refused_naming_the_key(tmp_path: Path, hyperparameters: dict[str, str],
                                                          key: str) -> None:
    source = script_source(tmp_path / "source", PROBE_SCRIPT)
    root = bare_script_job(tmp_path / "job", source, hyperparameters)
    proc = run_job(root, timeout=60)
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    failure = (root / "output/failure").read_text()
    assert failure.startswith(f"hyperparameter '{key}' = {hyperparameters[key]!r}")
    assert "Traceback" not in failure and probes(root) == []


def test_flags_that_are_off_run_one_plain_process(tmp_path: Path) -> None:
    """`mpi: {"enabled": False}` and the like: the SDK still writes the key, with false."""
    source = script_source(tmp_path / "source", PROBE_SCRIPT)
    root = bare_script_job(tmp_path / "job", source, {
        "sagemaker_mpi_enabled": "false", "sagemaker_mpi_custom_mpi_options": '""',
        "sagemaker_distributed_dataparallel_enabled": "false", "sagemaker_torch_distributed_enabled": "false",
        "cpu_processes": "2"})
    proc = run_job(root, timeout=60)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert [(r["RANK"], r["WORLD_SIZE"], r["TORCHELASTIC_RUN_ID"]) for r in probes(root)] == [(None, None, None)]
    assert "torchrun" not in proc.stdout


def test_the_sdk_writes_these_hyperparameters(monkeypatch: pytest.MonkeyPatch) -> None:
    """REFUSED and TORCH_DISTRIBUTED hold what the SDK v2 PyTorch estimator really writes."""
    for key, value in {"AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_EC2_METADATA_DISABLED": "true",
                       "SAGEMAKER_SUPPRESS_V2_WARNING": "1"}.items():
        monkeypatch.setenv(key, value)
    import boto3
    import sagemaker
    from sagemaker.pytorch import PyTorch

    def written(distribution: dict[str, object], instance_type: str) -> dict[str, str]:
        estimator = PyTorch(entry_point="user_train.py", source_dir=".", image_uri="tsa-training:local",
                            role="arn:aws:iam::000000000000:role/x", instance_count=2, instance_type=instance_type,
                            framework_version="2.3", py_version="py311", distribution=distribution,
                            sagemaker_session=sagemaker.Session(boto_session=boto3.Session(region_name="us-east-1")),
                            disable_profiler=True, debugger_hook_config=False)
        return {key: value for key, value in estimator.hyperparameters().items()
                if key not in ("sagemaker_program", "sagemaker_submit_directory", "sagemaker_container_log_level",
                               "sagemaker_job_name", "sagemaker_region")}

    for name, distribution in SDK_DISTRIBUTIONS.items():
        assert written(distribution, "ml.p4d.24xlarge") == REFUSED[name][0], name
    assert written({"torch_distributed": {"enabled": True}}, "ml.c5.xlarge") == TORCH_DISTRIBUTED


def test_sigterm_reaches_torchrun_and_every_worker(tmp_path: Path) -> None:
    """`tsa` (PID 1) forwards SIGTERM; the job ends within 5 s with exit 143 and the stop notice."""
    script = '''
import os, signal, sys, time
folder, rank = os.environ["SM_OUTPUT_DATA_DIR"], os.environ["RANK"]
def stop(signum, frame):
    with open(os.path.join(folder, f"got_sigterm_{rank}"), "w") as handle:
        handle.write(os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "unset"))  # torchrun's grace before SIGKILL
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
open(os.path.join(folder, f"waiting_{rank}"), "w").close()
time.sleep(120)
'''
    source = script_source(tmp_path / "source", script)
    root = bare_script_job(tmp_path / "job", source, {**TORCH_DISTRIBUTED, "cpu_processes": "2"})
    job = start_job(root)
    deadline = time.monotonic() + 45
    while len(list((root / "output/data").glob("waiting_*"))) < 2:
        assert time.monotonic() < deadline and job.poll() is None, job_log(root)[-3000:]
        time.sleep(0.2)
    stopped = time.monotonic()
    job.send_signal(signal.SIGTERM)
    code = job.wait(timeout=60)
    elapsed = time.monotonic() - stopped
    print(f"SIGTERM -> exit {code} in {elapsed:.1f} s")
    assert {path.name: path.read_text() for path in (root / "output/data").glob("got_sigterm_*")} == \
        {"got_sigterm_0": "100", "got_sigterm_1": "100"}
    assert elapsed < 5, job_log(root)[-3000:]
    assert code == 143, job_log(root)[-3000:]
    failure = (root / "output/failure").read_text()
    print(failure)
    assert failure.startswith("training stopped by SIGTERM: it was forwarded to the user's entry point, which ended "
                              "with exit code ")
