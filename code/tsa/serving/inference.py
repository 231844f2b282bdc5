"""SageMaker PyTorch inference handler for a tsa-training model (copied to `model/code/inference.py`).

Needs only torch and numpy (it runs in the SageMaker PyTorch inference container, without the
tsa package): `model_fn` loads the TorchScript `model.pt`, `input_fn` reads JSON
`{"instances": [{"X_seq_cat": [[...]], "X_seq_num": [[...]], "X_num": [...]}, ...]}` with the
legacy per-example arrays (dual model: `cid_X_seq_cat`, `cid_X_seq_num`, `ccid_X_seq_cat`,
`ccid_X_seq_num`, `X_num`), `predict_fn` builds the forward arguments exactly as training did
and returns P(fraud) = softmax(scores)[:, -1] plus its calibration percentile, and `output_fn`
writes `{"predictions": [{"score": ..., "score_percentile": ...}]}`.
"""

from __future__ import annotations

import bisect
import json
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

JSON = "application/json"


def model_fn(model_dir: str) -> dict[str, Any]:
    model = torch.jit.load(os.path.join(model_dir, "model.pt"), map_location="cpu").eval()
    with open(os.path.join(model_dir, "config.json")) as handle:
        config = json.load(handle)["model"]
    percentiles = []
    path = os.path.join(model_dir, "percentile_score.json")
    if os.path.exists(path):
        with open(path) as handle:
            percentiles = json.load(handle)
    return {"model": model, "config": config, "percentiles": percentiles}


def input_fn(body: bytes | str, content_type: str = JSON) -> dict[str, np.ndarray]:
    if content_type != JSON:
        raise ValueError(f"content type {content_type!r} is not supported: send {JSON}")
    instances = json.loads(body)["instances"]
    return {name: np.asarray([instance[name] for instance in instances]) for name in instances[0]}


def _sequence(cat: np.ndarray, num: np.ndarray, use_time: bool) -> tuple[torch.Tensor, ...]:
    seq_num = torch.as_tensor(num, dtype=torch.float64)
    not_padded = seq_num[..., -1].float()
    key_padding_mask = torch.logical_not(F.pad(not_padded, (0, 1), value=True))
    time = seq_num[..., -2:-1].float() if use_time else None
    return torch.as_tensor(cat).float(), seq_num[..., :-2].float(), time, key_padding_mask


def _forward_arguments(data: dict[str, np.ndarray], config: dict[str, Any]) -> list[Any]:
    use_time = bool(config["use_time_seq"])
    engineered = None
    if config["n_engineered_num_features"] > 0:
        engineered = torch.as_tensor(data["X_num"], dtype=torch.float64)
    if config["model_type"] == "single":
        cat, num, time, kpm = _sequence(data["X_seq_cat"], data["X_seq_num"], use_time)
        return [cat, num, engineered, time, None, kpm]
    cid = _sequence(data["cid_X_seq_cat"], data["cid_X_seq_num"], use_time)
    ccid = _sequence(data["ccid_X_seq_cat"], data["ccid_X_seq_num"], use_time)
    return [cid[0], cid[1], cid[2], ccid[0], ccid[1], ccid[2], engineered, None, cid[3], ccid[3]]


def predict_fn(data: dict[str, np.ndarray], model: dict[str, Any]) -> list[dict[str, float]]:
    with torch.no_grad():
        scores, _ = model["model"](*_forward_arguments(data, model["config"]))
    probabilities = torch.softmax(scores.double(), dim=-1)[:, -1].tolist()
    thresholds = [entry[0] for entry in model["percentiles"]]
    results = []
    for p in probabilities:
        result = {"score": p}
        if thresholds:
            index = max(bisect.bisect_right(thresholds, p) - 1, 0)
            result["score_percentile"] = model["percentiles"][index][1]
        results.append(result)
    return results


def output_fn(prediction: list[dict[str, float]], accept: str = JSON) -> str:
    if accept not in (JSON, "*/*"):
        raise ValueError(f"accept type {accept!r} is not supported: ask for {JSON}")
    return json.dumps({"predictions": prediction})
