"""`tsa serve`: the SageMaker hosting container contract, served by this image with the training torch.

SageMaker hosting runs `docker run IMAGE serve` with the model unpacked under `/opt/ml/model` and
talks HTTP on port 8080: `GET /ping` (200 once the model is loaded) and `POST /invocations`. The
request goes through the same handler `model/code/inference.py` holds (`tsa.serving.inference`):
the same checks, statuses (400, 406, 415) and content negotiation.

Built on gevent's WSGI server (a connection handler subclass adds the deadlines, the JSON refusals
and the stop) and Werkzeug's request and response objects (both installed with the SageMaker
training toolkit), not a hand-written HTTP loop. Settings, from the environment:

- `SAGEMAKER_BIND_TO_PORT` (8080); `SAGEMAKER_MODEL_SERVER_WORKERS` (1: processes sharing the
  listening socket); the model folder `SM_MODEL_DIR` (`/opt/ml/model`);
- `TSA_MAX_REQUEST_MB` (6, SageMaker's real-time payload limit): a larger body, by its
  Content-Length or as a chunked body grows past it, is a 413;
- `TSA_REQUEST_TIMEOUT_S` (60, SageMaker's invocation timeout): a request (line, headers, body)
  that has not arrived whole this long after its first byte is a 408 (a Content-Length larger than
  the body sent, a client sending a byte a second); other clients are served meanwhile;
- `TSA_KEEP_ALIVE_S` (75): a keep-alive connection idle this long is closed;
- `TSA_STOP_GRACE_S` (3): how long a SIGTERM lets the requests in flight finish.
A setting that is not a number > 0 is refused at the start (exit 2, naming it).

Every answer of ours is JSON: a client error is a 4xx `{"error": reason}` and the server goes on
(the handler's 400s: JSON nested too deeply, the literals NaN/Infinity, wrong shapes; a body cut
short or a malformed chunk is a 400); a request line or headers gevent cannot parse are a 400 naming
gevent's reason (a request line over 8 KiB: 414); an exception of ours is a 500. A body that was not
read whole (413, 408, 400 for a body cut short) is answered with `Connection: close`; what the
client still sends of it is read and dropped, at most `DRAIN_MAX_BYTES` and within the request's
deadline, so that a client that sends all before it reads still gets the answer (closing on unread
data resets the connection, which can destroy the answer). A Content-Length shorter than the body
reads a cut JSON (400); the bytes after it are read as the next request on the connection (a 4xx).

SIGTERM (each worker gets it; the first process forwards it): stop accepting, close the idle
keep-alive connections at once, let the requests in flight finish within `TSA_STOP_GRACE_S`, answer
the rest 503 (`CUT_OFF_S`), wait for the other workers, and exit 143 with the line `serving stopped
by SIGTERM: ...`: within 5 s at the defaults. A second SIGTERM changes nothing. Tested in
`tests/unit/test_serving_faults.py` (docs/serving.md).
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from gevent import GreenletExit, Timeout, getcurrent, signal_handler, sleep
from gevent.event import Event
from gevent.pool import Pool
from gevent.pywsgi import MAX_REQUEST_LINE, Input, WSGIHandler, WSGIServer
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge
from werkzeug.wrappers import Request, Response

from tsa.errors import INTERNAL_ERROR_EXIT_CODE, STOPPED_EXIT_CODE, JobError
from tsa.serving import inference

log = logging.getLogger("tsa.serve")

DEFAULT_PORT = 8080
DEFAULT_MAX_REQUEST_MB = 6.0
DEFAULT_REQUEST_TIMEOUT_S = 60.0
DEFAULT_KEEP_ALIVE_S = 75.0
DEFAULT_STOP_GRACE_S = 3.0  # + CUT_OFF_S + WORKERS_EXIT_S: a stop ends within 5 s of SIGTERM
CUT_OFF_S = 1.0  # after the grace: how long the requests still in flight get to take their 503 and close
WORKERS_EXIT_S = 0.5  # beyond their own grace and cut-off: how long the first process waits for the other workers
DRAIN_MAX_BYTES = 64 * 2**20  # what of a refused body is read and dropped so that the client reads the answer
STOPPING = "the endpoint is stopping (SIGTERM): send the request again to another instance"
INTERNAL = "internal error while answering the request; this is a tsa-training bug, see the endpoint's log"

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass(frozen=True)
class Settings:
    """The endpoint's limits (module docstring), read once from the environment."""

    max_request_bytes: int
    request_timeout_s: float
    keep_alive_s: float
    stop_grace_s: float

    @classmethod
    def from_environment(cls) -> Settings:
        return cls(max_request_bytes=int(_setting("TSA_MAX_REQUEST_MB", DEFAULT_MAX_REQUEST_MB) * 2**20),
                   request_timeout_s=_setting("TSA_REQUEST_TIMEOUT_S", DEFAULT_REQUEST_TIMEOUT_S),
                   keep_alive_s=_setting("TSA_KEEP_ALIVE_S", DEFAULT_KEEP_ALIVE_S),
                   stop_grace_s=_setting("TSA_STOP_GRACE_S", DEFAULT_STOP_GRACE_S))


