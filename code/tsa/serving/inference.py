"""SageMaker PyTorch inference handler for a tsa-training model (copied to `model/code/inference.py`).

Needs only torch and numpy, and `inputs.py` beside it (copied with it: the model-input contract
training uses, `tsa/inputs.py`): it runs in the SageMaker PyTorch inference container without the
tsa package, under the image's torch (2.6.0 or newer; the versions tested: docs/serving.md).

- `model_fn` builds the plain model from the model folder: the package `tsa.models` as the job
  copied it (`code/tsa_models/`), the saved config (`config.json`) and the weights (the state dict
  `<test_name>.pt`), on the GPU when there is one; and reads the calibration percentile map.
- `input_fn` reads `application/json` (`{"instances": [{...}, ...]}`), `application/jsonlines`
  (one instance object per line, as batch transform sends), or, compact, `application/x-npz` (one
  array per name with the rows first, `numpy.savez`) and `application/x-npy` (one 2-D array: each
  row an instance's arrays flattened and joined in `expected_arrays` order, what the SDK's
  `NumpySerializer` sends); media-type parameters such as `charset=utf-8` are accepted. An instance
  holds the legacy per-example arrays (`X_seq_cat`, `X_seq_num`, `X_num`; dual model: `cid_*`,
  `ccid_*`, `X_num`). numpy bodies are read with `allow_pickle=False`: nothing in a request runs.
  JSON is read strictly: the literals NaN, Infinity and -Infinity (Python's json accepts them) and
  a nesting too deep for the parser are 400s, never a 500.
- `predict_fn` checks every instance as training checks a channel (the arrays the model reads,
  nothing else; per-instance shapes of the saved config, `seq_len` included; integral ids in range;
  finite values; the `not_padded` and `time_to_last` rules of `inputs.py`), builds the forward
  arguments with training's own function (`inputs.forward_arguments`), and returns P(fraud) =
  softmax(scores)[:, -1] and its calibration percentile.
- `output_fn` answers `application/json` (`{"predictions": [{"score": p, "score_percentile": q}]}`)
  or `application/jsonlines`, chosen from the Accept header (lists, q-values, `*/*`); always
  finite JSON.

A client error is a `RequestError`, a subclass of the toolkit's `GenericInferenceToolkitError`
when the toolkit is importable, which it answers with that status: 400 for a malformed request (the message names
the instance, the array and the rule), 415 for an unsupported content type, 406 for an
unsupported Accept. Anything else is the toolkit's 500.
"""

from __future__ import annotations

import bisect
import importlib.util
import io
import json
import os
import sys
import types
import zipfile
import zlib
from typing import Any

import numpy as np
import torch

JSON = "application/json"
JSONLINES = "application/jsonlines"
NPY, NPZ = "application/x-npy", "application/x-npz"
INPUT_TYPES = (JSON, JSONLINES, NPY, NPZ)
# An .npz body is a zip archive: its arrays may unpack far beyond the request size; refuse above this.
MAX_UNPACKED_BYTES = 512 * 2**20
NO_INSTANCES = "the request holds no instances: send at least one"
OUTPUT_TYPES = (JSON, JSONLINES)
MODEL_PACKAGE = "tsa_models"  # model/code/tsa_models/: the tsa package's `tsa.models`, copied by the job

try:  # inside the SageMaker inference toolkit: its error type, which it answers with the status
    from sagemaker_inference.errors import GenericInferenceToolkitError as _ErrorBase
except ImportError:  # outside it (tests, `tsa serve`)
    _ErrorBase = Exception


class RequestError(_ErrorBase):  # type: ignore[misc, valid-type]
    """A client error with its HTTP status; the toolkit's `GenericInferenceToolkitError` when importable."""

    def __init__(self, status_code: int, message: str) -> None:
        if _ErrorBase is Exception:
            super().__init__(message)
        else:
            super().__init__(status_code, message)
        self.status_code = status_code
        self.message = message


