"""The data path against the legacy Dataset + DataLoader + `iteration` (kind `pipeline`).

Run: .venv/bin/pytest tests/equivalence/test_pipeline.py

The fixture's raw arrays are written as a channel in both formats, read back through the
project's real data path (channel source -> batch stream -> `model_inputs`) and compared bit
for bit: same keys, dtypes, shapes and values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.equivalence.fixtures import cases, load
from tsa.config import JobConfig
from tsa.contract import Channel
from tsa.data import model_inputs, open_channel
from tsa.data.convert import write_npy_channel, write_parquet_channel
from tsa.data.loader import BatchStream, make_loader
from tsa.data.sharding import ShardSpec


def _config(fx: dict[str, Any]) -> JobConfig:
    raw = fx["inputs"]
    dual = "cid_X_seq_cat" in raw
    cat = raw["cid_X_seq_cat" if dual else "X_seq_cat"]
    num = raw["cid_X_seq_num" if dual else "X_seq_num"]
    n_num = num.shape[2] - 2
    ids = max(int(raw[k].max()) for k in raw if k.endswith("X_seq_cat"))
    kwargs = fx["ctor_kwargs"]
    return JobConfig.from_hyperparameters({
        "model_type": "dual" if dual else "single", "seq_len": cat.shape[1], "n_cat_features": cat.shape[2],
        "n_num_features": n_num, "n_embedding": ids + n_num + 1, "dim_embedding_table": 4,
        "n_engineered_num_features": raw["X_num"].shape[1] if kwargs["use_engineered_features"] else 0,
        "use_time_seq": kwargs["use_time_seq"], "batch_size": kwargs["batch_size"],
    })


def assert_same(actual: Any, expected: Any, what: str) -> None:
    if expected is None:
        assert actual is None, what
        return
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, f"{what}: {actual.dtype} {actual.shape}"
    assert torch.equal(actual, expected), what


@pytest.mark.parametrize("fmt", ["npy", "parquet"])
@pytest.mark.parametrize("entry", cases("pipeline"))
def test_batches_and_model_inputs_are_bit_exact(entry: dict[str, Any], fmt: str, tmp_path: Path) -> None:
    fx = load(entry)
    config = _config(fx)
    arrays = {name: value.numpy() for name, value in fx["inputs"].items()}
    folder = tmp_path / "validation"
    if fmt == "npy":
        write_npy_channel(folder, "vali", config.data.data_version, arrays)
    else:
        write_parquet_channel(folder, arrays, row_group_rows=3)
    source = open_channel(Channel("validation", folder), config.data, config.model)
    stream = BatchStream(source, config.model.model_type, config.train.batch_size, ShardSpec())
    batch = next(iter(make_loader(stream, num_workers=0, pin_memory=False)))
    assert np.array_equal(batch.pop("row").numpy(), np.arange(len(arrays["Y"]))[: config.train.batch_size])
    expected = fx["outputs"]["dataset_batch"]
    assert set(batch) == set(expected)
    for key, value in expected.items():
        assert_same(batch[key], value, key)
    inputs, y = model_inputs(batch, config.model)
    assert list(inputs) == list(fx["outputs"]["model_inputs"])
    for key, value in fx["outputs"]["model_inputs"].items():
        assert_same(inputs[key], value, key)
    assert_same(y, fx["outputs"]["y"], "y")