def _setting(name: str, default: float) -> float:
    """The positive number the environment variable `name` holds, or `default` when it is unset."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise JobError(f"{name}={text!r}: expected a number > 0; unset it for the default {default:g}")
    return value


class RequestDeadline(Timeout):
    """`TSA_REQUEST_TIMEOUT_S` after a request's first byte: raised where the request still waits on its client."""


def _error(status: int, message: str, close: bool = False) -> Response:
    response = Response(json.dumps({"error": message}) + "\n", status=status, mimetype="application/json")
    if close:
        response.headers["Connection"] = "close"  # gevent ends the connection after this answer
    return response


def _read_body(request: Request, max_request_bytes: int) -> bytes:
    """The whole body, or a `RequestError`: 413 above the limit, 408 past the deadline, 400 if cut short."""
    too_large = inference.RequestError(413, f"the request is larger than {max_request_bytes / 2**20:.1f} MiB "
                                            "(TSA_MAX_REQUEST_MB): send fewer instances per request")
    # Werkzeug refuses a Content-Length above its limit, but stops reading a chunked body at the limit
    # silently: one byte more tells a body over the limit from one at it.
    request.max_content_length = max_request_bytes + 1
    try:
        body = request.get_data(cache=False)
    except RequestEntityTooLarge as exc:
        raise too_large from exc
    except RequestDeadline as exc:  # armed by our gevent handler
        length = "chunked" if request.content_length is None else f"Content-Length {request.content_length}"
        raise inference.RequestError(408, f"the body ({length}) did not arrive whole within {exc.seconds:g} s "
                                          "(TSA_REQUEST_TIMEOUT_S): a Content-Length larger than the body sent, or "
                                          "a client sending too slowly; send the whole body at once") from exc
    except ClientDisconnected as exc:  # the stream failed: the client left early, a malformed chunk
        raise inference.RequestError(400, f"the body could not be read whole ({exc.__context__})") from exc
    if len(body) > max_request_bytes:
        raise too_large
    return body


def make_app(model_dir: str, max_request_bytes: int) -> WSGIApp:
    """The WSGI application: `/ping` and `/invocations` over the handler and the loaded model."""
    model = inference.model_fn(model_dir)
    log.info("model loaded from %s (%s model, on %s)", model_dir, model["config"]["model_type"], model["device"])

    def invocations(request: Request) -> Response:
        try:
            body = _read_body(request, max_request_bytes)
        except inference.RequestError as exc:
            return _error(exc.status_code, exc.message, close=True)  # the body was not read whole
        try:
            instances = inference.input_fn(body, request.headers.get("Content-Type", inference.JSON))
            text, kind = inference.output_fn(inference.predict_fn(instances, model),
                                             request.headers.get("Accept", inference.JSON))
        except inference.RequestError as exc:
            return _error(exc.status_code, exc.message)
        return Response(text, status=200, mimetype=kind)

    def route(request: Request) -> Response:
        if request.path == "/ping" and request.method == "GET":
            return Response("", status=200)
        if request.path == "/invocations" and request.method == "POST":
            return invocations(request)
        return _error(404, f"{request.method} {request.path}: this endpoint serves GET /ping and POST /invocations")

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        try:
            response = route(request)
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            response = _error(500, INTERNAL)
        return response(environ, start_response)

    return app


def _json_error(status: int, message: str) -> tuple[str, list[tuple[str, str]], bytes]:
    """(status line, headers, body) of a JSON refusal that closes the connection, for the handler's own answers."""
    body = (json.dumps({"error": message}) + "\n").encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Connection", "close")]
    return f"{status} {HTTPStatus(status).phrase}", headers, body


def _raw_error(status: int, message: str) -> tuple[str, bytes]:
    """gevent's form of an answer given before the application ran: (status, the whole response)."""
    line, headers, body = _json_error(status, message)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return str(status), f"HTTP/1.1 {line}\r\n{head}\r\n".encode("latin-1") + body


