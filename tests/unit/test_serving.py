"""The inference handler (`model/code/inference.py`): strict requests, HTTP statuses, content negotiation.

Run: .venv/bin/pytest tests/unit/test_serving.py   (the handler as a trained job wrote it, loaded by path)

Every malformed request of the table is answered with its 4xx status and a message that names
the problem; no malformed request is ever scored. The same handler is also driven through the real
SageMaker PyTorch inference toolkit (`sagemaker-pytorch-inference`: its handler service, module
loading and error mapping), and `tsa serve` in process and over real HTTP.
"""

from __future__ import annotations

import copy
import io
import json
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.jobs import (
    QUICK,
    free_port,
    fresh_environment,
    load_handler,
    make_job,
    predictions,
    run_job,
    torchserve_post,
    validation_instances,
    wait_until_serving,
)
from tests.toolkit_request import TorchServeContext

pytestmark = pytest.mark.slow

JSON, JSONLINES = "application/json", "application/jsonlines"
NPY, NPZ = "application/x-npy", "application/x-npz"


@pytest.fixture(scope="module", params=["single", "dual"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = make_job(tmp_path_factory.mktemp(request.param) / "job", {**QUICK, "model_type": request.param},
                    rows="train=64,validation=32,calibration=32")
    proc = run_job(root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    handler = load_handler(root / "model")
    return {"handler": handler, "model": handler.model_fn(str(root / "model")), "instances": validation_instances(root),
            "model_dir": str(root / "model"),
            "expected": predictions(root, "validation"), "kind": request.param}


def score(served: dict[str, Any], body: str | bytes, content_type: str = JSON, accept: str = JSON) -> tuple[str, str]:
    handler = served["handler"]
    return handler.output_fn(handler.predict_fn(handler.input_fn(body, content_type), served["model"]), accept)


def test_scores_equal_the_jobs_predictions(served: dict[str, Any]) -> None:
    body, kind = score(served, json.dumps({"instances": served["instances"]}))
    scores = [p["score"] for p in json.loads(body)["predictions"]]
    assert kind == JSON and len(scores) == 32
    np.testing.assert_allclose(scores, [served["expected"][str(row)] for row in range(32)], rtol=0, atol=1e-6)


@pytest.mark.parametrize(("content_type", "accept", "answer"), [
    ("application/json; charset=utf-8", "application/json, text/plain", JSON),
    ("Application/JSON", "*/*", JSON),
    (JSON, "text/html;q=0.9, application/jsonlines;q=0.8, application/json;q=0.1", JSONLINES),
    (JSONLINES, "application/*", JSON),
    (JSONLINES + "; charset=utf-8", None, JSON),
])
def test_content_negotiation(served: dict[str, Any], content_type: str, accept: str | None, answer: str) -> None:
    rows = served["instances"][:3]
    body = "\n".join(json.dumps(r) for r in rows) if content_type.lower().startswith(JSONLINES) else \
        json.dumps({"instances": rows})
    text, kind = score(served, body, content_type, accept)
    assert kind == answer
    lines = [json.loads(line) for line in text.splitlines()] if kind == JSONLINES else json.loads(text)["predictions"]
    np.testing.assert_allclose([p["score"] for p in lines], [served["expected"][str(r)] for r in range(3)],
                               rtol=0, atol=1e-6)


def stacked(instances: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    return {name: np.asarray([instance[name] for instance in instances]) for name in instances[0]}


def npz_body(arrays: dict[str, np.ndarray], compressed: bool = False) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def npy_body(rows: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, rows, allow_pickle=allow_pickle)
    return buffer.getvalue()


# The documented x-npy row layout: each sequence's categorical then numerical rows, cid before ccid, X_num last.
FLAT_ORDER = {"single": ["X_seq_cat", "X_seq_num", "X_num"],
              "dual": ["cid_X_seq_cat", "cid_X_seq_num", "ccid_X_seq_cat", "ccid_X_seq_num", "X_num"]}


def flat_rows(instances: list[dict[str, Any]]) -> np.ndarray:
    """Each instance's arrays flattened and joined in the documented order."""
    order = FLAT_ORDER["dual" if "cid_X_seq_cat" in instances[0] else "single"]
    return np.stack([np.concatenate([np.ravel(instance[name]) for name in order]) for instance in instances])


@pytest.mark.parametrize(("kind", "make"), [
    (NPZ, lambda rows: npz_body(stacked(rows))),
    (NPZ, lambda rows: npz_body({name: values.astype(np.float32 if values.dtype.kind == "f" else np.int32)
                                 for name, values in stacked(rows).items()}, compressed=True)),
    (NPY, lambda rows: npy_body(flat_rows(rows))),
], ids=["npz", "npz_compressed_narrow_dtypes", "npy_flat_rows"])
def test_numpy_bodies_score_as_the_job_did(served: dict[str, Any], kind: str, make: Callable[..., bytes]) -> None:
    body = make(served["instances"])
    scores = [p["score"] for p in json.loads(score(served, body, kind)[0])["predictions"]]
    tolerance = 1e-6 if "compressed" not in str(make) else 1e-4  # float32 inputs round the float64 ones
    np.testing.assert_allclose(scores, [served["expected"][str(row)] for row in range(32)], rtol=0, atol=tolerance)


def npz_changed(change: Callable[[dict[str, np.ndarray]], None]) -> Callable[[list[dict[str, Any]]], bytes]:
    """An .npz body of two good instances with `change` applied to the named arrays."""
    def body(instances: list[dict[str, Any]]) -> bytes:
        arrays = stacked(instances[:2])
        change(arrays)
        return npz_body(arrays)
    return body


def npy_changed(change: Callable[[np.ndarray], np.ndarray]) -> Callable[[list[dict[str, Any]]], bytes]:
    def body(instances: list[dict[str, Any]]) -> bytes:
        return npy_body(change(flat_rows(instances[:2])))
    return body


def changed(change: Callable[[dict[str, Any]], None], row: int = 0) -> Callable[[list[dict[str, Any]]], str]:
    """A JSON body of two good instances with `change` applied to instance `row`."""
    def body(instances: list[dict[str, Any]]) -> str:
        batch = copy.deepcopy(instances[:2])
        change(batch[row])
        return json.dumps({"instances": batch})
    return body


def seq(kind: str) -> str:
    return "X_seq_cat" if kind == "single" else "cid_X_seq_cat"


def num(kind: str) -> str:
    return "X_seq_num" if kind == "single" else "ccid_X_seq_num"


def setting(array: Callable[[str], str], index: tuple[int, ...], value: Any) -> Callable[[str], Callable]:
    def for_kind(kind: str) -> Callable[[dict[str, Any]], None]:
        def change(instance: dict[str, Any]) -> None:
            target = instance[array(kind)]
            for i in index[:-1]:
                target = target[i]
            target[index[-1]] = value
        return change
    return for_kind


Case = tuple[str, Callable[[str], Any], str, str, int, str]
# (id, body for a model kind (a function of the good instances, or fixed text), content type, accept, status,
#  text the message holds)
MALFORMED: list[Case] = [
    ("bad_json", lambda k: "{", JSON, JSON, 400, "the body is not valid JSON"),
    ("not_an_object", lambda k: "[1, 2]", JSON, JSON, 400, 'the body must be a JSON object {"instances": [...]}'),
    ("no_instances_key", lambda k: '{"rows": []}', JSON, JSON, 400, 'the body must be a JSON object'),
    ("empty_instances", lambda k: '{"instances": []}', JSON, JSON, 400, "the request holds no instances"),
    ("empty_jsonlines", lambda k: "\n\n", JSONLINES, JSON, 400, "the request holds no instances"),
    ("bad_jsonlines_line", lambda k: lambda i: json.dumps(i[0]) + "\n{", JSONLINES, JSON, 400,
     "line 2 is not valid JSON"),
    ("instance_not_an_object", lambda k: '{"instances": [1]}', JSON, JSON, 400, "instance 0 is int"),
    ("not_utf8", lambda k: b'{"instances": "\xff"}', JSON, JSON, 400, "the body is not UTF-8 text"),
    ("missing_array", lambda k: changed(lambda i: i.pop("X_num")), JSON, JSON, 400, "missing arrays ['X_num']"),
    ("unknown_array", lambda k: changed(lambda i: i.update(Y=1)), JSON, JSON, 400, "unknown arrays ['Y']"),
    ("sequence_too_short", lambda k: changed(lambda i: i[seq(k)].pop(0)), JSON, JSON, 400,
     "shape (7, 32), expected (8, 32)"),
    ("sequence_too_long", lambda k: changed(lambda i: i[seq(k)].append(i[seq(k)][0])), JSON, JSON, 400,
     "shape (9, 32), expected (8, 32)"),
    ("row_too_narrow", lambda k: changed(lambda i: [r.pop() for r in i[num(k)]]), JSON, JSON, 400,
     "shape (8, 33), expected (8, 34)"),
    ("ragged_rows", lambda k: changed(lambda i: i[seq(k)][3].pop()), JSON, JSON, 400, "not an array of numbers"),
    ("strings", lambda k: changed(lambda i: i.update(X_num=["a", "b", "c"])), JSON, JSON, 400,
     "instance 0 array 'X_num': not an array of numbers"),
    ("null_array", lambda k: changed(lambda i: i.update(X_num=None)), JSON, JSON, 400,
     "instance 0 array 'X_num': shape (), expected (3,)"),
    # json.dumps writes the literals NaN, Infinity, -Infinity, which JSON does not have: refused as they are read
    ("nan_engineered", lambda k: changed(lambda i: i["X_num"].__setitem__(1, float("nan"))), JSON, JSON, 400,
     "the body holds the literal NaN: JSON has no NaN or Infinity, and the model requires finite numbers"),
    ("inf_in_sequence", lambda k: changed(setting(num, (2, 0), float("inf"))(k)), JSON, JSON, 400,
     "the body holds the literal Infinity: JSON has no NaN or Infinity"),
    ("negative_inf_in_sequence", lambda k: changed(setting(num, (2, 0), float("-inf"))(k)), JSON, JSON, 400,
     "the body holds the literal -Infinity: JSON has no NaN or Infinity"),
    ("nan_jsonlines", lambda k: lambda i: json.dumps(i[0]) + "\n" + json.dumps({**i[1], "X_num": [float("nan")] * 3}),
     JSONLINES, JSON, 400, "line 2 holds the literal NaN: JSON has no NaN or Infinity"),
    ("nested_100000_deep", lambda k: '{"instances": ' + "[" * 100_000 + "]" * 100_000 + "}", JSON, JSON, 400,
     "the body is JSON nested too deeply to parse"),
    ("fractional_id", lambda k: changed(setting(seq, (7, 0), 1.5)(k)), JSON, JSON, 400,
     "categorical ids must be integers"),
    ("id_too_large", lambda k: changed(setting(seq, (7, 0), 999)(k)), JSON, JSON, 400,
     "has categorical id 999: allowed 0..160"),
    ("negative_id", lambda k: changed(setting(seq, (7, 1), -1)(k), row=1), JSON, JSON, 400,
     "instance 1 array"),
    ("not_padded_not_binary", lambda k: changed(setting(num, (3, -1), 0.5)(k)), JSON, JSON, 400,
     "column not_padded (last): has a value other than 0 or 1"),
    ("padded_current_row", lambda k: changed(setting(num, (7, -1), 0.0)(k)), JSON, JSON, 400,
     "has a padded last row"),
    ("negative_time", lambda k: changed(setting(num, (2, -2), -1.0)(k)), JSON, JSON, 400,
     "column time_to_last (second to last): is negative"),
    ("time_overflows", lambda k: changed(setting(num, (2, -2), 1e30)(k)), JSON, JSON, 400, "exceeds 8.8e+07 s"),
    ("unsupported_content_type", lambda k: "a,b", "text/csv", JSON, 415, "content type 'text/csv' is not supported"),
    ("unsupported_accept", lambda k: changed(lambda i: None), JSON, "text/csv", 406, "Accept 'text/csv'"),
    ("accept_refusing_everything", lambda k: changed(lambda i: None), JSON, "application/json;q=0", 406, "Accept"),
    ("npz_not_an_archive", lambda k: b"PK not a zip", NPZ, JSON, 400, "is not a .npz archive (numpy.savez)"),
    ("npz_missing_array", lambda k: npz_changed(lambda a: a.pop("X_num")), NPZ, JSON, 400,
     "missing arrays ['X_num']"),
    ("npz_rows_differ", lambda k: npz_changed(lambda a: a.update(X_num=a["X_num"][:1])), NPZ, JSON, 400,
     "array 'X_num': shape (1, 3), expected (rows, 3) with the same rows as every array (2)"),
    ("npz_strings", lambda k: npz_changed(lambda a: a.update(X_num=np.full((2, 3), "a"))), NPZ, JSON, 400,
     "array 'X_num': dtype <U1, allowed are integer or floating arrays"),
    ("npz_python_objects", lambda k: npz_changed(lambda a: a.update(X_num=np.array([[{}] * 3] * 2))), NPZ, JSON,
     400, "without Python objects"),
    ("npz_unpacks_too_large", lambda k: npz_body({"X_num": np.zeros((600, 2**17))}, compressed=True), NPZ, JSON,
     413, "unpacks to 600 MiB: at most 512 MiB"),
    ("npz_nan", lambda k: npz_changed(lambda a: a["X_num"].__setitem__((1, 2), np.nan)), NPZ, JSON, 400,
     "instance 1 array 'X_num' column 2: holds NaN"),
    ("npy_wrong_width", lambda k: npy_changed(lambda r: r[:, 1:]), NPY, JSON, 400,
     "X_seq_num 8x34 + X_num 3, flattened in this order"),
    ("npy_python_objects", lambda k: npy_body(np.array([[None, 1]]), allow_pickle=True), NPY, JSON, 400,
     "is not a .npy array (numpy.save) without Python objects"),
    ("npy_no_rows", lambda k: npy_changed(lambda r: r[:0]), NPY, JSON, 400, "the request holds no instances"),
    ("npy_fractional_id", lambda k: npy_changed(lambda r: r + np.eye(1, r.shape[1]) * 0.5), NPY, JSON, 400,
     "instance 0 array 'X_seq_cat': categorical ids must be integers"),
]


@pytest.mark.parametrize(("make", "content_type", "accept", "status", "message"), [c[1:] for c in MALFORMED],
                         ids=[c[0] for c in MALFORMED])
def test_a_malformed_request_is_a_client_error_that_names_the_problem(
        served: dict[str, Any], make: Callable[[str], Any], content_type: str, accept: str, status: int,
        message: str) -> None:
    body = make(served["kind"])
    if callable(body):
        body = body(served["instances"])
    if served["kind"] == "dual":  # the dual model's arrays carry prefixes
        message = message.replace("'X_seq_cat'", "'cid_X_seq_cat'")
    with pytest.raises(served["handler"].RequestError) as raised:
        score(served, body, content_type, accept)
    assert raised.value.status_code == status
    assert message in raised.value.message



@pytest.fixture(scope="module")
def client(served: dict[str, Any]) -> Any:
    """`tsa serve`'s WSGI application, in process (Werkzeug's test client)."""
    from werkzeug.test import Client

    from tsa.serving.server import make_app

    return Client(make_app(served["model_dir"], max_request_bytes=2**20))


def test_the_endpoint_answers_ping_and_scores_as_the_job_did(served: dict[str, Any], client: Any) -> None:
    assert client.get("/ping").status_code == 200
    response = client.post("/invocations", data=json.dumps({"instances": served["instances"]}),
                           headers={"Content-Type": "application/json; charset=utf-8", "Accept": "*/*"})
    assert response.status_code == 200 and response.mimetype == JSON
    scores = [p["score"] for p in response.get_json()["predictions"]]
    np.testing.assert_allclose(scores, [served["expected"][str(row)] for row in range(32)], rtol=0, atol=1e-6)


@pytest.mark.parametrize(("path", "body", "headers", "status", "message"), [
    ("/invocations", "{", {"Content-Type": JSON}, 400, "the body is not valid JSON"),
    ("/invocations", "a,b", {"Content-Type": "text/csv"}, 415, "content type 'text/csv'"),
    ("/invocations", '{"instances": []}', {"Content-Type": JSON, "Accept": "text/csv"}, 400, "no instances"),
    ("/invocations", "x" * (2**20 + 1), {"Content-Type": JSON}, 413, "larger than 1.0 MiB"),
    ("/elsewhere", "", {}, 404, "serves GET /ping and POST /invocations"),
])
def test_the_endpoint_answers_client_errors_with_their_status(client: Any, path: str, body: str,
                                                              headers: dict[str, str], status: int,
                                                              message: str) -> None:
    response = client.post(path, data=body, headers=headers)
    assert response.status_code == status
    assert message in response.get_json()["error"]


def test_tsa_serve_over_real_http_then_sigterm(served: dict[str, Any]) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tsa", "serve", "--model-dir", served["model_dir"], "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**fresh_environment(), "SAGEMAKER_MODEL_SERVER_WORKERS": "2"})
    try:
        wait_until_serving(port, 60, alive=lambda: proc.poll() is None, describe=lambda: "tsa serve did not start")
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", method="POST",
                                         data=json.dumps({"instances": served["instances"][:5]}).encode(),
                                         headers={"Content-Type": JSON})
        with urllib.request.urlopen(request, timeout=30) as response:
            scores = [p["score"] for p in json.loads(response.read())["predictions"]]
        np.testing.assert_allclose(scores, [served["expected"][str(r)] for r in range(5)], rtol=0, atol=1e-6)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, out[-2000:]
    assert "serving stopped by SIGTERM" in out


@pytest.fixture
def toolkit_service(served: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The SageMaker PyTorch inference toolkit's handler service over the job's model folder."""
    import sys

    from sagemaker_pytorch_serving_container.handler_service import HandlerService

    monkeypatch.syspath_prepend(str(Path(served["model_dir"]) / "code"))  # as the toolkit's server start does
    monkeypatch.delitem(sys.modules, "inference", raising=False)
    service = HandlerService()
    service.initialize(TorchServeContext(served["model_dir"], {}))
    return service


def toolkit_request(service: Any, served: dict[str, Any], body: bytes, headers: dict[str, str]) -> Any:
    context = TorchServeContext(served["model_dir"], headers)
    response = service.handle([{"body": body}], context)
    return response, context


def test_the_toolkit_loads_the_handler_and_scores_as_the_job_did(served: dict[str, Any], toolkit_service: Any) -> None:
    body = json.dumps({"instances": served["instances"]}).encode()
    response, context = toolkit_request(toolkit_service, served, body,
                                        {"Content-Type": "application/json; charset=utf-8", "Accept": "*/*"})
    assert context.status is None and context.content_type == JSON
    scores = [p["score"] for p in json.loads(response[0])["predictions"]]
    np.testing.assert_allclose(scores, [served["expected"][str(row)] for row in range(32)], rtol=0, atol=1e-6)


def narrowed(instances: list[dict[str, Any]]) -> bytes:
    """One good instance whose numerical sequence rows are one column short."""
    instance = copy.deepcopy(instances[0])
    name = "X_seq_num" if "X_seq_num" in instance else "ccid_X_seq_num"
    instance[name] = [row[:-1] for row in instance[name]]
    return json.dumps({"instances": [instance]}).encode()


@pytest.mark.parametrize(("body", "headers", "status", "message"), [
    (b"{", {"Content-Type": JSON}, 400, "the body is not valid JSON"),
    (b"a,b", {"Content-Type": "text/csv"}, 415, "content type 'text/csv'"),
    (b'{"instances": [{"X_num": [1, 2, 3]}]}', {"Content-Type": JSON}, 400, "instance 0: missing arrays"),
    (b'{"instances": [1]}', {"Content-Type": JSON, "Accept": "text/csv"}, 400, "instance 0 is int"),
    (b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {"Content-Type": JSON}, 400,
     "the body is JSON nested too deeply to parse"),
    (b'{"instances": [{"X_num": [NaN, 1, 2]}]}', {"Content-Type": JSON}, 400,
     "the body holds the literal NaN: JSON has no NaN or Infinity"),
    (b'{"instances": [{"X_num": [1, -Infinity, 2]}]}', {"Content-Type": JSON}, 400,
     "the body holds the literal -Infinity: JSON has no NaN or Infinity"),
    (narrowed, {"Content-Type": JSON}, 400, "shape (8, 33), expected (8, 34)"),
], ids=["bad_json", "csv", "missing_arrays", "not_an_object", "nested_100000_deep", "nan_literal",
        "negative_infinity_literal", "row_too_narrow"])
def test_the_toolkit_answers_client_errors_with_their_status(served: dict[str, Any], toolkit_service: Any,
                                                             body: Any, headers: dict[str, str], status: int,
                                                             message: str) -> None:
    if callable(body):
        body = body(served["instances"])
    response, context = toolkit_request(toolkit_service, served, body, headers)
    assert context.status is not None and context.status[0] == status
    assert message in context.status[1] and "predictions" not in response[0]


@pytest.fixture(scope="module")
def torchserve(served: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real TorchServe (Java frontend, Python workers) started by the toolkit's own start code over the
    job's model folder, as the AWS PyTorch inference image runs it; stopped with SIGTERM at the end."""
    from local_mode import serve_torchserve

    workdir = tmp_path_factory.mktemp(f"torchserve_{served['kind']}")
    port = free_port()
    log = workdir / "server.log"
    with serve_torchserve.one_per_machine():  # parallel test workers take turns
        server = serve_torchserve.start(Path(served["model_dir"]), port, workdir, env=serve_torchserve.isolated_ports())
        wait_until_serving(port, 120, alive=lambda: server.poll() is None,
                           describe=lambda: f"TorchServe did not start:\n{log.read_text()[-3000:]}")
        yield port
        code, left = serve_torchserve.stop(server, workdir)
    assert code == 0 and not left, f"exit {code}, still running {left}:\n{log.read_text()[-3000:]}"


@pytest.mark.parametrize(("content_type", "make"), [
    ("application/json; charset=utf-8", lambda rows: json.dumps({"instances": rows}).encode()),
    (NPZ, lambda rows: npz_body(stacked(rows))),
], ids=["json", "npz"])
def test_real_torchserve_scores_as_the_job_did(served: dict[str, Any], torchserve: int, content_type: str,
                                               make: Callable[..., bytes]) -> None:
    status, kind, text = torchserve_post(torchserve, make(served["instances"]),
                                         {"Content-Type": content_type, "Accept": "application/json, text/plain"})
    assert status == 200 and kind.startswith(JSON), text[:2000]
    scores = [p["score"] for p in json.loads(text)["predictions"]]
    np.testing.assert_allclose(scores, [served["expected"][str(row)] for row in range(32)], rtol=0, atol=1e-6)


# The one request the AWS toolkit answers before the handler sees it: a body with Content-Type exactly
# application/json is decoded as UTF-8 by sagemaker_inference's transformer first, and its
# UnicodeDecodeError is a 500 (tsa serve, and `application/json; charset=utf-8`, give the handler's 400).
TOOLKIT_ANSWERS = {"not_utf8": (500, "codec can't decode byte 0xff")}


@pytest.mark.parametrize(("make", "content_type", "accept", "status", "message"),
                         [(*c[1:4], *TOOLKIT_ANSWERS.get(c[0], c[4:])) for c in MALFORMED],
                         ids=[c[0] for c in MALFORMED])
def test_real_torchserve_answers_a_malformed_request_with_its_status(
        served: dict[str, Any], torchserve: int, make: Callable[[str], Any], content_type: str, accept: str,
        status: int, message: str) -> None:
    body = make(served["kind"])
    if callable(body):
        body = body(served["instances"])
    if served["kind"] == "dual":
        message = message.replace("'X_seq_cat'", "'cid_X_seq_cat'")
    answer, _, text = torchserve_post(torchserve, body if isinstance(body, bytes) else body.encode(),
                                      {"Content-Type": content_type, "Accept": accept})
    first_line = text.splitlines()[0] if text else ""
    assert answer == status and message in first_line, text[:2000]
    assert "predictions" not in text