def _load_inputs() -> Any:
    """The model-input contract: `inputs.py` beside this file (model/code/), loaded by path; in the
    source tree (`tsa/serving/inference.py`, none beside it) the package's own `tsa.inputs`."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "inputs.py")
    if not os.path.isfile(path):
        return importlib.import_module("tsa.inputs")
    spec = importlib.util.spec_from_file_location("tsa_served_inputs", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


INPUTS = _load_inputs()


def media_type(header: str | None, default: str = JSON) -> str:
    """`application/json; charset=utf-8` -> `application/json`."""
    return (header or default).split(";")[0].strip().lower() or default


def choose_output(accept: str | None) -> str:
    """The response type for an Accept header: the highest-q type we can write, `*/*` meaning JSON."""
    options = []
    for position, part in enumerate((accept or JSON).split(",")):
        fields = part.split(";")
        quality = 1.0
        for parameter in fields[1:]:
            key, _, value = parameter.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        options.append((-quality, position, fields[0].strip().lower()))
    for negative_quality, _, kind in sorted(options):
        if negative_quality >= 0:
            continue
        if kind in OUTPUT_TYPES:
            return kind
        if kind in ("*/*", "application/*"):
            return JSON
    raise RequestError(406, f"Accept {accept!r}: this endpoint answers {' or '.join(OUTPUT_TYPES)}")


def import_model_package(model_dir: str) -> Any:
    """`<model_dir>/code/tsa_models`, imported from that folder under a module name of its own.

    By path, not from `sys.path`: the handler itself may be loaded by path (tests), and one process
    may load several model folders, each with its own copy of the code.
    """
    folder = os.path.abspath(os.path.join(model_dir, "code", MODEL_PACKAGE))
    name = f"{MODEL_PACKAGE}_{zlib.crc32(folder.encode()):08x}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(folder, "__init__.py"),
                                                      submodule_search_locations=[folder])
        package = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[name] = package  # before it runs: its relative imports find their package there
        try:
            spec.loader.exec_module(package)  # type: ignore[union-attr]
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def load_model(model_dir: str, saved: dict[str, Any]) -> torch.nn.Module:
    """The trained model (CPU, eval) from the folder's model code, its saved config and its weights.

    The weights are the state dict `<test_name>.pt` (`torch.save`, the module's own keys), read with
    `weights_only=True` (no code runs from the file), not `model.safetensors`: the AWS PyTorch
    inference images do not install the safetensors package. Fast mode's jobs scored with the fused
    attention kernels, so the model is built as they trained it.
    """
    models = import_model_package(model_dir)
    model = models.build_model(types.SimpleNamespace(**saved["model"]),
                               fused_attention=saved["runtime"]["fast_mode"])
    path = os.path.join(model_dir, f"{saved['runtime']['test_name']}.pt")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def model_fn(model_dir: str) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with open(os.path.join(model_dir, "config.json")) as handle:
        saved = json.load(handle)
    model = load_model(model_dir, saved).to(device)
    config = saved["model"]
    percentiles = []
    path = os.path.join(model_dir, "percentile_score.json")
    if os.path.exists(path):
        with open(path) as handle:
            percentiles = json.load(handle)
    return {"model": model, "config": config, "percentiles": percentiles, "device": device}


def _parse_json(text: str, where: str) -> Any:
    """`text` parsed as strict JSON: no NaN/Infinity literals (Python's json reads them), bounded nesting."""
    def refuse(literal: str) -> Any:
        raise RequestError(400, f"{where} holds the literal {literal}: JSON has no NaN or Infinity, and the model "
                                "requires finite numbers; send finite numbers")

    try:
        return json.loads(text, parse_constant=refuse)
    except RecursionError as exc:  # the C scanner recurses per level: a deep nesting is no ValueError
        raise RequestError(400, f"{where} is JSON nested too deeply to parse ({exc}): a request nests at most "
                                '{"instances": [{"name": [[numbers]]}]}') from exc
    except ValueError as exc:
        raise RequestError(400, f"{where} is not valid JSON ({exc})") from exc


def _decoded_text(body: bytes | str) -> str:
    try:
        return body.decode("utf-8") if isinstance(body, (bytes, bytearray)) else body
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"the body is not UTF-8 text ({exc})") from exc


def _json_instances(text: str, kind: str) -> list[dict[str, Any]]:
    if kind == JSON:
        payload = _parse_json(text, "the body")
        instances = payload.get("instances") if isinstance(payload, dict) else None
        if not isinstance(instances, list):
            raise RequestError(400, 'the body must be a JSON object {"instances": [...]}')
    else:
        instances = [_parse_json(line, f"line {number}") for number, line in enumerate(text.splitlines(), 1)
                     if line.strip()]
    for index, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise RequestError(400, f"instance {index} is {type(instance).__name__}: expected an object of arrays")
    if not instances:
        raise RequestError(400, NO_INSTANCES)
    return instances


def _numpy_body(body: bytes | str, kind: str) -> np.ndarray | dict[str, np.ndarray]:
    """An `application/x-npy` array or the named arrays of an `application/x-npz` archive."""
    raw = io.BytesIO(body.encode("utf-8") if isinstance(body, str) else bytes(body))
    try:
        if kind == NPY:
            return np.load(raw, allow_pickle=False)
        with zipfile.ZipFile(raw) as archive:
            unpacked = sum(member.file_size for member in archive.infolist())
        if unpacked > MAX_UNPACKED_BYTES:
            raise RequestError(413, f"the {NPZ} body unpacks to {unpacked / 2**20:.0f} MiB: at most "
                                    f"{MAX_UNPACKED_BYTES / 2**20:.0f} MiB per request; send fewer rows")
        with np.load(raw, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except RequestError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        what = "a .npy array (numpy.save)" if kind == NPY else "a .npz archive (numpy.savez)"
        raise RequestError(400, f"the {kind} body is not {what} without Python objects ({exc})") from exc


Batch = list[dict[str, Any]] | dict[str, np.ndarray] | np.ndarray


def input_fn(body: bytes | str, content_type: str = JSON) -> Batch:
    """The request's instances: JSON objects, named arrays (npz) or flat rows (npy), checked in `predict_fn`."""
    kind = media_type(content_type)
    if kind not in INPUT_TYPES:
        raise RequestError(415, f"content type {content_type!r} is not supported: send {' or '.join(INPUT_TYPES)}")
    return _numpy_body(body, kind) if kind in (NPY, NPZ) else _json_instances(_decoded_text(body), kind)


def expected_arrays(config: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], bool]]:
    """Array name -> (per-instance shape, holds ids) of the model's inputs (`inputs.model_arrays`)."""
    arrays = INPUTS.model_arrays(config["model_type"], config["seq_len"], config["n_cat_features"],
                                 config["n_num_features"], config["n_engineered_num_features"])
    return {name: (shape, kind == "ids") for name, (shape, kind) in arrays.items()}


