"""Local-mode runner: the same job as on SageMaker, against a local `/opt/ml`-shaped folder.

    python local_mode/run.py --hyperparameters hyperparameters/smoke.json --synth --job-dir runs/smoke
    python local_mode/run.py ... --engine docker --image tsa-training:local --hosts 2
    python local_mode/run.py ... --engine sagemaker --image tsa-training:local --hosts 2

It writes the job folder SageMaker would mount (`input/config/{hyperparameters,inputdataconfig,
resourceconfig}.json` in the chosen launcher encoding, `input/data/<channel>/`, `model/`,
`output/`, `checkpoints/`) and runs it with one engine:

- `process`: `tsa train` in this machine's Python with `SAGEMAKER_BASE_DIR` (no Docker);
- `docker`: `docker run IMAGE train` with the folder mounted at `/opt/ml` and a sane `--shm-size`;
- `sagemaker`: the SageMaker Python SDK's local mode (`sagemaker>=2.257,<3`, Docker Compose).

`--hosts N` emulates an N-node job: N job folders `algo-1..N` (process: N processes rendezvous on
127.0.0.1; docker: N containers named algo-1..N on one internal network). Exit code: the first
non-zero exit code of a host, else 0.

S3 (boto3, `s3_sync.py`): `--channel train=s3://bucket/prefix/` downloads the channel first (File
mode); `--checkpoint-s3-uri s3://bucket/ckpt/` syncs each host's `checkpoints/` down before the
job and up after it, whatever its exit code (a stopped job's `last.ckpt` included), as SageMaker
does. A local endpoint: `AWS_ENDPOINT_URL_S3=http://127.0.0.1:5000` (e.g. `moto_server`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from s3_sync import S3Error, sync_down, sync_up
from tsa.config import JobConfig, typed_hyperparameters
from tsa.contract import JobPaths, encode_hyperparameters, load_hyperparameters, read_json_object

ENGINES = ("process", "docker", "sagemaker")
DEFAULT_ROWS = "train=4000,validation=1000,calibration=1000"
SHM_SIZE = "1g"


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link a channel's files when possible (no extra disk), else copy them."""
    target.mkdir(parents=True, exist_ok=True)
    for item in sorted(source.iterdir()):
        if item.is_file():
            try:
                os.link(item, target / item.name)
            except OSError:
                shutil.copy2(item, target / item.name)


def write_job_folder(paths: JobPaths, raw_hyperparameters: dict[str, Any], channels: dict[str, Path],
                     encoding: str, host: str, hosts: list[str]) -> JobConfig:
    """One host's `/opt/ml` folder; returns its config, validated as the job will read it."""
    paths.config_dir.mkdir(parents=True, exist_ok=True)
    for name, folder in channels.items():
        link_or_copy(folder, paths.data_dir / name)
    (paths.inputdataconfig_file).write_text(
        json.dumps({name: {"TrainingInputMode": "File"} for name in channels}, indent=2))
    paths.resourceconfig_file.write_text(json.dumps({"current_host": host, "hosts": hosts}, indent=2))
    paths.hyperparameters_file.write_text(json.dumps(raw_hyperparameters))  # to validate it where the job reads it
    config = JobConfig.from_hyperparameters(load_hyperparameters(paths))
    wire = encode_hyperparameters(typed_hyperparameters(raw_hyperparameters, config), encoding)  # type: ignore[arg-type]
    paths.hyperparameters_file.write_text(json.dumps(wire, indent=2))
    for folder in (paths.model_dir, paths.output_dir, paths.checkpoint_dir):
        folder.mkdir(parents=True, exist_ok=True)
    return config


def download_channel(name: str, source: str, folder: Path) -> Path:
    """A channel's folder: `source` itself, or its S3 prefix downloaded into `folder/<name>` (File mode)."""
    if not source.startswith("s3://"):
        return Path(source)
    target = folder / name
    shutil.rmtree(target, ignore_errors=True)
    count = sync_down(source, target, what=f"channel {name}")
    if count == 0:
        raise S3Error(f"channel {name} {source}: no objects under this prefix: upload the channel's files there "
                      "or fix the URI")
    print(f"channel {name}: {count} object(s) from {source}")
    return target


def synthesize(hyperparameters_file: Path, target: Path, rows: str, fmt: str) -> dict[str, Path]:
    subprocess.run([sys.executable, "-m", "tsa", "data", "synth", "--hyperparameters", str(hyperparameters_file),
                    "--output", str(target), "--rows", rows, "--format", fmt], check=True)
    return {p.name: p for p in sorted(target.iterdir()) if p.is_dir()}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_processes(roots: list[Path]) -> int:
    """`tsa train` per host folder; several hosts rendezvous on 127.0.0.1."""
    base_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if len(roots) > 1:
        base_env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), GLOO_SOCKET_IFNAME="lo")
    procs = [subprocess.Popen([sys.executable, "-m", "tsa", "train"], env={**base_env, "SAGEMAKER_BASE_DIR": str(r)})
             for r in roots]
    codes = [p.wait() for p in procs]
    return next((c for c in codes if c), 0)


def run_containers(roots: list[Path], image: str) -> int:
    """`docker run IMAGE train` per host folder, on one internal network when several."""
    network = "none"
    if len(roots) > 1:
        network = f"tsa-local-{os.getpid()}"
        subprocess.run(["docker", "network", "create", "--internal", network], check=True, capture_output=True)
    try:
        procs = []
        for root in roots:
            host = root.name if len(roots) > 1 else "algo-1"
            command = ["docker", "run", "--rm", "--name", f"{host}-{os.getpid()}", "--hostname", host,
                       "--network", network, "--shm-size", SHM_SIZE, "-v", f"{root.resolve()}:/opt/ml"]
            if len(roots) > 1:
                command += ["--network-alias", host, "-e", "GLOO_SOCKET_IFNAME=eth0"]
            procs.append(subprocess.Popen([*command, image, "train"]))
        codes = [p.wait() for p in procs]
    finally:
        if network != "none":
            subprocess.run(["docker", "network", "rm", network], capture_output=True)
    return next((c for c in codes if c), 0)


