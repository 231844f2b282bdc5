"""Whole legacy training runs: reading a run-fixture folder and running `tsa train` on its cases.

The folder is `$TSA_LEGACY_RUN_FIXTURES` (default: the vendored `tests/fixtures/legacy_tsa_run`);
its `manifest.json` lists the cases (format: ../shared/docs/legacy_run_fixtures.md). Nothing
here names a case: every case runs the same way, so any fixture set of the same format runs.

A case runs exactly as the fixture doc prescribes: a copy of its job folder, `cpu_processes` =
the case's world size, one thread per process (`OMP_NUM_THREADS=1`), and `trace=true` so the
job records what the comparison needs (rows, per-batch losses, RNG and weight digests).

Intel MKL (torch's CPU BLAS) has two code paths that round differently at these sizes: its
optimised kernels on Intel CPUs and a generic path elsewhere (AMD). A set of runs is reproduced
bit for bit only on the path it was made on, so the suite first finds that path, once per set:
the legacy best model of a case without MoE (its evaluation draws no random numbers) must score
the final validation pass exactly as the legacy did. The jobs then run on that path, chosen with
`mkl_path.c` in `LD_PRELOAD`.
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

from tests.equivalence.fixtures import read_manifest
from tests.jobs import free_port, read_trace

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_tsa_run"
RUN_FIXTURE_DIR = Path(os.environ.get("TSA_LEGACY_RUN_FIXTURES", DEFAULT_DIR))
FORMAT = "legacy_tsa_run/v1"
JOB_TIMEOUT_S = 600


def run_manifest() -> dict[str, Any]:
    return read_manifest(RUN_FIXTURE_DIR, FORMAT, "TSA_LEGACY_RUN_FIXTURES")


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


MKL_PATHS = {"intel": 1, "generic": 0}
PROBE_SCRIPT = ("import sys; from tests.equivalence.runs import legacy_final_scores_reproduced as same; "
                "sys.exit(0 if same(sys.argv[1]) else 3)")


def build_mkl_shim(path_name: str, folder: Path) -> Path:
    """`mkl_path.c` compiled for one MKL code path (needs a C compiler, `cc`)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"libmkl_path_{path_name}.so"
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("the run-fixture suite needs a C compiler (cc) to choose Intel MKL's code path")
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", f"-DMKL_PATH_INTEL={MKL_PATHS[path_name]}", "-o",
                    str(target), str(Path(__file__).with_name("mkl_path.c"))], check=True, capture_output=True)
    return target


def probe_case() -> dict[str, Any]:
    """The manifest's first case without MoE: its evaluation forward is deterministic."""
    for entry in run_manifest()["cases"]:
        if not entry["use_moe"]:
            return entry
    raise ValueError(f"{RUN_FIXTURE_DIR}: every case uses MoE; the MKL path probe needs one without")


def legacy_final_scores_reproduced(case_id: str) -> bool:
    """Score the legacy best model's final validation pass as the legacy did; bit-equal logits?

    Each rank's batches of the legacy sampler order (epoch `files["eval_epoch_index"]`), the rank
    blocks concatenated and cut to N, exactly as `files["vali"]["raw_scores"]` was gathered.
    """
    from tsa.config import JobConfig
    from tsa.contract import Channel
    from tsa.data import model_inputs, open_channel
    from tsa.data.loader import BatchStream
    from tsa.data.sharding import ShardSpec
    from tsa.legacy import load_legacy_state_dict
    from tsa.models import build_model

    torch.set_num_threads(1)
    expected = torch.load(RUN_FIXTURE_DIR / case_id / "expected.pt", weights_only=True)
    config = JobConfig.from_hyperparameters(expected["hyperparameters"])
    model = build_model(config.model)
    load_legacy_state_dict(model, expected["best_state_dict"])
    model.eval()
    source = open_channel(Channel("validation", RUN_FIXTURE_DIR / case_id / "job/input/data/vali"), config.data,
                          config.model)
    world = int(expected["world_size"])
    blocks = []
    with torch.no_grad():
        for rank in range(world):
            stream = BatchStream(source, config.model.model_type, config.train.batch_size,
                                 ShardSpec(rank=rank, world=world, shuffle=True, pad=True))
            stream.set_epoch(int(expected["files"]["eval_epoch_index"]))
            blocks += [model(**model_inputs(batch, config.model)[0])[0] for batch in stream]
    reference = expected["files"]["vali"]["raw_scores"]
    return torch.equal(torch.cat(blocks)[: len(reference)], reference)