class _Body(Input):
    """gevent's request body, whose leftover after the answer is dropped within bounds.

    gevent reads what the application left unread up to the declared end, to find the next request
    on the connection: unbounded in bytes (a Content-Length of 10 GB) and in time (a client that
    stops sending). Here: at most `DRAIN_MAX_BYTES`, before the request's deadline, not while the
    server stops; a body not drained whole closes the connection (`drained` is False).
    """

    __slots__ = ("deadline", "drained", "server")

    def _discard(self) -> None:
        self.drained = False
        # `socket` is set while a `100 Continue` is owed: that client holds its body back, nothing comes
        if self.socket is not None or self.server.stopping or time.monotonic() >= self.deadline:
            return
        dropped = 0
        try:
            while dropped <= DRAIN_MAX_BYTES:
                chunk = self.read(65536)
                if not chunk:
                    self.drained = True
                    return
                dropped += len(chunk)
        except RequestDeadline:
            return


class _Handler(WSGIHandler):
    """gevent's HTTP/1.1 connection handler with a keep-alive bound, a request deadline and JSON refusals."""

    server: _Server
    wsgi_input: _Body
    deadline = 0.0  # monotonic time by which the request in hand must have arrived whole

    def handle_one_request(self) -> Any:
        if not self._next_request_arrives():
            return None
        seconds = self.server.settings.request_timeout_s
        self.deadline = time.monotonic() + seconds
        timer = RequestDeadline(seconds)
        timer.start()
        try:
            result = super().handle_one_request()
        except RequestDeadline as exc:
            if exc is not timer:
                raise
            return _raw_error(408, f"the request line and headers did not arrive within {seconds:g} s "
                                   "(TSA_REQUEST_TIMEOUT_S)")
        except GreenletExit:  # the stop's grace ended while the headers were still coming
            return _raw_error(503, STOPPING)
        finally:
            timer.close()
        if isinstance(result, tuple) and result[0] == "414":
            return _raw_error(414, f"the request line is longer than {MAX_REQUEST_LINE} bytes")
        if result is True and not self.wsgi_input.drained:
            return None
        return result

    def _next_request_arrives(self) -> bool:
        """Waits at most `TSA_KEEP_ALIVE_S` for the next request's first byte; False: close the connection."""
        if self.server.stopping:
            return False
        me = getcurrent()
        self.server.idle.add(me)
        self.socket.settimeout(self.server.settings.keep_alive_s)
        try:
            return bool(self.rfile.peek(1))
        except (OSError, GreenletExit):  # idle too long, gone, or closed by the stop
            return False
        finally:
            self.server.idle.discard(me)
            self.socket.settimeout(None)

    def read_request(self, raw_requestline: str) -> bool:
        """gevent's parse; a bad request line or a Content-Length that is not a number of bytes named as such."""
        before = self.headers
        try:
            return bool(super().read_request(raw_requestline))
        except ValueError as exc:
            if self.headers is before:  # the request line failed
                raise ValueError(f"the request line {raw_requestline.rstrip()!r} is not 'METHOD /path HTTP/1.x' "
                                 f"({exc})") from exc
            length = self.headers.get("Content-Length")
            if length is not None and not length.strip().isdigit():
                raise ValueError(f"Content-Length {length!r} is not a number of bytes") from exc
            raise

    def get_environ(self) -> dict[str, Any]:
        environ = super().get_environ()
        body = _Body(self.rfile, self.content_length, socket=self.wsgi_input.socket,
                     chunked_input=self.wsgi_input.chunked_input)
        body.deadline, body.drained, body.server = self.deadline, False, self.server
        if environ["wsgi.input"] is self.wsgi_input:
            environ["wsgi.input"] = body
        self.wsgi_input = body
        return environ

    def _handle_client_error(self, ex: BaseException) -> tuple[str, bytes]:  # gevent's hook for a malformed request
        log.warning("refused a malformed request from %s: %s", self.client_address, ex)
        return _raw_error(400, f"the request is not valid HTTP/1.1: {ex}")

    def handle_error(self, t: type[BaseException], v: BaseException, tb: Any) -> None:
        """An exception around the application (gevent's would be a text/plain 500): a JSON answer, then close."""
        if isinstance(v, GreenletExit):
            status, message = 503, STOPPING
        elif isinstance(v, RequestDeadline):  # the client stopped reading the answer
            status, message = 408, f"the exchange did not end within {v.seconds:g} s (TSA_REQUEST_TIMEOUT_S)"
        else:
            log.error("error around the application", exc_info=(t, v, tb))
            status, message = 500, INTERNAL
        self.close_connection = True
        if self.response_length:
            return
        line, headers, body = _json_error(status, message)
        try:
            self.start_response(line, headers)
            self.write(body)
        except OSError:
            pass


