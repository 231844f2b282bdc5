"""Real clusters, emulated: two hosts as two `tsa train` processes on this machine (gloo on 127.0.0.1).

Each host has its own job folder, as on SageMaker. What is checked: a `ShardedByS3Key` evaluation covers
every host's rows (the AUC recomputed here from the saved model over both hosts' rows), the resume of a
sharded job, `CheckpointConfig.LocalPath`, instance groups, and the bounded waits on hosts that do not
resolve or never join.

Run: .venv/bin/pytest tests/unit/test_clusters.py
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.jobs import TINY, free_port, fresh_environment, make_job, metrics, run_job
from tsa.config import JobConfig
from tsa.contract import Channel, JobPaths, read_channels, read_resource_config
from tsa.data.batches import model_inputs
from tsa.data.channels import open_channel
from tsa.data.parquet import write_parquet
from tsa.data.synth import generate
from tsa.training.metrics import positive_probability
from tsa.weights import load_weights

pytestmark = pytest.mark.slow

HP = {**TINY, "log_every_n_steps": "1", "stop_check_every_n_steps": "1", "rendezvous_timeout_s": "60",
      "host_resolution_timeout_s": "10"}
HOSTS = ["algo-1", "algo-2"]
# Rows per host (the acceptance test of ../shared/docs/sagemaker_expectations.md gap 1).
SHARD_ROWS = {"algo-1": {"train": 320, "validation": 400, "calibration": 300},
              "algo-2": {"train": 320, "validation": 300, "calibration": 300}}
SHARDED = {name: {"TrainingInputMode": "File", "S3DistributionType": "ShardedByS3Key"}
           for name in ("train", "validation", "calibration")}


@dataclass
class Outcome:
    codes: list[int | None]
    outputs: list[str]
    seconds: float

    def failure(self, root: Path) -> str:
        return (root / "output/failure").read_text()

    def show(self) -> str:
        return "\n".join(f"--- host {i + 1} (exit {c}) ---\n{o[-2500:]}" for i, (c, o) in
                         enumerate(zip(self.codes, self.outputs, strict=True)))


def host_env(root: Path, port: int, master_addr: bool = True) -> dict[str, str]:
    env = {**fresh_environment(), "SAGEMAKER_BASE_DIR": str(root), "MASTER_PORT": str(port), "PYTHONUNBUFFERED": "1",
           "GLOO_SOCKET_IFNAME": "lo"}
    if master_addr:  # the local runner's emulation: every host is this machine
        env["MASTER_ADDR"] = "127.0.0.1"
    return env


def start(roots: Sequence[Path], port: int | None = None, master_addr: bool = True) -> list[subprocess.Popen[str]]:
    port = port or free_port()
    return [subprocess.Popen([sys.executable, "-m", "tsa", "train"], env=host_env(root, port, master_addr),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for root in roots]


def finish(procs: Sequence[subprocess.Popen[str]], started: float, timeout: float = 300) -> Outcome:
    outputs = [proc.communicate(timeout=timeout)[0] for proc in procs]
    return Outcome([proc.returncode for proc in procs], outputs, time.monotonic() - started)


def run_hosts(roots: Sequence[Path], timeout: float = 300, master_addr: bool = True) -> Outcome:
    started = time.monotonic()
    return finish(start(roots, master_addr=master_addr), started, timeout)


def write_host_data(folder: Path, host: str, seed: int) -> None:
    """Parquet channels of this host's shard; ids name the host, so a gathered file shows whose row it is."""
    cfg = load_config(HP).model
    for offset, (channel, rows) in enumerate(SHARD_ROWS[host].items()):
        arrays = generate(cfg, rows, seed=seed * 10 + offset)
        ids = np.array([f"{host}-{channel}-{i}" for i in range(rows)])
        half = rows // 2  # two objects per host and channel, as S3 keys would be
        for part, (lo, hi) in enumerate(((0, half), (half, rows))):
            write_parquet(folder / channel / f"part-{part}.parquet", {k: v[lo:hi] for k, v in arrays.items()},
                          row_group_rows=64, ids=ids[lo:hi])


def load_config(hyperparameters: dict[str, str]) -> JobConfig:
    return JobConfig.from_hyperparameters(hyperparameters)


