"""Gathered rows -> the legacy batch dict -> the model's forward arguments (spec §2.2-2.3).

`to_batch` does, for a whole batch at once, what the legacy per-sample `OrderSeqDataset` +
default collation produced: ids as float32 (`torch.Tensor(int64 array)`, Q17), the sequence
features without the last two columns, `time_to_last (B, L, 1)`, `not_padded (B, L)`,
`x_engineered_num` kept float64, `y (B, 1)` float32 (dual: `_cid`/`_ccid` suffixes).
`model_inputs` is the legacy `iteration`: the key-padding mask with the appended dummy column
(always False), the time column if `use_time_seq`, the engineered features if there are any,
`y` as int64 `(B,)`. The `pipeline` fixtures pin both bit for bit. `gather_batch` is `to_batch`
of gathered rows, computed another way for memory-mapped channels (tested equal, bit for bit).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tsa.config import ModelConfig

Batch = dict[str, Tensor]


def native_byte_order(array: np.ndarray) -> np.ndarray:
    """The values in this machine's byte order (a lossless conversion: torch reads native order only)."""
    array = np.asarray(array)
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def _sequence_parts(x_seq_cat: np.ndarray, x_seq_num: np.ndarray, suffix: str) -> Batch:
    num = torch.from_numpy(np.ascontiguousarray(x_seq_num))
    return {
        f"x_seq_cat{suffix}": torch.from_numpy(np.ascontiguousarray(x_seq_cat)).float(),
        f"x_seq_num{suffix}": num[..., :-2].float(),
        f"time_to_last{suffix}": num[..., -2:-1].float(),
        f"not_padded{suffix}": num[..., -1].float(),
    }


def to_batch(arrays: Mapping[str, np.ndarray], model_type: str) -> Batch:
    """The legacy collated batch of gathered rows (`arrays` keyed by legacy array names)."""
    batch = {}
    for prefix, suffix in SEQUENCES[model_type]:
        batch.update(_sequence_parts(arrays[f"{prefix}X_seq_cat"], arrays[f"{prefix}X_seq_num"], suffix))
    labels = np.asarray(arrays["Y"])
    batch["y"] = torch.from_numpy(labels.reshape(len(labels), 1)).float()
    if "X_num" in arrays:
        batch["x_engineered_num"] = torch.from_numpy(np.ascontiguousarray(arrays["X_num"]))
    return batch


# (array prefix, key suffix) of the sequences of each model type.
SEQUENCES = {"single": (("", ""),), "dual": (("cid_", "_cid"), ("ccid_", "_ccid"))}
GATHER_CHUNK_ROWS = 64  # rows gathered and cast together: the int64 chunk stays in cache before its cast
_POOLS: dict[int, ThreadPoolExecutor] = {}
# A forked child (a DataLoader worker) inherits the pools but not their threads: it must make its own.
os.register_at_fork(after_in_child=_POOLS.clear)


def _cast_targets(arrays: Mapping[str, np.ndarray], rows: int, model_type: str) -> list[tuple[str, list[Any]]]:
    """Per source array: (key, float32 output, column selector) for each batch entry cast from it."""
    targets = []
    for prefix, suffix in SEQUENCES[model_type]:
        cat, num = arrays[f"{prefix}X_seq_cat"], arrays[f"{prefix}X_seq_num"]
        length, width = num.shape[1], num.shape[2]
        targets.append((f"{prefix}X_seq_cat", [(f"x_seq_cat{suffix}", np.empty((rows, *cat.shape[1:]), np.float32),
                                                 np.s_[...])]))
        targets.append((f"{prefix}X_seq_num", [
            (f"x_seq_num{suffix}", np.empty((rows, length, width - 2), np.float32), np.s_[..., :-2]),
            (f"time_to_last{suffix}", np.empty((rows, length, 1), np.float32), np.s_[..., -2:-1]),
            (f"not_padded{suffix}", np.empty((rows, length), np.float32), np.s_[..., -1]),
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


def key_padding_mask(not_padded: Tensor) -> Tensor:
    """(B, L) 1 = real row -> (B, L+1) bool, True = padded; the appended dummy column is False."""
    return torch.logical_not(F.pad(not_padded, (0, 1), value=True))


def model_inputs(batch: Batch, cfg: ModelConfig) -> tuple[dict[str, Any], Tensor]:
    """The forward keyword arguments and int64 labels, exactly as the legacy loop built them."""
    engineered = batch["x_engineered_num"] if cfg.n_engineered_num_features > 0 else None
    y = batch["y"].long().view(-1)
    if cfg.model_type == "single":
        inputs: dict[str, Any] = {
            "x_cat": batch["x_seq_cat"],
            "x_num": batch["x_seq_num"],
            "x_engineered": engineered,
            "time_seq": batch["time_to_last"] if cfg.use_time_seq else None,
            "attn_mask": None,
            "key_padding_mask": key_padding_mask(batch["not_padded"]),
        }
        return inputs, y
    inputs = {}
    for suffix in ("_cid", "_ccid"):
        inputs[f"x_seq_cat{suffix}"] = batch[f"x_seq_cat{suffix}"]
        inputs[f"x_seq_num{suffix}"] = batch[f"x_seq_num{suffix}"]
        inputs[f"time_seq{suffix}"] = batch[f"time_to_last{suffix}"] if cfg.use_time_seq else None
    inputs.update(x_engineered=engineered, attn_mask=None)
    inputs["key_padding_mask_cid"] = key_padding_mask(batch["not_padded_cid"])
    inputs["key_padding_mask_ccid"] = key_padding_mask(batch["not_padded_ccid"])
    order = ["x_seq_cat_cid", "x_seq_num_cid", "time_seq_cid", "x_seq_cat_ccid", "x_seq_num_ccid", "time_seq_ccid",
             "x_engineered", "attn_mask", "key_padding_mask_cid", "key_padding_mask_ccid"]
    return {key: inputs[key] for key in order}, y
