"""Serve a trained model as the AWS PyTorch inference image does: its toolkit starting TorchServe.

    python local_mode/serve_torchserve.py --model-dir runs/smoke/opt_ml/model [--port 8080]

Runs the SageMaker PyTorch inference toolkit's own start code (`sagemaker_pytorch_serving_container
.serving.main`: config properties, `torchserve --start` with the model folder, SIGTERM passed on)
on this machine, so `model/code/inference.py` is served by the real TorchServe frontend (Java 17)
and the toolkit's handler service, without Docker or AWS. Needs the dev extras (`sagemaker-pytorch-
inference`, `torchserve`) and a Java runtime on PATH. One change to the toolkit's defaults: it
writes its properties file to `/etc/sagemaker-ts.properties`; here it goes into the work folder,
so a run leaves the machine's `/etc` alone. The toolkit reads the model from
`$SAGEMAKER_BASE_DIR/model`: a model folder with another name is linked there.

One server per machine, as on an endpoint instance: the toolkit finds "its" TorchServe by looking
for any process running `org.pytorch.serve.ModelServer` and passes SIGTERM to that one, so a second
server would take (and stop) the first one's frontend. `start` refuses when one is running;
`one_per_machine()` makes concurrent callers (parallel test workers) take turns.

Settings reach TorchServe through the environment as on an endpoint: `SAGEMAKER_BIND_TO_PORT`,
`SAGEMAKER_MODEL_SERVER_WORKERS`, `TS_MAX_REQUEST_SIZE` / `TS_MAX_RESPONSE_SIZE` (bytes; TorchServe's
default is 6,553,500).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# The toolkit's start, with its properties file moved out of /etc (argv[1]).
_START = """
import sys
from sagemaker_pytorch_serving_container import serving, torchserve
torchserve.TS_CONFIG_FILE = sys.argv[1]
serving.main()
"""
FRONTEND = "org.pytorch.serve.ModelServer"  # the Java class the toolkit looks for


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def isolated_ports() -> dict[str, str]:
    """TorchServe settings for ports of its own: its defaults (metrics 8082, gRPC 7070 and 7071, worker
    sockets /tmp/.ts.sock.9000 and up) let only one server run on a machine."""
    return {"TS_METRICS_ADDRESS": f"http://127.0.0.1:{_free_port()}", "TS_GRPC_INFERENCE_PORT": str(_free_port()),
            "TS_GRPC_MANAGEMENT_PORT": str(_free_port()), "TS_INITIAL_WORKER_PORT": str(_free_port())}


def running_frontends() -> list[int]:
    """PIDs of the TorchServe frontends running on this machine (anyone's)."""
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if process.info["status"] != psutil.STATUS_ZOMBIE and FRONTEND in (process.info["cmdline"] or []):
            found.append(process.pid)
    return found


@contextlib.contextmanager
def one_per_machine() -> Iterator[None]:
    """Hold the machine's TorchServe turn (an exclusive lock on a file in the shared temp folder)."""
    with open(Path(tempfile.gettempdir()) / "tsa-torchserve.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def start(model_dir: Path, port: int, workdir: Path, env: dict[str, str] | None = None,
          python: str = sys.executable) -> subprocess.Popen[bytes]:
    """The toolkit's server start in `workdir` (TorchServe's model store and logs go there; the output of
    the toolkit and of TorchServe, which inherits it, to `workdir/server.log`: a pipe nobody reads would
    fill and stall the server). `env` adds settings, e.g. `isolated_ports()`. `python`: the interpreter of
    the environment that serves (its toolkit, TorchServe and torch; its folder leads PATH, so TorchServe's
    workers run it too), e.g. the deploy check's older torch (tests/deploy)."""
    if shutil.which("java") is None:
        raise RuntimeError("TorchServe's frontend needs a Java runtime (17 or newer) on PATH; none was found")
    running = running_frontends()
    if running:
        raise RuntimeError(f"a TorchServe frontend already runs on this machine (PIDs {running}): the toolkit "
                           "supports one per machine; stop it first (torchserve --stop)")
    base, scratch = workdir / "opt_ml", workdir / "tmp"
    base.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(exist_ok=True)
    if not (base / "model").exists():
        (base / "model").symlink_to(model_dir.resolve(), target_is_directory=True)
    # TMPDIR: TorchServe keeps its PID file (one server per machine) and unpacked models in the temp folder.
    full_env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "SAGEMAKER_BIND_TO_PORT": str(port),
                "TMPDIR": str(scratch),
                "PATH": f"{Path(python).parent}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})}
    with open(workdir / "server.log", "ab") as log:
        return subprocess.Popen([python, "-c", _START, str(workdir / "ts.properties")], cwd=workdir,
                                env=full_env, stdout=log, stderr=subprocess.STDOUT)


def server_processes(workdir: Path) -> list[int]:
    """PIDs of the TorchServe processes (frontend and workers) started in `workdir`."""
    import psutil

    found = []
    for process in psutil.process_iter(["cwd", "cmdline"]):
        if process.info["cwd"] == str(workdir) and process.info["cmdline"] and process.pid != os.getpid():
            found.append(process.pid)
    return found


def stop(server: subprocess.Popen[bytes], workdir: Path, timeout_s: float = 60) -> tuple[int, list[int]]:
    """SIGTERM to the toolkit's process (it passes it on to TorchServe, whose frontend stops its
    workers): (its exit code, the PIDs of TorchServe processes still running `timeout_s` after the
    signal, which are then killed: never left running)."""
    deadline = time.monotonic() + timeout_s
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=timeout_s)
        while server_processes(workdir) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        left = server_processes(workdir)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    return server.returncode, left


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tsa-torchserve-"))
    server = start(args.model_dir, args.port, workdir)
    print(f"TorchServe (through the SageMaker PyTorch inference toolkit) on port {args.port}; log "
          f"{workdir / 'server.log'}; Ctrl-C or SIGTERM stops it")
    signal.signal(signal.SIGTERM, lambda *_: stop(server, workdir))
    try:
        return server.wait()
    except KeyboardInterrupt:
        return stop(server, workdir)[0]


if __name__ == "__main__":
    sys.exit(main())