def cluster_jobs(base: Path, hyperparameters: dict[str, str], *, inputdataconfig: dict | None = None,
                 resourceconfig: dict | None = None, data: dict[str, Path] | None = None) -> list[Path]:
    """One job folder per host (`algo-1`, `algo-2`), each with its own channels."""
    roots = []
    for seed, host in enumerate(HOSTS, start=1):
        folder = data[host] if data else base / f"data-{host}"
        if not data:
            write_host_data(folder, host, seed)
        resources = {"current_host": host, "hosts": HOSTS, **(resourceconfig or {})}
        root = make_job(base / host, hyperparameters, resourceconfig=resources, data=folder)
        if inputdataconfig is not None:
            (root / "input/config/inputdataconfig.json").write_text(json.dumps(inputdataconfig))
        roots.append(root)
    return roots


def mann_whitney_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting half: the AUC, computed pair by pair."""
    positive, negative = scores[labels == 1], scores[labels == 0]
    greater = (positive[:, None] > negative[None, :]).sum()
    ties = (positive[:, None] == negative[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(positive) * len(negative)))


def score_union(model_dir: Path, roots: Sequence[Path], channel: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Every host's rows of `channel`, scored here by the saved model in one process: ids, P(fraud), labels."""
    model, config = load_weights(model_dir)
    ids, probabilities, labels = [], [], []
    for root in roots:
        source = open_channel(Channel(channel, root / "input/data" / channel), config.data, config.model)
        rows = np.arange(source.num_rows)
        with torch.no_grad():
            inputs, y = model_inputs(source.batch(rows, config.model.model_type), config.model)
            scores, _ = model(**inputs)
        ids.extend(str(i) for i in source.ids(rows))
        probabilities.append(positive_probability(scores).numpy())
        labels.append(y.numpy())
    return ids, np.concatenate(probabilities), np.concatenate(labels)


def predictions_file(root: Path, split: str) -> dict[str, tuple[int, float]]:
    lines = (root / f"output/data/predictions_{split}.csv").read_text().splitlines()[1:]
    return {key: (int(label), float(score)) for key, label, score in (line.split(",") for line in lines)}


@pytest.fixture(scope="module")
def sharded_job(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    roots = cluster_jobs(tmp_path_factory.mktemp("sharded"), HP, inputdataconfig=SHARDED)
    outcome = run_hosts(roots)
    assert outcome.codes == [0, 0], outcome.show()
    assert "cluster: 2 hosts agree" in outcome.outputs[0]
    return roots


@pytest.mark.xdist_group("sharded")
@pytest.mark.parametrize("split", ["validation", "calibration"])
def test_a_sharded_evaluation_covers_every_hosts_rows(sharded_job: list[Path], split: str) -> None:
    master = sharded_job[0]
    ids, expected, labels = score_union(master / "model", sharded_job, split)
    assert len(ids) == sum(rows[split] for rows in SHARD_ROWS.values())
    written = predictions_file(master, split)
    assert sorted(written) == sorted(ids)  # every row of both hosts once, keyed by its own id
    for key, probability, label in zip(ids, expected, labels, strict=True):
        assert written[key][0] == label
        assert abs(written[key][1] - probability) <= 1e-6, key
    auc = mann_whitney_auc(expected, labels)
    assert metrics(master)["final"][split]["auc"] == round(auc, 4)
    prefix = "" if split == "validation" else "cali_"
    score_lines = (master / f"model/{prefix}score_file.csv").read_text().splitlines()
    assert np.allclose(sorted(float(x) for x in score_lines), sorted(expected), atol=1e-9)


@pytest.mark.xdist_group("sharded")
def test_b_model_selection_uses_the_auc_of_every_hosts_rows(sharded_job: list[Path]) -> None:
    result = metrics(sharded_job[0])
    best = result["epochs"][result["best_epoch"]]
    assert round(best["validation_auc"], 4) == result["final"]["validation"]["auc"]
    # the percentile map is built from all 600 calibration scores
    _, calibration, _ = score_union(sharded_job[0] / "model", sharded_job, "calibration")
    table = json.loads((sharded_job[0] / "model/percentile_score.json").read_text())
    assert abs(table[500][0] - float(np.percentile(calibration, 50))) <= 1e-6
    assert not (sharded_job[1] / "model/model.safetensors").exists()  # one writer: global rank 0


@pytest.mark.xdist_group("sharded")
def test_c_a_stopped_sharded_job_resumes_on_every_host_to_the_uninterrupted_weights(
        sharded_job: list[Path], tmp_path: Path) -> None:
    data = {host: root / "input/data" for host, root in zip(HOSTS, sharded_job, strict=True)}
    roots = cluster_jobs(tmp_path, HP, inputdataconfig=SHARDED, data={h: p.resolve() for h, p in data.items()})
    started = time.monotonic()
    procs = start(roots)
    assert procs[0].stdout is not None
    for line in procs[0].stdout:
        if line.startswith("METRIC step=13;"):  # epoch 1 (10 steps an epoch)
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            break
    stopped = finish(procs, started)
    assert stopped.codes == [143, 143], stopped.show()
    assert (roots[0] / "checkpoints/last.ckpt").is_file()

    # Without SageMaker's restore, the hosts hold different checkpoints: both refuse at once, the same way.
    refused = run_hosts(roots)
    assert refused.codes == [2, 2], refused.show()
    assert refused.seconds < 60
    first_lines = {refused.failure(root).splitlines()[0] for root in roots}
    assert len(first_lines) == 1 and "the hosts hold different checkpoints" in first_lines.pop()

    for path in (roots[0] / "checkpoints").iterdir():  # what SageMaker's restore of checkpoint_s3_uri does
        shutil.copy2(path, roots[1] / "checkpoints" / path.name)
    resumed = run_hosts(roots)
    assert resumed.codes == [0, 0], resumed.show()
    assert all("resuming from" in output for output in resumed.outputs)
    ours = load_file(str(roots[0] / "model/model.safetensors"))
    reference = load_file(str(sharded_job[0] / "model/model.safetensors"))
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[key], reference[key]) for key in ours)
    assert metrics(roots[0])["final"] == metrics(sharded_job[0])["final"]


