"""Faults a job meets at start: unusable checkpoints, another job's checkpoint, a bad cluster file.

Run: .venv/bin/pytest tests/unit/test_faults.py   (each case is a real `tsa train` process)

Every row: what is wrong -> exit code 2, the failure file's first line names the file and the
cause, no traceback in it, `model/` holds nothing new, and no payload in the input ever runs.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.jobs import TINY, make_job, run_job

pytestmark = pytest.mark.slow

QUICK = {**TINY, "max_epoch": "1"}
ROWS = "train=64,validation=32,calibration=32"


class Payload:
    """A pickle that runs a shell command when it is unpickled without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished job: its data and its last.ckpt are the material of the cases."""
    root = make_job(tmp_path_factory.mktemp("trained") / "job", QUICK, rows=ROWS)
    proc = run_job(root)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return root


def truncated(checkpoint: Path, source: Path) -> None:
    checkpoint.write_bytes(source.read_bytes()[:1000])


def random_bytes(checkpoint: Path, source: Path) -> None:
    checkpoint.write_bytes(os.urandom(4096))


def pickle_payload(checkpoint: Path, source: Path) -> None:
    checkpoint.write_bytes(pickle.dumps({"state_dict": Payload(checkpoint.parent / "PAYLOAD_RAN")}))


def foreign_file(checkpoint: Path, source: Path) -> None:
    import torch

    torch.save({"epoch": 3, "state_dict": {}}, checkpoint)


def copied(checkpoint: Path, source: Path) -> None:
    shutil.copyfile(source, checkpoint)


CHECKPOINT_FAULTS: list[tuple[str, Callable[[Path, Path], None], dict[str, str], str]] = [
    ("truncated", truncated, {}, "cannot be read safely"),
    ("random_bytes", random_bytes, {}, "cannot be read safely"),
    ("pickle_with_code", pickle_payload, {}, "cannot be read safely"),
    ("not_written_by_tsa", foreign_file, {}, "was not written by tsa-training"),
    ("other_model_config", copied, {"n_layers_order": "2"}, "model.n_layers_order (1 in the checkpoint, 2 now)"),
    ("other_training_config", copied, {"scheduler_maxlr": "0.01"}, "train.scheduler_maxlr"),
    ("other_job_name", copied, {"test_name": "other"}, "runtime.test_name ('tiny' in the checkpoint, 'other' now)"),
]


@pytest.mark.parametrize(("make", "changes", "expected"), [c[1:] for c in CHECKPOINT_FAULTS],
                         ids=[c[0] for c in CHECKPOINT_FAULTS])
def test_an_unusable_checkpoint_is_refused_before_training(tmp_path: Path, trained: Path,
                                                           make: Callable[[Path, Path], None], changes: dict[str, str],
                                                           expected: str) -> None:
    root = make_job(tmp_path / "job", {**QUICK, **changes}, data=trained / "input/data")
    checkpoint = root / "checkpoints/last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    make(checkpoint, trained / "checkpoints/last.ckpt")
    proc = run_job(root, env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})  # explicit weights_only=True must win
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    failure = (root / "output/failure").read_text()
    first = failure.splitlines()[0]
    assert f"checkpoint '{checkpoint}'" in first and expected in first
    assert "Traceback" not in failure
    assert not (root / "model").exists() or not any((root / "model").iterdir())
    assert not (checkpoint.parent / "PAYLOAD_RAN").exists(), "the pickle's payload ran"


def test_other_data_in_the_same_folder_is_refused(tmp_path: Path, trained: Path) -> None:
    root = make_job(tmp_path / "job", QUICK, rows="train=80,validation=32,calibration=32")
    shutil.copytree(trained / "checkpoints", root / "checkpoints")
    proc = run_job(root)
    assert proc.returncode == 2
    assert "channel sizes" in (root / "output/failure").read_text().splitlines()[0]


def test_ignore_checkpoint_trains_from_the_start(tmp_path: Path, trained: Path) -> None:
    root = make_job(tmp_path / "job", {**QUICK, "n_layers_order": "2", "ignore_checkpoint": "true"},
                    data=trained / "input/data")
    shutil.copytree(trained / "checkpoints", root / "checkpoints")
    proc = run_job(root)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "training from the start" in proc.stdout
    assert json.loads((root / "model/config.json").read_text())["model"]["n_layers_order"] == 2


def test_a_checkpoint_folder_that_is_a_file_fails_at_start(tmp_path: Path, trained: Path) -> None:
    root = make_job(tmp_path / "job", QUICK, data=trained / "input/data")
    (root / "checkpoints").write_text("not a folder")
    proc = run_job(root)
    assert proc.returncode == 2
    first = (root / "output/failure").read_text().splitlines()[0]
    assert first.startswith(f"checkpoint folder '{root / 'checkpoints'}' is not writable")
    assert "METRIC" not in proc.stdout, "refused before training"


def test_sigterm_only_sets_a_flag_and_the_next_safe_point_stops() -> None:
    """The handler never raises where the interpreter happens to be (e.g. inside logging)."""
    import signal

    from tsa.training.stop import STOP, StopRequested, check_stop, install_stop_handler

    previous = signal.getsignal(signal.SIGTERM)
    try:
        install_stop_handler()
        os.kill(os.getpid(), signal.SIGTERM)  # delivered here; nothing is raised by the handler itself
        assert STOP.requested
        with pytest.raises(StopRequested, match="training stopped by SIGTERM before training"):
            check_stop("before training")
    finally:
        STOP.requested = False
        signal.signal(signal.SIGTERM, previous)


def test_a_run_that_diverges_stops_with_a_cause_and_no_model(tmp_path: Path, trained: Path) -> None:
    """Finite but extreme feature values overflow inside the model: no NaN model is shipped."""
    import numpy as np

    root = make_job(tmp_path / "job", QUICK, rows=ROWS)
    engineered = root / "input/data/train/train_X_num_v0.npy"
    np.save(engineered, np.full_like(np.load(engineered), 1e30))
    proc = run_job(root)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    first = (root / "output/failure").read_text().splitlines()[0]
    assert first.startswith("training diverged in epoch 0: the mean training loss is nan")
    assert not (root / "model").exists() or not any((root / "model").iterdir())


def test_a_master_host_that_never_resolves_fails_with_its_name() -> None:
    """Bounded wait with log lines, then the host named (no real DNS query leaves the sandbox here)."""
    import socket
    import time

    from tsa.errors import ChannelError
    from tsa.training.plan import wait_for_host

    calls = []

    def unresolvable(host: str) -> None:
        calls.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    started = time.monotonic()
    with pytest.raises(ChannelError, match=r"^master host 'algo-1' did not resolve within 0.3 s"):
        wait_for_host("algo-1", timeout_s=0.3, poll_s=0.05, resolve=unresolvable)
    assert 0.3 <= time.monotonic() - started < 5 and len(calls) > 1
    wait_for_host("localhost", timeout_s=1)  # resolves from /etc/hosts


def test_convert_refuses_an_object_array_naming_the_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    import numpy as np

    source = tmp_path / "train"
    source.mkdir()
    np.save(source / "train_Y_v0.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    proc = subprocess.run([sys.executable, "-m", "tsa", "data", "convert", str(source), str(tmp_path / "out"),
                           "--to", "parquet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "file 'train_Y_v0.npy' array 'Y': not a readable .npy file" in proc.stderr
    assert "Traceback" not in proc.stderr