def find_mkl_path(folder: Path) -> tuple[str, Path]:
    """The MKL code path that reproduces this fixture set, and its shim (see the module docstring)."""
    case_id = probe_case()["case_id"]
    repo = Path(__file__).resolve().parents[2]
    for path_name in MKL_PATHS:
        shim = build_mkl_shim(path_name, folder)
        probe = subprocess.run(
            [sys.executable, "-c", PROBE_SCRIPT, case_id],
            env={**os.environ, "LD_PRELOAD": str(shim), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)},
            capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
        if probe.returncode == 0:
            return path_name, shim
        if probe.returncode != 3:
            raise RuntimeError(f"MKL path probe failed: {probe.stderr[-2000:]}")
    raise AssertionError(
        f"case {case_id}: neither MKL code path reproduces the legacy's final validation logits bit for bit; "
        "the fixture set was made on a platform this suite cannot reproduce (torch build, BLAS)"
    )


def prepare_job(entry: dict[str, Any], root: Path, **extra: str) -> dict[str, Any]:
    """Copy the case's job folder to `root` and set the run options; returns the expected record."""
    expected = torch.load(RUN_FIXTURE_DIR / entry["case_id"] / "expected.pt", weights_only=True)
    shutil.copytree(RUN_FIXTURE_DIR / entry["case_id"] / "job", root)
    hp_file = root / "input/config/hyperparameters.json"
    hyperparameters = json.loads(hp_file.read_text())
    hyperparameters.update({"cpu_processes": str(expected["world_size"]), "trace": "true", **extra})
    hp_file.write_text(json.dumps(hyperparameters))
    return expected


def job_env(root: Path, mkl_shim: Path) -> dict[str, str]:
    return {**os.environ, "SAGEMAKER_BASE_DIR": str(root), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "MASTER_PORT": str(free_port()), "LD_PRELOAD": str(mkl_shim)}


def start_job(root: Path, mkl_shim: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tsa", "train"], env=job_env(root, mkl_shim),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(entry: dict[str, Any], expected: dict[str, Any], root: Path, proc: subprocess.Popen[str],
           log: str = "") -> CaseRun:
    out, _ = proc.communicate(timeout=JOB_TIMEOUT_S)
    run = CaseRun(entry, expected, root, log + out, proc.returncode)
    trace_dir = root / "output/data/trace"
    if run.returncode == 0:
        run.traces = [read_trace(trace_dir / f"rank{rank}.jsonl") for rank in range(run.world_size)]
    return run


def run_case(entry: dict[str, Any], root: Path, mkl_shim: Path) -> CaseRun:
    """`tsa train` on a fresh copy of the case's job folder, uninterrupted."""
    expected = prepare_job(entry, root)
    return finish(entry, expected, root, start_job(root, mkl_shim))


def steps_per_epoch(expected: dict[str, Any]) -> int:
    return len(expected["epochs"][0]["train_step_losses"][0])


def run_case_with_stop(entry: dict[str, Any], root: Path, mkl_shim: Path) -> tuple[CaseRun, str, int]:
    """SIGTERM in the middle of the second epoch, then the same job again (it resumes).

    Returns the resumed run, the stopped run's log and its exit code.
    """
    expected = prepare_job(entry, root, log_every_n_steps="1", stop_check_every_n_steps="1")
    per_epoch = steps_per_epoch(expected)
    at_step = per_epoch + max(per_epoch // 2, 1)  # global steps are counted from 1
    proc = start_job(root, mkl_shim)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(f"METRIC step={at_step};"):
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=JOB_TIMEOUT_S)
    stopped_log = "".join(seen) + rest
    resumed = finish(entry, expected, root, start_job(root, mkl_shim))
    return resumed, stopped_log, proc.returncode
