"""Serving throughput: rows/s for 1-, 64- and 512-row requests, per path and body format, interleaved.

    .venv/bin/python bench/serving.py [--job runs/smoke/opt_ml] [--rounds 5]   (make bench-serving)

Paths: the handler in process (`input_fn` -> `predict_fn` -> `output_fn`, what the SageMaker
PyTorch inference toolkit calls), `tsa serve` over real HTTP on this machine, and the AWS PyTorch
inference toolkit starting the real TorchServe (`local_mode/serve_torchserve.py`, needs Java); one
worker each, request and response limits raised to 200 MB for the 512-row JSON body. Formats: JSON
instances and an .npz body of named arrays. The job folder is a finished `tsa train` job (default:
the one `make run` writes): its model and its validation rows are the requests. Each round runs
every (path, format, size) once, so a noisy machine slows every cell alike; the table reports the
median over rounds. Last, the size of one row in each format at the production configs
(`hyperparameters/eu_single.json`, `na_dual.json`, synthetic data): what decides rows per request.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tsa.config import JobConfig
from tsa.data.convert import read_npy_arrays
from tsa.data.synth import generate
from tsa.serving import inference

SIZES = (1, 64, 512)
FORMATS = (inference.JSON, inference.NPZ)
LIMIT_BYTES = 200 * 2**20
REPO = Path(__file__).resolve().parents[1]


def request_body(arrays: dict[str, np.ndarray], rows: int, kind: str) -> bytes:
    """`rows` validation rows (cycled) as a JSON body or an .npz body of the model's arrays."""
    picked = {name: values[np.arange(rows) % len(values)] for name, values in arrays.items() if name != "Y"}
    if kind == inference.NPZ:
        buffer = io.BytesIO()
        np.savez(buffer, **picked)
        return buffer.getvalue()
    instances = [{name: values[row].tolist() for name, values in picked.items()} for row in range(rows)]
    return json.dumps({"instances": instances}).encode()


def in_process(model: dict[str, Any], body: bytes, kind: str) -> None:
    inference.output_fn(inference.predict_fn(inference.input_fn(body, kind), model), inference.JSON)


def over_http(port: int, body: bytes, kind: str) -> None:
    """One request on a fresh connection with TCP_NODELAY (urllib's separate header and body packets
    would otherwise meet the server's delayed ACK: ~200 ms per request on Linux, the client's cost)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    connection.connect()
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connection.request("POST", "/invocations", body=body, headers={"Content-Type": kind, "Accept": inference.JSON})
    response = connection.getresponse()
    response.read()
    connection.close()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}")


def start_server(command: list[str], port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A server started by `command`, once its /ping answers 200 (TorchServe answers 503 until its worker
    has loaded the model)."""
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, **env})
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return server
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"{' '.join(command[:4])} did not start") from None
            time.sleep(0.3)


def servers(model_dir: Path, port: int) -> dict[str, tuple[list[str], int, dict[str, str]]]:
    """Per HTTP path: (its command, its port, its environment)."""
    sys.path.insert(0, str(REPO))  # local_mode/ is a folder of the repository, not an installed package
    from local_mode import serve_torchserve

    return {
        "tsa serve (HTTP)": ([sys.executable, "-m", "tsa", "serve", "--model-dir", str(model_dir), "--port", str(port)],
                             port, {"TSA_MAX_REQUEST_MB": str(LIMIT_BYTES // 2**20)}),
        "AWS toolkit + TorchServe (HTTP)": (
            [sys.executable, str(REPO / "local_mode/serve_torchserve.py"), "--model-dir", str(model_dir), "--port",
             str(port + 1)], port + 1,
            {"SAGEMAKER_MODEL_SERVER_WORKERS": "1", "TS_MAX_REQUEST_SIZE": str(LIMIT_BYTES),
             "TS_MAX_RESPONSE_SIZE": str(LIMIT_BYTES), **serve_torchserve.isolated_ports()}),
    }


def row_sizes(rows: int = 64) -> str:
    """KiB per row of each format at the production configs (the mean over `rows` synthetic rows)."""
    cells = []
    for name in ("eu_single", "na_dual"):
        hyperparameters = json.loads((REPO / "hyperparameters" / f"{name}.json").read_text())
        arrays = generate(JobConfig.from_hyperparameters(hyperparameters).model, rows, seed=0)
        sizes = ", ".join(f"{kind} {len(request_body(arrays, rows, kind)) / rows / 1024:.0f} KiB" for kind in FORMATS)
        cells.append(f"{name}: {sizes}")
    return f"one row ({'; '.join(cells)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", type=Path, default=Path("runs/smoke/opt_ml"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--port", type=int, default=18080)
    args = parser.parse_args()
    arrays = read_npy_arrays(args.job / "input/data/validation")
    bodies = {(kind, rows): request_body(arrays, rows, kind) for kind in FORMATS for rows in SIZES}
    model = inference.model_fn(str(args.job / "model"))
    runners: dict[str, Callable[[bytes, str], None]] = {"handler in process": lambda b, k: in_process(model, b, k)}
    started: list[subprocess.Popen[bytes]] = []
    rates: dict[tuple[str, str, int], list[float]] = {}
    try:
        for name, (command, port, env) in servers(args.job / "model", args.port).items():
            started.append(start_server(command, port, env))
            runners[name] = lambda b, k, port=port: over_http(port, b, k)
        for run in runners.values():  # warm-up: first requests load lazily
            run(bodies[(inference.JSON, 1)], inference.JSON)
        for _ in range(args.rounds):
            for (kind, rows), body in bodies.items():
                for name, run in runners.items():
                    begun = time.perf_counter()
                    run(body, kind)
                    rates.setdefault((name, kind, rows), []).append(rows / (time.perf_counter() - begun))
    finally:
        for server in started:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=90)
    print(f"| path | body | {' | '.join(f'{rows}-row request' for rows in SIZES)} |")
    print(f"|---|---|{'---|' * len(SIZES)}")
    for name in runners:
        for kind in FORMATS:
            cells = " | ".join(f"{statistics.median(rates[(name, kind, rows)]):,.0f} rows/s" for rows in SIZES)
            print(f"| {name} | {kind} | {cells} |")
    sizes = "; ".join(f"{kind} {', '.join(f'{len(bodies[(kind, r)]) / 1024:,.0f}' for r in SIZES)} KiB"
                      for kind in FORMATS)
    print(f"(median of {args.rounds} interleaved rounds; request bodies {sizes})")
    print(row_sizes())
    return 0


if __name__ == "__main__":
    sys.exit(main())
