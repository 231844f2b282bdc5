"""`tsa serve`: the SageMaker hosting container contract, served by this image with the training torch.

SageMaker hosting runs `docker run IMAGE serve` with the model unpacked under `/opt/ml/model` and
talks HTTP on port 8080: `GET /ping` (200 once the model is loaded) and `POST /invocations`. The
request goes through the same handler `model/code/inference.py` holds (`tsa.serving.inference`):
the same checks, statuses (400, 406, 415; 413 above the size limit) and content negotiation.

Built on gevent's WSGI server and Werkzeug's request and response objects (both installed with the
SageMaker training toolkit), not a hand-written HTTP loop. Settings, from the environment:
`SAGEMAKER_BIND_TO_PORT` (8080), `SAGEMAKER_MODEL_SERVER_WORKERS` (1: processes sharing the
listening socket), `TSA_MAX_REQUEST_MB` (6, SageMaker's real-time payload limit), and the model
folder `SM_MODEL_DIR` (`/opt/ml/model`). SIGTERM stops accepting requests, lets the ones in flight
finish (up to `TSA_STOP_GRACE_S`, 20 s) and exits 0.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("tsa.serve")

DEFAULT_PORT = 8080
DEFAULT_MAX_REQUEST_MB = 6.0
DEFAULT_STOP_GRACE_S = 20.0


def _error(status: int, message: str) -> Any:
    from werkzeug.wrappers import Response

    return Response(json.dumps({"error": message}) + "\n", status=status, mimetype="application/json")


def make_app(model_dir: str, max_request_bytes: int) -> Callable[..., Iterable[bytes]]:
    """The WSGI application: `/ping` and `/invocations` over the handler and the loaded model."""
    from werkzeug.exceptions import RequestEntityTooLarge
    from werkzeug.wrappers import Request, Response

    from tsa.serving import inference

    model = inference.model_fn(model_dir)
    log.info("model loaded from %s (%s model, on %s)", model_dir, model["config"]["model_type"], model["device"])

    def invocations(request: Request) -> Response:
        try:
            body = request.get_data(cache=False)
        except RequestEntityTooLarge:
            return _error(413, f"the request is larger than {max_request_bytes / 2**20:.1f} MiB "
                               "(TSA_MAX_REQUEST_MB): send fewer instances per request")
        try:
            instances = inference.input_fn(body, request.headers.get("Content-Type", inference.JSON))
            text, kind = inference.output_fn(inference.predict_fn(instances, model),
                                             request.headers.get("Accept", inference.JSON))
        except inference.RequestError as exc:
            return _error(exc.status_code, exc.message)
        except Exception:
            log.exception("invocation failed")
            return _error(500, "internal error while scoring; see the endpoint's log")
        return Response(text, status=200, mimetype=kind)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        request.max_content_length = max_request_bytes
        if request.path == "/ping" and request.method == "GET":
            response = Response("", status=200)
        elif request.path == "/invocations" and request.method == "POST":
            response = invocations(request)
        else:
            response = _error(404, f"{request.method} {request.path}: this endpoint serves GET /ping and "
                                   "POST /invocations")
        return response(environ, start_response)

    return app


def _serve(listener: socket.socket, app: Callable[..., Iterable[bytes]], grace_s: float,
           children: list[int]) -> None:
    """One worker: gevent's WSGI server on the shared socket until SIGTERM (passed on to `children`)."""
    from gevent import signal_handler
    from gevent.pywsgi import WSGIServer

    server = WSGIServer(listener, app, log=None)

    def stop() -> None:
        log.info("SIGTERM: finishing the requests in flight (at most %.0f s), then exiting", grace_s)
        for pid in children:
            os.kill(pid, signal.SIGTERM)
        server.stop(timeout=grace_s)

    signal_handler(signal.SIGTERM, stop)
    server.serve_forever()


def serve(model_dir: str | None = None, port: int | None = None, workers: int | None = None) -> int:
    """Run the endpoint; returns the exit code (0 after a SIGTERM)."""
    model_dir = model_dir or os.environ.get("SM_MODEL_DIR", "/opt/ml/model")
    port = port or int(os.environ.get("SAGEMAKER_BIND_TO_PORT", DEFAULT_PORT))
    workers = workers or int(os.environ.get("SAGEMAKER_MODEL_SERVER_WORKERS", "1"))
    max_bytes = int(float(os.environ.get("TSA_MAX_REQUEST_MB", DEFAULT_MAX_REQUEST_MB)) * 2**20)
    grace_s = float(os.environ.get("TSA_STOP_GRACE_S", DEFAULT_STOP_GRACE_S))
    app = make_app(model_dir, max_bytes)  # loaded before the fork: a broken model fails at once
    from gevent import socket as gevent_socket

    listener = gevent_socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # cooperative: the server's loop waits on it
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(1024)
    log.info("serving on port %d with %d worker(s); requests up to %.1f MiB", port, workers, max_bytes / 2**20)
    children = []
    for _ in range(workers - 1):
        pid = os.fork()
        if pid == 0:
            _serve(listener, app, grace_s, [])
            os._exit(0)
        children.append(pid)
    _serve(listener, app, grace_s, children)
    for pid in children:
        os.waitpid(pid, 0)
    return 0
