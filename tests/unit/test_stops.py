"""A real SIGTERM in every phase of a real `tsa train` process, and the time until it exits.

Run: .venv/bin/pytest tests/unit/test_stops.py   (part of `make test`)

Each job is a tiny one whose phase under test is made long: `tests/slow_phases/sitecustomize.py`
slows each unit of that phase's work (a validation chunk, a training step, an evaluation batch, an
export file) by a fixed time, so that the phase, left alone, would outlast the 5 s bound several
times over. The test waits for the phase's first slowed unit, sends SIGTERM, sends a second one
0.3 s later (it must change nothing), and measures the time to exit: 143 within 5 s, the stop
notice naming the phase as the failure file's first line, and `model/` holding what it held (no
model yet here: nothing). The set-up phase is a real wait (a host that never joins) and script
mode a real user script, neither slowed. Serving's SIGTERM is measured in `test_serving_faults.py`.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.jobs import QUICK, free_port, fresh_environment, make_job, script_job, slowed

pytestmark = pytest.mark.slow

BOUND_S = 5.0
STARTUP_TIMEOUT_S = 120
ROWS = "train=640,validation=640,calibration=64"  # 20 training steps, 20 validation batches (batch_size 32)


@dataclass(frozen=True)
class Phase:
    id: str
    marker: str  # the output line that says the phase is under way
    first_line: str  # what the failure file's first line starts with
    slow_units: str = ""
    slow_settings: str = ""
    hyperparameters: dict[str, str] = field(default_factory=dict)
    resourceconfig: dict[str, object] | None = None
    script: str | None = None


USER_SCRIPT_WAITING = 'import time\nprint("USER waiting", flush=True)\ntime.sleep(120)\n'
STOPPED = "training stopped by SIGTERM"

PHASES = [
    Phase("setup_waiting_for_a_host", "rendezvous: waiting up to 600 s",
          f"{STOPPED} while waiting for the hosts algo-1, algo-2 to join",
          hyperparameters={"rendezvous_timeout_s": "600"},
          resourceconfig={"current_host": "algo-1", "hosts": ["algo-1", "algo-2"]}),
    Phase("data_validation", "SLOW-UNIT tsa.data.validate:_check_chunk",
          f"{STOPPED} before training (while validating the data)",
          slow_units="tsa.data.validate:_check_chunk=0.5", slow_settings="tsa.data.validate:CHUNK_ROWS=32"),
    Phase("training_epoch", "SLOW-UNIT tsa.training.system:TsaSystem.training_step",
          f"{STOPPED} (stop, timeout or spot interruption) at epoch 0, step ",
          slow_units="tsa.training.system:TsaSystem.training_step=0.5"),
    Phase("validation", "SLOW-UNIT tsa.training.evaluation:EvaluationPass.add",
          f"{STOPPED} (stop, timeout or spot interruption) during the validation of epoch 0; checkpoint saved to ",
          slow_units="tsa.training.evaluation:EvaluationPass.add=0.5"),
    Phase("final_scoring", "SLOW-UNIT tsa.training.evaluation:EvaluationPass.add",
          f"{STOPPED} during the final scoring of 'validation'",
          slow_units="tsa.training.evaluation:EvaluationPass.add=0.5@21"),  # after the epoch's 20 batches
    Phase("export", "SLOW-UNIT tsa.artifacts:write_predictions",
          f"{STOPPED} while writing the artifacts",
          slow_units="tsa.artifacts:write_predictions=1;tsa.artifacts:plot_roc_pr=1;tsa.artifacts:plot_curves=1;"
                     "tsa.artifacts:save_weights=1;tsa.artifacts:write_serving=1"),
    Phase("script_mode_user_script", "USER waiting",
          f"{STOPPED}: it was forwarded to the user's entry point, which ended with signal SIGTERM",
          script=USER_SCRIPT_WAITING),
]


def job_for(phase: Phase, tmp_path: Path) -> Path:
    if phase.script is not None:
        return script_job(tmp_path, phase.script)
    return make_job(tmp_path / "job", {**QUICK, **phase.hyperparameters}, rows=ROWS,
                    resourceconfig=phase.resourceconfig)


def start(root: Path, phase: Phase) -> subprocess.Popen[str]:
    env = {**fresh_environment(), "SAGEMAKER_BASE_DIR": str(root), "PYTHONUNBUFFERED": "1",
           **slowed(phase.slow_units, phase.slow_settings)}
    if phase.resourceconfig is not None:
        env.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port_pair())})
    return subprocess.Popen([sys.executable, "-m", "tsa", "train"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def free_port_pair() -> int:
    """A port whose successor (the rendezvous store's) is free too."""
    while True:
        port = free_port()
        try:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue


def wait_for(proc: subprocess.Popen[str], marker: str) -> list[str]:
    """The output up to the line holding `marker` (fails if the job ends or takes too long first)."""
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            return seen
        assert time.monotonic() < deadline, "".join(seen[-40:])
    raise AssertionError(f"the job ended before '{marker}':\n" + "".join(seen[-40:]))


@pytest.mark.parametrize("phase", PHASES, ids=[phase.id for phase in PHASES])
def test_sigterm_ends_the_phase_within_5_s_with_143(phase: Phase, tmp_path: Path) -> None:
    root = job_for(phase, tmp_path)
    proc = start(root, phase)
    try:
        seen = wait_for(proc, phase.marker)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # a second one changes nothing
        rest, _ = proc.communicate(timeout=60)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(seen) + rest
    print(f"{phase.id}: SIGTERM -> exit {proc.returncode} in {elapsed:.2f} s")
    assert proc.returncode == 143, output[-3000:]
    assert elapsed <= BOUND_S, f"{elapsed:.1f} s:\n{output[-3000:]}"
    first = (root / "output/failure").read_text().splitlines()[0]
    assert first.startswith(phase.first_line), first
    model = root / "model"
    assert not model.exists() or not any(model.iterdir()), sorted(p.name for p in model.iterdir())