def test_d_a_sharded_npy_channel_is_refused_naming_the_layout(tmp_path: Path) -> None:
    root = make_job(tmp_path / "job", {**TINY, "max_epoch": "1"}, rows="train=64,validation=32")
    (root / "input/config/inputdataconfig.json").write_text(json.dumps({
        "train": {"TrainingInputMode": "File", "S3DistributionType": "ShardedByS3Key"}}))
    for array in sorted((root / "input/data/train").glob("*.npy"))[:2]:  # a host got 2 of the arrays
        array.unlink()
    proc = run_job(root)
    assert proc.returncode == 2, proc.stdout[-2000:]
    first = (root / "output/failure").read_text().splitlines()[0]
    assert "channel 'train'" in first and "ShardedByS3Key" in first and "Parquet" in first
    assert not (root / "model/model.safetensors").exists()


# --- CheckpointConfig.LocalPath -------------------------------------------------------------------

def test_e_checkpointconfig_local_path_is_the_checkpoint_folder(tmp_path: Path) -> None:
    root = make_job(tmp_path / "job", {**TINY, "max_epoch": "1"}, rows="train=64,validation=32")
    local = tmp_path / "ckpt" / "sub"
    (root / "input/config/checkpointconfig.json").write_text(json.dumps({"LocalPath": str(local),
                                                                         "S3Uri": "s3://bucket/key"}))
    first = run_job(root)
    assert first.returncode == 0, first.stdout[-2000:]
    assert f"checkpoint folder: {local}" in first.stdout
    assert {p.name for p in local.iterdir()} == {"last.ckpt", "best-model.safetensors"}
    assert not (root / "checkpoints/last.ckpt").exists()
    weights = (root / "model/model.safetensors").read_bytes()
    second = run_job(root)
    assert second.returncode == 0, second.stdout[-2000:]
    assert f"resuming from {local / 'last.ckpt'}" in second.stdout
    assert (root / "model/model.safetensors").read_bytes() == weights

    config = json.loads((root / "input/config/hyperparameters.json").read_text())
    (root / "input/config/hyperparameters.json").write_text(json.dumps({**config, "checkpoint_dir": "/other"}))
    refused = run_job(root)
    assert refused.returncode == 2
    line = (root / "output/failure").read_text().splitlines()[0]
    assert "'/other'" in line and str(local) in line and "LocalPath" in line


# --- instance groups ------------------------------------------------------------------------------

