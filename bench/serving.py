"""Serving throughput: rows/s for 1-, 64- and 512-row requests, per path, rounds interleaved.

    .venv/bin/python bench/serving.py [--job runs/smoke/opt_ml] [--rounds 5]   (make bench-serving)

Paths: the handler in process (`input_fn` -> `predict_fn` -> `output_fn`, what the SageMaker
PyTorch inference toolkit calls) and `tsa serve` over real HTTP on this machine (one worker).
The job folder is a finished `tsa train` job (default: the one `make run` writes): its model and
its validation rows are the requests. Each round runs every (path, size) once, so a noisy machine
slows every cell alike; the table reports the median over rounds.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from tsa.data.convert import read_npy_arrays
from tsa.serving import inference

SIZES = (1, 64, 512)


def request_body(job: Path, rows: int) -> bytes:
    arrays = read_npy_arrays(job / "input/data/validation")
    count = len(arrays["Y"])
    instances = [{n: np.asarray(v[r % count]).tolist() for n, v in arrays.items() if n != "Y"} for r in range(rows)]
    return json.dumps({"instances": instances}).encode()


def in_process(model: dict[str, Any], body: bytes) -> None:
    inference.output_fn(inference.predict_fn(inference.input_fn(body, inference.JSON), model), inference.JSON)


def over_http(port: int, body: bytes) -> None:
    """One request on a fresh connection with TCP_NODELAY (urllib's separate header and body packets
    would otherwise meet the server's delayed ACK: ~200 ms per request on Linux, the client's cost)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    connection.connect()
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connection.request("POST", "/invocations", body=body, headers={"Content-Type": inference.JSON})
    response = connection.getresponse()
    response.read()
    connection.close()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}")


def start_server(model_dir: Path, port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen([sys.executable, "-m", "tsa", "serve", "--model-dir", str(model_dir), "--port",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "TSA_MAX_REQUEST_MB": "200"})
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return server
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("tsa serve did not start") from None
            time.sleep(0.3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", type=Path, default=Path("runs/smoke/opt_ml"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--port", type=int, default=18080)
    args = parser.parse_args()
    bodies = {rows: request_body(args.job, rows) for rows in SIZES}
    model = inference.model_fn(str(args.job / "model"))
    server = start_server(args.job / "model", args.port)
    runners = {"handler in process": lambda body: in_process(model, body),
               "tsa serve (HTTP)": lambda body: over_http(args.port, body)}
    rates: dict[tuple[str, int], list[float]] = {}
    try:
        for _ in range(args.rounds):
            for rows, body in bodies.items():
                for name, run in runners.items():
                    started = time.perf_counter()
                    run(body)
                    rates.setdefault((name, rows), []).append(rows / (time.perf_counter() - started))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    print(f"| path | {' | '.join(f'{rows}-row request' for rows in SIZES)} |")
    print(f"|---|{'---|' * len(SIZES)}")
    for name in runners:
        cells = " | ".join(f"{statistics.median(rates[(name, rows)]):,.0f} rows/s" for rows in SIZES)
        print(f"| {name} | {cells} |")
    print(f"(median of {args.rounds} interleaved rounds; request bodies "
          f"{', '.join(f'{len(b) / 1024:.0f} KiB' for b in bodies.values())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