def run_sagemaker(hyperparameters: dict[str, Any], channels: dict[str, Path], image: str, hosts: int,
                  output: Path) -> int:
    """The SageMaker SDK's local mode (the estimator `tsa launch` builds, with a LocalSession)."""
    from tsa.launch import LaunchSpec, build_estimator, local_session

    output.mkdir(parents=True, exist_ok=True)
    spec = LaunchSpec(image_uri=image, role="arn:aws:iam::000000000000:role/LocalMode", instance_count=hosts,
                      instance_type="local", hyperparameters=hyperparameters,
                      channels={name: f"file://{path.resolve()}" for name, path in channels.items()},
                      output_path=f"file://{output.resolve()}")
    estimator = build_estimator(spec, session=local_session())
    estimator.fit(inputs=spec.inputs(), wait=True, logs="All")
    print(f"SageMaker local mode: model artifacts at {estimator.model_data}")
    return 0


def report(paths: JobPaths) -> None:
    metrics_file = paths.model_dir / "metrics.json"
    if metrics_file.is_file():
        final = json.loads(metrics_file.read_text())["final"]
        summary = ", ".join(f"{split} AUC {values['auc']}" for split, values in final.items())
        print(f"\nartifacts: {paths.model_dir}\npredictions and plots: {paths.output_data_dir}\nfinal: {summary}")
    elif paths.failure_file.is_file():
        print(f"\njob failed: {paths.failure_file.read_text().splitlines()[0]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hyperparameters", type=Path, required=True, help="hyperparameters JSON (any encoding)")
    parser.add_argument("--channel", action="append", default=[], metavar="NAME=FOLDER|s3://...",
                        help="a channel folder or S3 prefix (repeatable): train=..., validation=..., calibration=...")
    parser.add_argument("--synth", action="store_true", help="generate synthetic channels for the config")
    parser.add_argument("--rows", default=DEFAULT_ROWS, help="with --synth: rows per channel")
    parser.add_argument("--format", choices=["npy", "parquet"], default="npy", help="with --synth: file format")
    parser.add_argument("--job-dir", type=Path, default=Path("runs/local"))
    parser.add_argument("--fresh", action="store_true", help="delete the job folder first (no resume)")
    parser.add_argument("--engine", choices=ENGINES, default="process")
    parser.add_argument("--image", default="tsa-training:local", help="image for the docker/sagemaker engines")
    parser.add_argument("--hosts", type=int, default=1, help="emulated nodes")
    parser.add_argument("--checkpoint-s3-uri", help="sync checkpoints/ with this S3 prefix (down before, up after)")
    parser.add_argument("--encoding", choices=["str", "json", "v3"], default="str",
                        help="hyperparameter wire encoding (SDK v2 Estimator / framework estimators / SDK v3)")
    args = parser.parse_args()

    start = time.monotonic()
    if args.fresh and args.job_dir.exists():
        shutil.rmtree(args.job_dir)
    raw = read_json_object(args.hyperparameters, required=True) or {}
    channels = {name: download_channel(name, source, args.job_dir / "s3")
                for name, source in (item.split("=", 1) for item in args.channel)}
    if args.synth:
        data = args.job_dir / "data"
        channels = synthesize(args.hyperparameters, data, args.rows, args.format) if not data.exists() else {
            p.name: p for p in sorted(data.iterdir()) if p.is_dir()}
    if args.engine == "sagemaker":
        check = JobPaths(args.job_dir / "validated")  # the SDK writes its own job folders: validate in one first
        config = write_job_folder(check, raw, channels, args.encoding, "algo-1", ["algo-1"])
        code = run_sagemaker(typed_hyperparameters(raw, config), channels, args.image, args.hosts,
                             args.job_dir / "sagemaker")
        print(f"done in {time.monotonic() - start:.0f} s")
        return code
    if args.hosts > 1:
        hosts = [f"algo-{i}" for i in range(1, args.hosts + 1)]
        roots = [args.job_dir / host for host in hosts]
    else:  # one host: the container is named algo-1; a local process runs on localhost
        hosts = ["localhost" if args.engine == "process" else "algo-1"]
        roots = [args.job_dir / "opt_ml"]
    for root, host in zip(roots, hosts, strict=True):
        write_job_folder(JobPaths(root), raw, channels, args.encoding, host, hosts)
        if args.checkpoint_s3_uri:  # one prefix for every host, as SageMaker syncs it (rank 0 writes the files)
            count = sync_down(args.checkpoint_s3_uri, JobPaths(root).checkpoint_dir)
            print(f"checkpoints: {count} file(s) from {args.checkpoint_s3_uri} into {JobPaths(root).checkpoint_dir}")
    code = run_processes(roots) if args.engine == "process" else run_containers(roots, args.image)
    if args.checkpoint_s3_uri:
        for root in roots:
            count = sync_up(JobPaths(root).checkpoint_dir, args.checkpoint_s3_uri)
            print(f"checkpoints: {count} file(s) from {JobPaths(root).checkpoint_dir} to {args.checkpoint_s3_uri}")
    report(JobPaths(roots[0]))
    print(f"done in {time.monotonic() - start:.0f} s (exit code {code})")
    return code


def guarded_main() -> int:
    """`main`, with an S3 location that cannot be used reported in one line (exit 2), not a traceback."""
    try:
        return main()
    except S3Error as exc:
        print(f"local mode: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(guarded_main())