GROUPS = {"instance_groups": [{"instance_group_name": "cpu", "instance_type": "ml.c5.xlarge", "hosts": ["algo-1"]},
                              {"instance_group_name": "train", "instance_type": "ml.g5.xlarge", "hosts": ["algo-2"]}]}


def group_fields(host: str) -> dict[str, object]:
    group, instance_type = ("cpu", "ml.c5.xlarge") if host == "algo-1" else ("train", "ml.g5.xlarge")
    return {**GROUPS, "current_group_name": group, "current_instance_type": instance_type}


def grouped_jobs(base: Path, hyperparameters: dict[str, str], data: Path) -> list[Path]:
    roots = []
    for host in HOSTS:
        resources = {"current_host": host, "hosts": HOSTS, **group_fields(host)}
        roots.append(make_job(base / host, hyperparameters, resourceconfig=resources, data=data))
    return roots


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_job(tmp_path_factory.mktemp("data") / "job", HP, rows="train=160,validation=96").joinpath("input/data")


def test_f_the_sm_variables_describe_the_instance_groups(tmp_path: Path, shared_data: Path) -> None:
    from tsa.toolkit import sm_environment

    root = grouped_jobs(tmp_path, HP, shared_data)[0]
    paths = JobPaths(root)
    variables = sm_environment(paths, read_resource_config(paths), read_channels(paths), HP)
    assert variables["SM_CURRENT_INSTANCE_TYPE"] == "ml.c5.xlarge"
    assert variables["SM_CURRENT_INSTANCE_GROUP"] == "cpu"
    assert variables["SM_IS_HETERO"] == "true"  # the toolkit's name for it
    assert json.loads(variables["SM_HOSTS"]) == HOSTS


def test_g_only_the_distribution_groups_train(tmp_path: Path, shared_data: Path) -> None:
    hyperparameters = {**HP, "sagemaker_distribution_instance_groups": json.dumps(["train"])}
    roots = grouped_jobs(tmp_path, hyperparameters, shared_data)
    outcome = run_hosts(roots)
    assert outcome.codes == [0, 0], outcome.show()
    assert "not in the training instance groups" in outcome.outputs[0]
    assert not (roots[0] / "model/model.safetensors").exists()
    assert "world: 1 node(s)" in outcome.outputs[1] and (roots[1] / "model/model.safetensors").is_file()


def test_h_hosts_that_would_start_different_process_counts_refuse_together(tmp_path: Path,
                                                                            shared_data: Path) -> None:
    roots = grouped_jobs(tmp_path, HP, shared_data)
    config = roots[1] / "input/config/hyperparameters.json"  # as a host with another device count would
    config.write_text(json.dumps({**HP, "cpu_processes": "2"}))
    outcome = run_hosts(roots)
    assert outcome.codes == [2, 2], outcome.show()
    assert outcome.seconds < 60
    for root in roots:
        line = outcome.failure(root).splitlines()[0]
        assert "algo-1 (group 'cpu', ml.c5.xlarge) 1 cpu process(es)" in line
        assert "algo-2 (group 'train', ml.g5.xlarge) 2 cpu process(es)" in line and "instance_groups" in line


# --- hosts that do not resolve, do not join, or fail ---------------------------------------------

def test_i_an_unresolvable_host_fails_in_bounded_time_naming_it(tmp_path: Path, shared_data: Path) -> None:
    hosts = ["localhost", "no-such-host.invalid"]  # no MASTER_ADDR: every host name must resolve, as on SageMaker
    root = make_job(tmp_path / "job", {**HP, "host_resolution_timeout_s": "3"}, data=shared_data,
                    resourceconfig={"current_host": "localhost", "hosts": hosts})
    outcome = run_hosts([root], master_addr=False)
    assert outcome.codes == [2], outcome.show()
    assert 3 <= outcome.seconds < 30
    line = outcome.failure(root).splitlines()[0]
    assert line.startswith("host 'no-such-host.invalid' of resourceconfig.json did not resolve within 3 s")


@pytest.mark.parametrize("present", ["algo-1", "algo-2"])
def test_j_a_host_that_never_joins_fails_the_other_in_bounded_time(tmp_path: Path, shared_data: Path,
                                                                   present: str) -> None:
    root = make_job(tmp_path / present, {**HP, "rendezvous_timeout_s": "3"}, data=shared_data,
                    resourceconfig={"current_host": present, "hosts": HOSTS})
    outcome = run_hosts([root])
    assert outcome.codes == [2], outcome.show()
    assert 3 <= outcome.seconds < 30
    line = outcome.failure(root).splitlines()[0]
    if present == "algo-1":
        assert line.startswith("host(s) algo-2 did not join the job within 3 s")
    else:
        assert line.startswith("the master host 'algo-1' did not answer at 127.0.0.1:")


