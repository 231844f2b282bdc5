"""Gathered rows -> the legacy batch dict -> the model's forward arguments (spec §2.2-2.3).

`to_batch` does, for a whole batch at once, what the legacy per-sample `OrderSeqDataset` +
default collation produced: ids as float32 (`torch.Tensor(int64 array)`, Q17), the sequence
features without the last two columns, `time_to_last (B, L, 1)`, `not_padded (B, L)`,
`x_engineered_num` kept float64, `y (B, 1)` float32 (dual: `_cid`/`_ccid` suffixes).
`model_inputs` is the legacy `iteration`: the forward arguments of `tsa.inputs` (the model-input
contract the inference handler shares: the key-padding mask with the appended dummy column, always
False; the time column if `use_time_seq`; the engineered features if there are any) and `y` as
int64 `(B,)`. The `pipeline` fixtures pin both bit for bit. `gather_batch` is `to_batch`
of gathered rows, computed another way for memory-mapped channels (tested equal, bit for bit).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tsa.config import ModelConfig
from tsa.inputs import (
    ENGINEERED,
    FEATURE_COLUMNS,
    LABEL,
    NOT_PADDED_COLUMN,
    SEQUENCE_PREFIXES,
    SPECIAL_COLUMNS,
    TIME_TO_LAST_COLUMN,
    forward_arguments,
    sequence_names,
    split_sequence,
)

Batch = dict[str, Tensor]


def native_byte_order(array: np.ndarray) -> np.ndarray:
    """The values in this machine's byte order (a lossless conversion: torch reads native order only)."""
    array = np.asarray(array)
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def _sequence_parts(x_seq_cat: np.ndarray, x_seq_num: np.ndarray, suffix: str) -> Batch:
    parts = split_sequence(torch.from_numpy(np.ascontiguousarray(x_seq_cat)),
                           torch.from_numpy(np.ascontiguousarray(x_seq_num)))
    return {f"{key}{suffix}": part for key, part in zip(SEQUENCE_KEYS, parts, strict=True)}


def to_batch(arrays: Mapping[str, np.ndarray], model_type: str) -> Batch:
    """The legacy collated batch of gathered rows (`arrays` keyed by legacy array names)."""
    batch = {}
    for prefix, suffix in SEQUENCES[model_type]:
        batch.update(_sequence_parts(*(arrays[name] for name in sequence_names(prefix)), suffix))
    labels = np.asarray(arrays[LABEL])
    batch["y"] = torch.from_numpy(labels.reshape(len(labels), 1)).float()
    if ENGINEERED in arrays:
        batch["x_engineered_num"] = torch.from_numpy(np.ascontiguousarray(arrays[ENGINEERED]))
    return batch


# (array prefix, batch-key suffix) of the sequences of each model type: the prefix moved to the end
# (`cid_X_seq_cat` -> `x_seq_cat_cid`); the batch keys of a sequence's `split_sequence` parts.
SEQUENCES = {model_type: tuple((prefix, f"_{prefix[:-1]}" if prefix else "") for prefix in prefixes)
             for model_type, prefixes in SEQUENCE_PREFIXES.items()}
SEQUENCE_KEYS = ("x_seq_cat", "x_seq_num", "time_to_last", "not_padded")
GATHER_CHUNK_ROWS = 64  # rows gathered and cast together: the int64 chunk stays in cache before its cast
_POOLS: dict[int, ThreadPoolExecutor] = {}
# A forked child (a DataLoader worker) inherits the pools but not their threads: it must make its own.
os.register_at_fork(after_in_child=_POOLS.clear)


def _cast_targets(arrays: Mapping[str, np.ndarray], rows: int, model_type: str) -> list[tuple[str, list[Any]]]:
    """Per source array: (key, float32 output, column selector) for each batch entry cast from it."""
    targets = []
    for prefix, suffix in SEQUENCES[model_type]:
        cat_name, num_name = sequence_names(prefix)
        cat, num = arrays[cat_name], arrays[num_name]
        targets.append((cat_name, [(f"x_seq_cat{suffix}", np.empty((rows, *cat.shape[1:]), np.float32), np.s_[...])]))
        length, width = num.shape[1], num.shape[2]
        targets.append((num_name, [
            (f"x_seq_num{suffix}", np.empty((rows, length, width - SPECIAL_COLUMNS), np.float32), FEATURE_COLUMNS),
            (f"time_to_last{suffix}", np.empty((rows, length, 1), np.float32), TIME_TO_LAST_COLUMN),
            (f"not_padded{suffix}", np.empty((rows, length), np.float32), NOT_PADDED_COLUMN),
        ]))
    return targets


def gather_batch(arrays: Mapping[str, np.ndarray], rows: np.ndarray, model_type: str) -> Batch:
    """`to_batch` of `arrays[rows]` (memory maps), each chunk of rows gathered and cast to float32 in
    one pass and the chunks in parallel (numpy's copies release the GIL), instead of the whole batch
    gathered in the stored dtype (int64/float64 at the legacy layout) and cast in a second pass:
    about half the memory traffic. Threads: torch's intra-op count (1 in DataLoader workers)."""
    rows = np.asarray(rows, dtype=np.int64)
    targets = _cast_targets(arrays, len(rows), model_type)

    def gather(start: int) -> None:
        chunk = rows[start:start + GATHER_CHUNK_ROWS]
        for name, outputs in targets:
            values = arrays[name][chunk]
            for _, out, columns in outputs:
                out[start:start + len(chunk)] = values[columns]

    starts = range(0, len(rows), GATHER_CHUNK_ROWS)
    threads = torch.get_num_threads()
    if threads <= 1:
        for start in starts:
            gather(start)
    else:
        if threads not in _POOLS:
            _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="tsa-gather")
        list(_POOLS[threads].map(gather, starts))
    batch = {key: torch.from_numpy(out) for _, outputs in targets for key, out, _ in outputs}
    batch["y"] = torch.from_numpy(native_byte_order(arrays["Y"][rows]).reshape(len(rows), 1)).float()
    if "X_num" in arrays:
        batch["x_engineered_num"] = torch.from_numpy(native_byte_order(arrays["X_num"][rows]))
    return batch


def model_inputs(batch: Batch, cfg: ModelConfig) -> tuple[dict[str, Any], Tensor]:
    """The forward keyword arguments (`tsa.inputs.forward_arguments`) and int64 labels, as the legacy loop
    built them."""
    engineered = batch["x_engineered_num"] if cfg.n_engineered_num_features > 0 else None
    y = batch["y"].long().view(-1)
    sequences = [tuple(batch[f"{key}{suffix}"] for key in SEQUENCE_KEYS) for _, suffix in SEQUENCES[cfg.model_type]]
    return forward_arguments(cfg.model_type, sequences, engineered, cfg.use_time_seq), y