class _Server(WSGIServer):
    """gevent's WSGI server with a pool (so that a stop can wait for the requests in flight) and its idle set."""

    handler_class = _Handler

    def __init__(self, listener: socket.socket, app: WSGIApp, settings: Settings) -> None:
        super().__init__(listener, app, spawn=Pool(), log=None)
        self.settings = settings
        self.idle: set[Any] = set()  # the greenlets waiting for a keep-alive connection's next request
        self.stopping = False

    def stop_serving(self) -> str:
        """SIGTERM's stop: no new connection, the idle ones closed, the grace for the rest; what it did, in words."""
        self.stopping = True
        self.close()
        idle = list(self.idle)
        for greenlet in idle:
            greenlet.kill(block=False)
        in_flight = len(self.pool) - len(idle)
        grace = self.settings.stop_grace_s
        log.info("SIGTERM: stopped accepting, closing %d idle connection(s), finishing %d request(s) in flight "
                 "(at most %g s, TSA_STOP_GRACE_S)", len(idle), in_flight, grace)
        self.pool.join(timeout=grace)
        cut = len(self.pool)
        self.pool.kill(block=True, timeout=CUT_OFF_S)
        if len(self.pool):
            log.warning("%d connection(s) did not close within %g s of being cut off; exiting anyway", len(self.pool),
                        CUT_OFF_S)
        return (f"{in_flight - cut} request(s) in flight finished, {cut} cut off with 503 after the {grace:g} s "
                f"grace, {len(idle)} idle connection(s) closed")


def _serve(listener: socket.socket, app: WSGIApp, settings: Settings, children: list[int]) -> tuple[str, float]:
    """One worker: gevent's WSGI server on the shared socket until SIGTERM (passed on to `children`).

    Returns what the stop did, in words, and when it began (`time.monotonic()`).
    """
    server = _Server(listener, app, settings)
    stop = Event()

    def on_sigterm() -> None:
        if stop.is_set():
            log.info("SIGTERM again: already stopping, nothing changes")
            return
        for pid in children:
            os.kill(pid, signal.SIGTERM)
        stop.set()

    signal_handler(signal.SIGTERM, on_sigterm)
    server.start()
    stop.wait()  # serving is waiting for SIGTERM: it has no deadline
    began = time.monotonic()
    return server.stop_serving(), began


def _run_worker(listener: socket.socket, app: WSGIApp, settings: Settings) -> None:
    """A forked worker: serves until SIGTERM, then ends the process (143; 1 after an error of ours)."""
    code = INTERNAL_ERROR_EXIT_CODE
    try:
        log.info("worker %d: %s", os.getpid(), _serve(listener, app, settings, [])[0])
        code = STOPPED_EXIT_CODE
    except BaseException:
        log.exception("worker %d failed", os.getpid())
    finally:
        logging.shutdown()
        os._exit(code)


def _reap_workers(children: list[int], deadline: float) -> None:
    """Wait until `deadline` (`time.monotonic()`) for the forked workers to stop; kill and name a late one."""
    left = set(children)
    while left:
        for pid in list(left):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                left.discard(pid)
                if os.waitstatus_to_exitcode(status) != STOPPED_EXIT_CODE:
                    log.warning("worker %d ended with exit code %d", pid, os.waitstatus_to_exitcode(status))
        if left and time.monotonic() >= deadline:
            for pid in left:
                log.error("worker %d had not stopped %g s after its grace and cut-off: killed", pid, WORKERS_EXIT_S)
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            return
        sleep(0.02)  # gevent's, cooperative: a second SIGTERM is still taken (and changes nothing)


def serve(model_dir: str | None = None, port: int | None = None, workers: int | None = None) -> int:
    """Run the endpoint until SIGTERM; returns the exit code (143, a stop)."""
    model_dir = model_dir or os.environ.get("SM_MODEL_DIR", "/opt/ml/model")
    port = port or int(os.environ.get("SAGEMAKER_BIND_TO_PORT", DEFAULT_PORT))
    workers = workers or int(os.environ.get("SAGEMAKER_MODEL_SERVER_WORKERS", "1"))
    settings = Settings.from_environment()
    app = make_app(model_dir, settings.max_request_bytes)  # loaded before the fork: a broken model fails at once
    from gevent import socket as gevent_socket

    listener = gevent_socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # cooperative: the server's loop waits on it
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(1024)
    log.info("serving on port %d with %d worker(s); requests up to %.1f MiB, %g s each; keep-alive %g s",
             port, workers, settings.max_request_bytes / 2**20, settings.request_timeout_s, settings.keep_alive_s)
    children = []
    for _ in range(workers - 1):
        pid = os.fork()
        if pid == 0:
            _run_worker(listener, app, settings)
        children.append(pid)
    summary, began = _serve(listener, app, settings, children)
    _reap_workers(children, began + settings.stop_grace_s + CUT_OFF_S + WORKERS_EXIT_S)
    others = f" (this process; the {len(children)} other worker(s) logged their own)" if children else ""
    log.info("serving stopped by SIGTERM: %s%s; exit %d", summary, others, STOPPED_EXIT_CODE)
    return STOPPED_EXIT_CODE
