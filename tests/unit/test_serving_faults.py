"""`tsa serve` under hostile clients: each refused with a JSON 4xx in bounded time, the server alive and exact after.

Run: .venv/bin/pytest -n 2 tests/unit/test_serving_faults.py

One real `tsa serve` process, over a tiny model a real job trained, serves the module; it runs with
short deadlines (TSA_REQUEST_TIMEOUT_S, TSA_KEEP_ALIVE_S below) so that the waits stay short. The
SIGTERM tests start their own, with two workers and the default grace. Requests go over real
sockets, as raw bytes where a well-behaved client could not send them; after every hostile request,
`/ping` answers 200 and a good request scores as the job did.
"""

from __future__ import annotations

import fcntl
import http.client
import json
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.jobs import (
    QUICK,
    ROWS_SMALL,
    free_port,
    fresh_environment,
    make_job,
    predictions,
    run_job,
    validation_instances,
    wait_until_serving,
)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("serving_faults")]

REQUEST_TIMEOUT_S = 2.0
KEEP_ALIVE_S = 1.0
MARGIN_S = 3.0  # a loaded test machine's scheduling, on top of a deadline
STOP_WITHIN_S = 5.0  # the project's bound for a SIGTERM, at the default TSA_STOP_GRACE_S


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> dict[str, Any]:
    """A tiny model a real job trained, once per test session (xdist's workers share the session's folder)."""
    folder = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    root = folder / "serving_faults_job"
    with (folder / "serving_faults_job.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first worker trains, another waits for it (pytest-timeout bounds it)
        if not (root / "model/code/inference.py").is_file():
            proc = run_job(make_job(root, QUICK, rows=ROWS_SMALL))
            assert proc.returncode == 0, proc.stderr[-2000:]
    return {"model_dir": root / "model", "instances": validation_instances(root),
            "expected": predictions(root, "validation"), "logs": tmp_path_factory.mktemp("logs")}


def start_serving(model_dir: Path, log: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    """`tsa serve` on a free port, its output to `log` (a pipe nobody reads could fill and block it)."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tsa", "serve", "--model-dir", str(model_dir), "--port",
                                 str(port)], stdout=out, stderr=subprocess.STDOUT, env={**fresh_environment(), **env})
    wait_until_serving(port, 60, alive=lambda: proc.poll() is None,
                       describe=lambda: f"tsa serve did not start:\n{log.read_text()[-3000:]}")
    return proc, port


@pytest.fixture(scope="module")
def server(job: dict[str, Any]) -> Iterator[int]:
    log = job["logs"] / "serve.log"
    proc, port = start_serving(job["model_dir"], log, {"TSA_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
                                                       "TSA_KEEP_ALIVE_S": str(KEEP_ALIVE_S)})
    yield port
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143, log.read_text()[-3000:]
    assert "serving stopped by SIGTERM" in log.read_text()


@dataclass
class Answer:
    status: int
    content_type: str
    connection: str  # the Connection header: "close" when the server ends the connection after it
    body: bytes
    seconds: float  # from the first byte sent to the whole answer read

    @property
    def error(self) -> str:
        return str(json.loads(self.body)["error"])


def read_answer(sock: socket.socket, started: float, timeout_s: float) -> Answer:
    sock.settimeout(timeout_s)
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = response.read()
    return Answer(response.status, response.getheader("Content-Type", ""), response.getheader("Connection", ""), body,
                  time.monotonic() - started)


def exchange(port: int, request: bytes, half_close: bool = False, timeout_s: float = 60) -> Answer:
    """`request` sent whole on a new connection (as a naive client does, before reading), then one answer read."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        started = time.monotonic()
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return read_answer(sock, started, timeout_s)


def post(body: bytes, *headers: bytes, length: int | None = None) -> bytes:
    """A raw `POST /invocations` with `headers`, a Content-Length (the body's unless `length`), then the body."""
    length = len(body) if length is None else length
    head = b"".join(header + b"\r\n" for header in headers)
    return (b"POST /invocations HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n" + head +
            b"Content-Length: %d\r\n\r\n" % length + body)


def chunked(*chunks: bytes) -> bytes:
    """A raw chunked `POST /invocations` (`Transfer-Encoding: chunked`) of `chunks` and the last chunk."""
    body = b"".join(b"%x\r\n" % len(chunk) + chunk + b"\r\n" for chunk in chunks) + b"0\r\n\r\n"
    return (b"POST /invocations HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + body)


def good(instances: list[dict[str, Any]], rows: slice = slice(0, 3)) -> bytes:
    return json.dumps({"instances": instances[rows]}).encode()


def with_x_num(literal: str) -> Callable[[list[dict[str, Any]]], bytes]:
    """A body whose first instance's X_num starts with `literal`, written as is."""
    def make(instances: list[dict[str, Any]]) -> bytes:
        text = good(instances, slice(0, 1)).decode()
        x_num = json.dumps(instances[0]["X_num"])
        return post(text.replace(x_num, f"[{literal}, {x_num[1:]}", 1).encode())
    return make


def row_too_narrow(instances: list[dict[str, Any]]) -> bytes:
    instance = {**instances[0], "X_seq_num": [row[:-1] for row in instances[0]["X_seq_num"]]}
    return post(json.dumps({"instances": [instance]}).encode())


MB = 10**6
QUICKLY = (0.0, MARGIN_S)
AT_THE_DEADLINE = (REQUEST_TIMEOUT_S - 0.2, REQUEST_TIMEOUT_S + MARGIN_S)

Case = tuple[str, Callable[[list[dict[str, Any]]], bytes], bool, int, str, tuple[float, float], bool]
# (id, request from the good instances, half-close after sending, status, text of the JSON error, seconds,
#  whether the answer closes the connection: the request was not read whole)
HOSTILE: list[Case] = [
    ("body_50_mb", lambda i: post(b'{"instances": [' + b" " * (50 * MB - 17) + b"]}"), False, 413,
     "the request is larger than 6.0 MiB (TSA_MAX_REQUEST_MB): send fewer instances per request", (0.0, 10.0), True),
    ("chunked_body_over_the_limit", lambda i: chunked(*[b" " * 2**20] * 7), False, 413,
     "the request is larger than 6.0 MiB", QUICKLY, True),
    ("expect_100_continue_over_the_limit", lambda i: post(b"", b"Expect: 100-continue", length=50 * MB), False,
     413, "the request is larger than 6.0 MiB", QUICKLY, True),
    ("content_length_larger_than_the_body", lambda i: post(good(i), length=len(good(i)) + 1000), False, 408,
     f"did not arrive whole within {REQUEST_TIMEOUT_S:g} s (TSA_REQUEST_TIMEOUT_S): a Content-Length larger than "
     "the body sent", AT_THE_DEADLINE, True),
    ("headers_that_never_end", lambda i: b"POST /invocations HTTP/1.1\r\nHost: test\r\n", False, 408,
     f"the request line and headers did not arrive within {REQUEST_TIMEOUT_S:g} s (TSA_REQUEST_TIMEOUT_S)",
     AT_THE_DEADLINE, True),
    ("client_leaves_before_the_content_length", lambda i: post(good(i), length=len(good(i)) + 1000), True, 400,
     "the body could not be read whole (unexpected end of file", QUICKLY, True),
    ("content_length_not_a_number", lambda i: b"POST /invocations HTTP/1.1\r\nContent-Length: abc\r\n\r\n{}", False,
     400, "the request is not valid HTTP/1.1: Content-Length 'abc' is not a number of bytes", QUICKLY, True),
    ("content_length_negative", lambda i: b"POST /invocations HTTP/1.1\r\nContent-Length: -5\r\n\r\n{}", False,
     400, "the request is not valid HTTP/1.1: Content-Length '-5' is not a number of bytes", QUICKLY, True),
    ("json_nested_100000_deep", lambda i: post(b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"), False,
     400, "the body is JSON nested too deeply to parse", QUICKLY, False),
    ("nan_literal", with_x_num("NaN"), False, 400,
     "the body holds the literal NaN: JSON has no NaN or Infinity, and the model requires finite numbers", QUICKLY,
     False),
    ("infinity_literal", with_x_num("Infinity"), False, 400,
     "the body holds the literal Infinity: JSON has no NaN or Infinity", QUICKLY, False),
    ("negative_infinity_literal", with_x_num("-Infinity"), False, 400,
     "the body holds the literal -Infinity: JSON has no NaN or Infinity", QUICKLY, False),
    ("row_too_narrow", row_too_narrow, False, 400, "instance 0 array 'X_seq_num': shape (8, 33), expected (8, 34)",
     QUICKLY, False),
    ("chunk_size_not_hex", lambda i: chunked(b"{}").replace(b"\r\n2\r\n", b"\r\nzz\r\n"), False, 400,
     "the body could not be read whole ([Errno Non-hex data]", QUICKLY, True),
    ("request_line_garbage", lambda i: b"GARBAGE\r\n\r\n", False, 400,
     "the request is not valid HTTP/1.1: the request line 'GARBAGE' is not 'METHOD /path HTTP/1.x'", QUICKLY, True),
    ("http_version_garbage", lambda i: b"GET /ping HTTP/a.b\r\n\r\n", False, 400,
     "the request line 'GET /ping HTTP/a.b' is not 'METHOD /path HTTP/1.x'", QUICKLY, True),
    ("request_line_over_8_kib", lambda i: b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", False, 414,
     "the request line is longer than 8192 bytes", QUICKLY, True),
    ("101_headers", lambda i: b"GET /ping HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % n for n in range(101)) + b"\r\n",
     False, 400, "the request is not valid HTTP/1.1: got more than 100 headers", QUICKLY, True),
    ("header_line_over_64_kib", lambda i: b"GET /ping HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", False, 400,
     "the request is not valid HTTP/1.1: Invalid headers status: 'Line too long'", QUICKLY, True),
    ("unknown_path", lambda i: b"POST /elsewhere HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", False, 404,
     "POST /elsewhere: this endpoint serves GET /ping and POST /invocations", QUICKLY, False),
]


def score(port: int, body: bytes) -> tuple[int, bytes]:
    """(status, body) of one well-formed `POST /invocations` (http.client)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def assert_alive_and_exact(port: int, job: dict[str, Any]) -> None:
    """`/ping` answers 200 and a good request scores as the job did."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/ping")
    assert connection.getresponse().status == 200
    connection.close()
    status, body = score(port, good(job["instances"], slice(0, 5)))
    assert status == 200, body[:2000]
    scores = [p["score"] for p in json.loads(body)["predictions"]]
    np.testing.assert_allclose(scores, [job["expected"][str(row)] for row in range(5)], rtol=0, atol=1e-6)


@pytest.mark.parametrize(("make", "half_close", "status", "error", "seconds", "closes"), [c[1:] for c in HOSTILE],
                         ids=[c[0] for c in HOSTILE])
def test_a_hostile_request_is_a_json_client_error_in_bounded_time(
        server: int, job: dict[str, Any], make: Callable[[list[dict[str, Any]]], bytes], half_close: bool,
        status: int, error: str, seconds: tuple[float, float], closes: bool) -> None:
    answer = exchange(server, make(job["instances"]), half_close)
    assert answer.status == status and answer.content_type == "application/json", answer.body[:2000]
    assert error in answer.error
    assert seconds[0] <= answer.seconds <= seconds[1]
    assert (answer.connection == "close") == closes
    assert_alive_and_exact(server, job)


def test_a_refused_body_is_dropped_up_to_64_mib_then_the_connection_closes(server: int, job: dict[str, Any]) -> None:
    """A 100 MB body sent whole: the server reads 64 MiB of it for the client to read the 413, then closes."""
    sent = 0
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.settimeout(REQUEST_TIMEOUT_S + 30)
        with pytest.raises((ConnectionResetError, BrokenPipeError)):  # once the server stops reading
            sock.sendall(post(b"", length=100 * MB))
            for _ in range(100):
                sent += sock.send(b" " * MB)
    assert 64 * 2**20 - MB <= sent < 100 * MB
    assert_alive_and_exact(server, job)


def test_a_content_length_shorter_than_the_body(server: int, job: dict[str, Any]) -> None:
    """The body is read to its Content-Length (truncated JSON: 400); the rest is read as the next request: a 4xx."""
    body = good(job["instances"])
    with socket.create_connection(("127.0.0.1", server)) as sock:
        started = time.monotonic()
        sock.sendall(post(body, length=len(body) - 10))
        first = read_answer(sock, started, 60)
        assert first.status == 400 and "the body is not valid JSON" in first.error
        leftover = read_answer(sock, started, 60)  # 10 bytes without a line end: a request line that never ends
    assert leftover.status == 408 and leftover.content_type == "application/json"
    assert "the request line and headers did not arrive" in leftover.error
    assert leftover.seconds <= REQUEST_TIMEOUT_S + MARGIN_S
    assert_alive_and_exact(server, job)


def trickle(port: int, request: bytes, every_s: float, head: bytes = b"") -> Answer:
    """`head` sent whole, then `request` a byte every `every_s` until the server answers (read as it arrives)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        started = time.monotonic()
        sock.sendall(head)
        for byte in request:
            sock.sendall(bytes([byte]))
            if select.select([sock], [], [], every_s)[0]:
                break
        return read_answer(sock, started, 60)


@pytest.mark.parametrize(("trickled", "error"), [
    ("whole_request", "the request line and headers did not arrive within 2 s (TSA_REQUEST_TIMEOUT_S)"),
    ("body", "did not arrive whole within 2 s (TSA_REQUEST_TIMEOUT_S): a Content-Length larger than the body sent, "
             "or a client sending too slowly"),
])
def test_a_client_sending_a_byte_a_second_gets_408_and_others_are_served_meanwhile(
        server: int, job: dict[str, Any], trickled: str, error: str) -> None:
    body = good(job["instances"])
    head = post(body)[:-len(body)] if trickled == "body" else b""
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(trickle, server, post(body)[len(head):], 1.0, head)
        time.sleep(0.5)
        status, body = score(server, good(job["instances"], slice(0, 5)))
        answered_meanwhile = not slow.done()
        answer = slow.result(timeout=REQUEST_TIMEOUT_S + 30)
    assert status == 200 and answered_meanwhile
    scores = [p["score"] for p in json.loads(body)["predictions"]]
    np.testing.assert_allclose(scores, [job["expected"][str(row)] for row in range(5)], rtol=0, atol=1e-6)
    assert answer.status == 408 and error in answer.error
    assert REQUEST_TIMEOUT_S - 0.2 <= answer.seconds <= REQUEST_TIMEOUT_S + MARGIN_S
    assert_alive_and_exact(server, job)


@pytest.mark.parametrize("first_request", [False, True], ids=["new_connection", "after_a_request"])
def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_time(
        server: int, job: dict[str, Any], first_request: bool) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        if first_request:
            sock.sendall(post(good(job["instances"])))
            assert read_answer(sock, time.monotonic(), 60).status == 200
        idle_since = time.monotonic()
        sock.settimeout(KEEP_ALIVE_S + 30)
        assert sock.recv(1) == b""  # closed by the server
    assert KEEP_ALIVE_S - 0.2 <= time.monotonic() - idle_since <= KEEP_ALIVE_S + MARGIN_S
    assert_alive_and_exact(server, job)


def test_100_concurrent_requests_are_all_answered_and_score_as_sequential_ones(
        server: int, job: dict[str, Any]) -> None:
    # 100 different slices of the 32 instances: starts 0..28, lengths 1..4
    bodies = [good(job["instances"], slice(n % 29, n % 29 + 1 + n // 29)) for n in range(100)]
    sequential = [score(server, body) for body in bodies]
    start = threading.Barrier(100)

    def at_once(body: bytes) -> tuple[int, bytes]:
        start.wait(timeout=60)
        return score(server, body)

    with ThreadPoolExecutor(100) as pool:
        concurrent = list(pool.map(at_once, bodies))
    assert [status for status, _ in concurrent] == [200] * 100
    assert [json.loads(body) for _, body in concurrent] == [json.loads(body) for _, body in sequential]
    for n, (_, body) in enumerate(concurrent):
        rows = range(n % 29, n % 29 + 1 + n // 29)
        scores = [p["score"] for p in json.loads(body)["predictions"]]
        np.testing.assert_allclose(scores, [job["expected"][str(row)] for row in rows], rtol=0, atol=1e-6)


@pytest.mark.parametrize("sigterms", [1, 2])
def test_sigterm_with_keep_alive_connections_open_exits_143_within_5_s(
        job: dict[str, Any], tmp_path: Path, sigterms: int) -> None:
    """Two workers, 8 idle keep-alive connections and one request whose body never comes: stopped by SIGTERM
    (a second one 0.3 s later changes nothing) within the default grace."""
    log = tmp_path / "serve.log"
    proc, port = start_serving(job["model_dir"], log, {"SAGEMAKER_MODEL_SERVER_WORKERS": "2"})
    try:
        idle = []
        for _ in range(8):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request("POST", "/invocations", body=good(job["instances"]),
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            assert response.status == 200 and not response.will_close
            idle.append(connection)
        in_flight = socket.create_connection(("127.0.0.1", port))
        in_flight.sendall(post(b"{", length=100))
        time.sleep(0.5)  # the workers have read the request line and headers
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        if sigterms == 2:
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
        for connection in idle:
            connection.sock.settimeout(30)
            assert connection.sock.recv(1) == b""  # closed by the server
        idle_closed_s = time.monotonic() - started
        code = proc.wait(timeout=60)
        exit_s = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert code == 143 and exit_s <= STOP_WITHIN_S, f"exit {code} after {exit_s:.1f} s:\n{out[-3000:]}"
    assert "serving stopped by SIGTERM" in out and "exit 143" in out
    assert ("SIGTERM again: already stopping, nothing changes" in out) == (sigterms == 2)
    assert idle_closed_s < 1.5  # at once, not after the grace (3 s)
    cut_off = read_answer(in_flight, started, 10)
    assert cut_off.status == 503 and "the endpoint is stopping (SIGTERM)" in cut_off.error
    assert 3.0 - 0.2 <= cut_off.seconds  # after the default grace


def test_an_exception_of_ours_is_a_json_500(job: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from werkzeug.test import Client

    from tsa.serving import inference
    from tsa.serving.server import make_app

    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(inference, "predict_fn", broken)
    response = Client(make_app(str(job["model_dir"]), max_request_bytes=2**20)).post(
        "/invocations", data=good(job["instances"]), headers={"Content-Type": "application/json"})
    assert response.status_code == 500 and response.mimetype == "application/json"
    assert "internal error while answering the request; this is a tsa-training bug" in response.get_json()["error"]


@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan", "inf"])
def test_a_setting_that_is_not_a_positive_number_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    from tsa.errors import JobError
    from tsa.serving.server import Settings

    monkeypatch.setenv("TSA_REQUEST_TIMEOUT_S", value)
    with pytest.raises(JobError, match=f"TSA_REQUEST_TIMEOUT_S='{value}': expected a number > 0; unset it for the "
                                       "default 60"):
        Settings.from_environment()


def test_the_settings_default_to_sagemakers_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    from tsa.serving.server import Settings

    for name in ("TSA_MAX_REQUEST_MB", "TSA_REQUEST_TIMEOUT_S", "TSA_KEEP_ALIVE_S", "TSA_STOP_GRACE_S"):
        monkeypatch.delenv(name, raising=False)
    assert Settings.from_environment() == Settings(max_request_bytes=6 * 2**20, request_timeout_s=60.0,
                                                   keep_alive_s=75.0, stop_grace_s=3.0)