def _array(instance: dict[str, Any], index: int, name: str, shape: tuple[int, ...]) -> np.ndarray:
    try:
        values = np.asarray(instance[name], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise RequestError(400, f"instance {index} array '{name}': not an array of numbers of shape {shape} "
                                f"({exc})") from exc
    if values.shape != shape:
        raise RequestError(400, f"instance {index} array '{name}': shape {values.shape}, expected {shape}")
    return values


def _stacked(instances: list[dict[str, Any]], expected: dict[str, tuple[tuple[int, ...], bool]],
             model_type: str) -> dict[str, np.ndarray]:
    for index, instance in enumerate(instances):
        missing = sorted(set(expected) - set(instance))
        unknown = sorted(set(instance) - set(expected))
        if missing or unknown:
            raise RequestError(400, f"instance {index}: missing arrays {missing}, unknown arrays {unknown}; the "
                                    f"{model_type} model reads {sorted(expected)}")
    return {name: np.stack([_array(instance, index, name, shape) for index, instance in enumerate(instances)])
            for name, (shape, _) in expected.items()}


def _numeric(values: np.ndarray, what: str) -> np.ndarray:
    if values.dtype.kind not in "iuf":
        raise RequestError(400, f"{what}: dtype {values.dtype}, allowed are integer or floating arrays")
    return values.astype(np.float64)


def _named(arrays: dict[str, np.ndarray], expected: dict[str, tuple[tuple[int, ...], bool]],
           model_type: str) -> dict[str, np.ndarray]:
    """The arrays of an .npz body: exactly the model's names, rows first, one row count."""
    missing, unknown = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
    if missing or unknown:
        raise RequestError(400, f"the {NPZ} body: missing arrays {missing}, unknown arrays {unknown}; the "
                                f"{model_type} model reads {sorted(expected)}")
    rows = {name: arrays[name].shape[0] if arrays[name].ndim else 0 for name in expected}
    data = {}
    for name, (shape, _) in expected.items():
        if arrays[name].shape[1:] != shape or rows[name] != max(rows.values()):
            raise RequestError(400, f"array '{name}': shape {arrays[name].shape}, expected (rows, "
                                    f"{', '.join(map(str, shape))}) with the same rows as every array "
                                    f"({max(rows.values())})")
        data[name] = _numeric(arrays[name], f"array '{name}'")
    return data


def _flat(rows: np.ndarray, expected: dict[str, tuple[tuple[int, ...], bool]]) -> dict[str, np.ndarray]:
    """The arrays of an .npy body: each row the instance's arrays flattened and joined in `expected` order."""
    rows = rows.reshape(1, -1) if rows.ndim == 1 else rows
    sizes = {name: int(np.prod(shape)) for name, (shape, _) in expected.items()}
    layout = " + ".join(f"{name} {'x'.join(map(str, shape))}" for name, (shape, _) in expected.items())
    if rows.ndim != 2 or rows.shape[1] != sum(sizes.values()):
        raise RequestError(400, f"the {NPY} body: shape {rows.shape}, expected (rows, {sum(sizes.values())}): "
                                f"each row {layout}, flattened in this order")
    rows = _numeric(rows, f"the {NPY} body")
    offsets = np.cumsum([0, *sizes.values()])
    return {name: rows[:, start:end].reshape(len(rows), *shape)
            for (name, (shape, _)), start, end in zip(expected.items(), offsets[:-1], offsets[1:], strict=True)}


def validate_instances(batch: Batch, config: dict[str, Any]) -> dict[str, np.ndarray]:
    """Stacked arrays of valid instances; the first problem as a 400 naming instance, array and rule."""
    expected = expected_arrays(config)
    if isinstance(batch, list):
        data = _stacked(batch, expected, config["model_type"])
    elif isinstance(batch, dict):
        data = _named(batch, expected, config["model_type"])
    else:
        data = _flat(batch, expected)
    if len(next(iter(data.values()))) == 0:
        raise RequestError(400, NO_INSTANCES)
    largest_id = INPUTS.largest_category_id(config["n_embedding"], config["n_num_features"])
    for name, (_, ids) in expected.items():
        values = data[name]
        if ids:
            bad = INPUTS.first_non_integral(values)
            if bad is not None:
                raise RequestError(400, f"instance {bad} array '{name}': categorical ids must be integers")
            values = values.astype(np.int64)
        violation = INPUTS.first_violation(name, values, largest_id, config.get("n_classes", 2))
        if violation is not None:
            bad, column, text = violation
            where = f"array '{name}'" + (f" column {column}" if column else "")
            raise RequestError(400, f"instance {bad} {where}: {text}")
        data[name] = values
    return data


def _forward_arguments(data: dict[str, np.ndarray], config: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The forward keyword arguments of checked instances, built by training's `inputs.forward_arguments`."""
    sequences = []
    for prefix in INPUTS.SEQUENCE_PREFIXES[config["model_type"]]:
        cat, num = INPUTS.sequence_names(prefix)
        parts = INPUTS.split_sequence(torch.as_tensor(data[cat]), torch.as_tensor(data[num], dtype=torch.float64))
        sequences.append(tuple(part.to(device) for part in parts))
    engineered = None
    if config["n_engineered_num_features"] > 0:
        engineered = torch.as_tensor(data[INPUTS.ENGINEERED], dtype=torch.float64).to(device)
    return INPUTS.forward_arguments(config["model_type"], sequences, engineered, bool(config["use_time_seq"]))


def predict_fn(batch: Batch, model: dict[str, Any]) -> list[dict[str, float]]:
    data = validate_instances(batch, model["config"])
    device = model.get("device", torch.device("cpu"))
    with torch.no_grad():
        scores, _ = model["model"](**_forward_arguments(data, model["config"], device))
    probabilities = torch.softmax(scores.double(), dim=-1)[:, -1].cpu().tolist()
    thresholds = [entry[0] for entry in model["percentiles"]]
    results = []
    for p in probabilities:
        result = {"score": p}
        if thresholds:
            index = max(bisect.bisect_right(thresholds, p) - 1, 0)
            result["score_percentile"] = model["percentiles"][index][1]
        results.append(result)
    return results


def output_fn(prediction: list[dict[str, float]], accept: str = JSON) -> tuple[str, str]:
    """(body, content type); `allow_nan=False`: a non-finite score is an error (500), never invalid JSON."""
    kind = choose_output(accept)
    if kind == JSONLINES:
        return "".join(json.dumps(p, allow_nan=False) + "\n" for p in prediction), kind
    return json.dumps({"predictions": prediction}, allow_nan=False), kind
