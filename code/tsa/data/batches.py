"""Gathered rows -> the legacy batch dict -> the model's forward arguments (spec §2.2-2.3).

`to_batch` does, for a whole batch at once, what the legacy per-sample `OrderSeqDataset` +
default collation produced: ids as float32 (`torch.Tensor(int64 array)`, Q17), the sequence
features without the last two columns, `time_to_last (B, L, 1)`, `not_padded (B, L)`,
`x_engineered_num` kept float64, `y (B, 1)` float32 (dual: `_cid`/`_ccid` suffixes).
`model_inputs` is the legacy `iteration`: the key-padding mask with the appended dummy column
(always False), the time column if `use_time_seq`, the engineered features if there are any,
`y` as int64 `(B,)`. The `pipeline` fixtures pin both bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tsa.config import ModelConfig

Batch = dict[str, Tensor]


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
    if model_type == "single":
        batch = _sequence_parts(arrays["X_seq_cat"], arrays["X_seq_num"], "")
    else:
        batch = {**_sequence_parts(arrays["cid_X_seq_cat"], arrays["cid_X_seq_num"], "_cid"),
                 **_sequence_parts(arrays["ccid_X_seq_cat"], arrays["ccid_X_seq_num"], "_ccid")}
    labels = np.asarray(arrays["Y"])
    batch["y"] = torch.from_numpy(labels.reshape(len(labels), 1)).float()
    if "X_num" in arrays:
        batch["x_engineered_num"] = torch.from_numpy(np.ascontiguousarray(arrays["X_num"]))
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