def test_k_sigterm_ends_the_wait_for_another_host_within_5_s(tmp_path: Path, shared_data: Path) -> None:
    root = make_job(tmp_path / "algo-1", HP, data=shared_data,
                    resourceconfig={"current_host": "algo-1", "hosts": HOSTS})
    started = time.monotonic()
    proc = start([root])[0]
    assert proc.stdout is not None
    for line in proc.stdout:
        if "rendezvous: waiting" in line:
            break
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    outcome = finish([proc], started, timeout=30)
    assert outcome.codes == [143], outcome.show()
    assert time.monotonic() - signalled < 5
    assert "while waiting for the hosts algo-1, algo-2 to join" in outcome.failure(root)


def test_l_a_host_that_fails_its_checks_stops_every_host_at_once(tmp_path: Path, shared_data: Path) -> None:
    roots = [make_job(tmp_path / host, HP, data=shared_data, resourceconfig={"current_host": host, "hosts": HOSTS})
             for host in HOSTS]
    broken = tmp_path / "broken"
    shutil.copytree(shared_data, broken)
    shutil.rmtree(broken / "validation")
    (broken / "validation").mkdir()  # host 2's validation channel came down empty
    (roots[1] / "input/data").unlink()
    (roots[1] / "input/data").symlink_to(broken)
    outcome = run_hosts(roots)
    assert outcome.codes == [2, 2], outcome.show()
    assert outcome.seconds < 60
    assert outcome.failure(roots[1]).startswith("channel 'validation'")
    assert outcome.failure(roots[0]).startswith("host algo-2 failed its checks before training, so every host stops: "
                                                "channel 'validation'")


@pytest.mark.xdist_group("sharded")
def test_m_a_host_killed_during_training_ends_the_other_with_a_clear_cause(sharded_job: list[Path],
                                                                           tmp_path: Path) -> None:
    data = {host: (root / "input/data").resolve() for host, root in zip(HOSTS, sharded_job, strict=True)}
    roots = cluster_jobs(tmp_path, HP, inputdataconfig=SHARDED, data=data)
    started = time.monotonic()
    procs = start(roots)
    assert procs[0].stdout is not None
    for line in procs[0].stdout:
        if line.startswith("METRIC step=3;"):
            procs[1].send_signal(signal.SIGKILL)  # host 2 vanishes (a hardware failure, the OOM killer)
            break
    killed_at = time.monotonic()
    outcome = finish(procs, started, timeout=120)
    assert outcome.codes[0] == 2, outcome.show()
    assert time.monotonic() - killed_at < 60
    assert outcome.failure(roots[0]).startswith("lost another process of the job during training")
    assert not (roots[0] / "model/model.safetensors").exists()


# --- `distribution` without an entry point ----------------------------------------------------------

@pytest.mark.parametrize(("flags", "code"), [({"sagemaker_mpi_enabled": "true"}, 2),
                                             ({"mp_parameters": json.dumps({"partitions": 2})}, 2),
                                             ({"sagemaker_distributed_dataparallel_enabled": "true"}, 2),
                                             ({"sagemaker_mpi_enabled": "false",
                                               "sagemaker_torch_distributed_enabled": "true"}, 0)],
                         ids=["mpi", "modelparallel", "smddp", "torch_distributed_is_what_it_does"])
def test_n_the_built_in_job_refuses_distributions_it_cannot_honour(tmp_path: Path, shared_data: Path,
                                                                   flags: dict[str, str], code: int) -> None:
    root = make_job(tmp_path / "job", {**HP, "max_epoch": "1", **flags}, data=shared_data)
    proc = run_job(root)
    assert proc.returncode == code, proc.stdout[-2000:]
    if code:
        line = (root / "output/failure").read_text().splitlines()[0]
        key = next(iter(flags))
        assert line.startswith(f"hyperparameter '{key}' = ") and "torch_distributed" in line
        assert not (root / "model").exists() or not any((root / "model").iterdir())
