"""Script mode's faults before the user's entry point runs: where the code comes from, a silent S3, SIGTERM.

Each job is a real `tsa train` process handing over to the SageMaker training toolkit (`tsa/toolkit.py`).
Run: .venv/bin/pytest tests/unit/test_script_faults.py
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.jobs import bare_script_job, fresh_environment

pytestmark = pytest.mark.slow

RAISING_SCRIPT = "raise ValueError('learning rate 7 is too large')\n"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}


class SilentEndpoint(str):
    """The endpoint's URL; `connected` is set once a client has connected (its request then waits)."""

    connected: threading.Event


@pytest.fixture
def silent_endpoint() -> Iterator[SilentEndpoint]:
    """An HTTP endpoint on 127.0.0.1 that accepts connections and never answers (a stalled S3)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()
    endpoint = SilentEndpoint(f"http://127.0.0.1:{server.getsockname()[1]}")
    endpoint.connected = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue
            endpoint.connected.set()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield endpoint
    stop.set()
    thread.join(5)
    for connection in held:
        connection.close()
    server.close()


def job(tmp_path: Path, source: str | Path, script: str | None = None, **hyperparameters: str) -> Path:
    folder = tmp_path / "source"
    folder.mkdir(exist_ok=True)
    if script is not None:
        (folder / "user_train.py").write_text(script)
    return bare_script_job(tmp_path / "job", source, hyperparameters)


def start(root: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tsa", "train"], text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT,
                            env={**fresh_environment(), "SAGEMAKER_BASE_DIR": str(root), **(env or {})})


def first_line(root: Path) -> str:
    return (root / "output/failure").read_text().splitlines()[0]


@pytest.mark.parametrize("case", ["program_not_in_the_folder", "no_such_folder", "no_source_anywhere",
                                  "program_not_in_code"])
def test_an_entry_point_that_is_not_there_is_refused_at_once(tmp_path: Path, case: str) -> None:
    source: str | Path = tmp_path / "source"
    root = job(tmp_path, source if case != "no_such_folder" else tmp_path / "nowhere",
               script=None if case == "program_not_in_the_folder" else RAISING_SCRIPT)
    config = root / "input/config/hyperparameters.json"
    if case == "no_source_anywhere":
        hyperparameters = json.loads(config.read_text())
        del hyperparameters["sagemaker_submit_directory"]
        config.write_text(json.dumps(hyperparameters))
    if case == "program_not_in_code":  # SageMaker put the code in /opt/ml/code, without the named program
        (root / "code").mkdir()
        (root / "code/other.py").write_text("print('other')\n")
    started = time.monotonic()
    proc = start(root)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 2, output[-2000:]
    assert time.monotonic() - started < 30
    expected = {"program_not_in_the_folder": "hyperparameter 'sagemaker_program' = 'user_train.py': no such file in "
                                             "'sagemaker_submit_directory'",
                "no_such_folder": "hyperparameter 'sagemaker_submit_directory' = ",
                "no_source_anywhere": "hyperparameter 'sagemaker_submit_directory' is missing and ",
                "program_not_in_code": "hyperparameter 'sagemaker_program' = 'user_train.py': no such file in "}[case]
    assert first_line(root).startswith(expected)
    assert "Traceback" not in (root / "output/failure").read_text()


def test_a_submit_directory_on_a_silent_s3_fails_within_a_minute(tmp_path: Path,
                                                                 silent_endpoint: SilentEndpoint) -> None:
    root = job(tmp_path, "s3://bucket/code/sourcedir.tar.gz")
    started = time.monotonic()
    proc = start(root, {**CREDENTIALS, "AWS_ENDPOINT_URL_S3": silent_endpoint})
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 2, output[-2000:]
    assert time.monotonic() - started < 60
    assert first_line(root).startswith(
        "hyperparameter 'sagemaker_submit_directory' = 's3://bucket/code/sourcedir.tar.gz' cannot be read")


def test_sigterm_while_the_code_is_fetched_ends_the_job_within_5_s(tmp_path: Path,
                                                                  silent_endpoint: SilentEndpoint) -> None:
    root = job(tmp_path, "s3://bucket/code/sourcedir.tar.gz")
    proc = start(root, {**CREDENTIALS, "AWS_ENDPOINT_URL_S3": silent_endpoint})
    assert silent_endpoint.connected.wait(60), "the job never asked the endpoint for the code"
    time.sleep(0.5)  # the request is on its way: the job now waits for the answer
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 143, output[-2000:]
    assert time.monotonic() - signalled < 5
    assert first_line(root).startswith("training stopped by SIGTERM while checking 'sagemaker_submit_directory'")

