"""Whole legacy training runs: reading a run-fixture folder and running `tsa train` on its cases.

The folder is `$TSA_LEGACY_RUN_FIXTURES` (default: the vendored `tests/fixtures/legacy_tsa_run`);
its `manifest.json` lists the cases (format: ../shared/docs/legacy_run_fixtures.md). Nothing
here names a case: every case runs the same way, so any fixture set of the same format runs.

A case runs exactly as the fixture doc prescribes: a copy of its job folder, `cpu_processes` =
the case's world size, one thread per process (`OMP_NUM_THREADS=1`), and `trace=true` so the
job records what the comparison needs (rows, per-batch losses, RNG and weight digests).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.jobs import free_port
from tsa.training.trace import read_trace

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_tsa_run"
RUN_FIXTURE_DIR = Path(os.environ.get("TSA_LEGACY_RUN_FIXTURES", DEFAULT_DIR))
FORMAT = "legacy_tsa_run/v1"
JOB_TIMEOUT_S = 600


def run_manifest() -> dict[str, Any]:
    path = RUN_FIXTURE_DIR / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"no run-fixture manifest at {path} (set TSA_LEGACY_RUN_FIXTURES to a fixture folder)")
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: format {data.get('format')!r}, expected {FORMAT!r}")
    return data


def run_cases() -> list[Any]:
    """pytest params of every case; one xdist group per case, so its job runs once."""
    return [pytest.param(entry, id=entry["case_id"], marks=pytest.mark.xdist_group(f"run-{entry['case_id']}"))
            for entry in run_manifest()["cases"]]


def tensor_sha1(tensor: torch.Tensor) -> str:
    """The fixture's weight digest: SHA-1 (16 hex digits) of the raw bytes."""
    raw = tensor.detach().contiguous().view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
    return hashlib.sha1(raw).hexdigest()[:16]


@dataclass
class CaseRun:
    """One case's expected record and our job's outputs."""

    entry: dict[str, Any]
    expected: dict[str, Any]
    root: Path
    log: str
    returncode: int
    traces: list[list[dict[str, Any]]] = field(default_factory=list)  # per rank

    @property
    def world_size(self) -> int:
        return int(self.expected["world_size"])

    def metrics(self) -> dict[str, Any]:
        return json.loads((self.root / "model/metrics.json").read_text())

    def epoch_records(self, rank: int) -> list[dict[str, Any]]:
        return [r for r in self.traces[rank] if "epoch" in r and "final" not in r]

    def init_record(self, rank: int) -> dict[str, Any]:
        return next(r for r in self.traces[rank] if r.get("init"))


def prepare_job(entry: dict[str, Any], root: Path, **extra: str) -> dict[str, Any]:
    """Copy the case's job folder to `root` and set the run options; returns the expected record."""
    expected = torch.load(RUN_FIXTURE_DIR / entry["case_id"] / "expected.pt", weights_only=True)
    shutil.copytree(RUN_FIXTURE_DIR / entry["case_id"] / "job", root)
    hp_file = root / "input/config/hyperparameters.json"
    hyperparameters = json.loads(hp_file.read_text())
    hyperparameters.update({"cpu_processes": str(expected["world_size"]), "trace": "true", **extra})
    hp_file.write_text(json.dumps(hyperparameters))
    return expected


def job_env(root: Path) -> dict[str, str]:
    return {**os.environ, "SAGEMAKER_BASE_DIR": str(root), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "MASTER_PORT": str(free_port())}


def start_job(root: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tsa", "train"], env=job_env(root), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(entry: dict[str, Any], expected: dict[str, Any], root: Path, proc: subprocess.Popen[str],
           log: str = "") -> CaseRun:
    out, _ = proc.communicate(timeout=JOB_TIMEOUT_S)
    run = CaseRun(entry, expected, root, log + out, proc.returncode)
    trace_dir = root / "output/data/trace"
    if run.returncode == 0:
        run.traces = [read_trace(trace_dir / f"rank{rank}.jsonl") for rank in range(run.world_size)]
    return run


def run_case(entry: dict[str, Any], root: Path) -> CaseRun:
    """`tsa train` on a fresh copy of the case's job folder, uninterrupted."""
    expected = prepare_job(entry, root)
    return finish(entry, expected, root, start_job(root))


def steps_per_epoch(expected: dict[str, Any]) -> int:
    return len(expected["epochs"][0]["train_step_losses"][0])


def run_case_with_stop(entry: dict[str, Any], root: Path) -> tuple[CaseRun, str, int]:
    """SIGTERM in the middle of the second epoch, then the same job again (it resumes).

    Returns the resumed run, the stopped run's log and its exit code.
    """
    expected = prepare_job(entry, root, log_every_n_steps="1", stop_check_every_n_steps="1")
    per_epoch = steps_per_epoch(expected)
    at_step = per_epoch + max(per_epoch // 2, 1)  # global steps are counted from 1
    proc = start_job(root)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(f"METRIC step={at_step};"):
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=JOB_TIMEOUT_S)
    stopped_log = "".join(seen) + rest
    resumed = finish(entry, expected, root, start_job(root))
    return resumed, stopped_log, proc.returncode
