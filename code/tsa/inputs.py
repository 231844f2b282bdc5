"""The model-input contract in one file: array names and shapes, the sequence layout, the padding
mask, the forward arguments and the value rules.

Used by data validation (`tsa.data.schema`, `tsa.data.validate`), training's batch building
(`tsa.data.batches`: the forward arguments of every step, final scoring included) and the inference
handler (`tsa.serving.inference`). The artifacts copy this file beside the handler into
`model/code/inputs.py`, where it runs without the tsa package (the SageMaker PyTorch inference
image): it imports the standard library, numpy and torch only (torch for the padding mask and the
forward arguments, which are tensors).

Per example: `X_seq_cat (L, nc)` integer ids, `X_seq_num (L, nn+2)` floats whose last two columns
are `time_to_last` (seconds) and `not_padded` (0/1), `X_num (ne,)` floats and the label `Y`; the
dual model reads the two sequence arrays twice, prefixed `cid_` and `ccid_`. Each value rule
answers with the first offending example, the column it concerns and a text that says what is
wrong and what is allowed.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

# ---- the sequence layout: X_seq_num's last axis is the features, then time_to_last, then not_padded.
# Index expressions that numpy arrays and torch tensors read alike.
SPECIAL_COLUMNS = 2
FEATURE_COLUMNS = np.s_[..., :-SPECIAL_COLUMNS]  # (.., L, nn)
TIME_TO_LAST_COLUMN = np.s_[..., -2:-1]  # (.., L, 1) seconds, current time minus the order's time
NOT_PADDED_COLUMN = np.s_[..., -1]  # (.., L) 1 = real row, 0 = padding (left-padded)


# ---- array names and per-example shapes
SEQUENCE_PREFIXES = {"single": ("",), "dual": ("cid_", "ccid_")}
CATEGORICAL, NUMERICAL = "X_seq_cat", "X_seq_num"
ENGINEERED, LABEL = "X_num", "Y"
ArrayKind = Literal["ids", "float", "label"]


def sequence_names(prefix: str) -> tuple[str, str]:
    """The (categorical, numerical) array names of one sequence: `X_seq_cat`, `cid_X_seq_num`, ..."""
    return f"{prefix}{CATEGORICAL}", f"{prefix}{NUMERICAL}"


# Every array name a channel may hold, any model type.
ARRAY_NAMES = (*dict.fromkeys(name for prefixes in SEQUENCE_PREFIXES.values() for prefix in prefixes
                              for name in sequence_names(prefix)), ENGINEERED, LABEL)


def model_arrays(model_type: str, seq_len: int, n_cat_features: int, n_num_features: int,
                 n_engineered_num_features: int) -> dict[str, tuple[tuple[int, ...], ArrayKind]]:
    """Array name -> (per-example shape, kind) of every array the model reads, in file-name order."""
    arrays: dict[str, tuple[tuple[int, ...], ArrayKind]] = {}
    for prefix in SEQUENCE_PREFIXES[model_type]:
        categorical, numerical = sequence_names(prefix)
        arrays[categorical] = ((seq_len, n_cat_features), "ids")
        arrays[numerical] = ((seq_len, n_num_features + SPECIAL_COLUMNS), "float")
    if n_engineered_num_features > 0:
        arrays[ENGINEERED] = ((n_engineered_num_features,), "float")
    return arrays


def largest_category_id(n_embedding: int, n_num_features: int) -> int:
    """Largest valid categorical id: rows 1..n_embedding-nn of the table (0 = padding/unknown)."""
    return n_embedding - n_num_features


def split_sequence(x_seq_cat: torch.Tensor, x_seq_num: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A sequence's float32 parts: (ids (B, L, nc), features (B, L, nn), time_to_last (B, L, 1), not_padded (B, L))."""
    return (x_seq_cat.float(), x_seq_num[FEATURE_COLUMNS].float(), x_seq_num[TIME_TO_LAST_COLUMN].float(),
            x_seq_num[NOT_PADDED_COLUMN].float())


def key_padding_mask(not_padded: torch.Tensor) -> torch.Tensor:
    """(B, L) 1 = real row -> (B, L+1) bool, True = padded; the appended dummy column is False."""
    return torch.logical_not(F.pad(not_padded, (0, 1), value=True))


# ---- the forward arguments, in the order of the models' `forward` signatures
FORWARD_ARGUMENTS = {
    "single": ("x_cat", "x_num", "x_engineered", "time_seq", "attn_mask", "key_padding_mask"),
    "dual": ("x_seq_cat_cid", "x_seq_num_cid", "time_seq_cid", "x_seq_cat_ccid", "x_seq_num_ccid", "time_seq_ccid",
             "x_engineered", "attn_mask", "key_padding_mask_cid", "key_padding_mask_ccid"),
}


def forward_arguments(model_type: str, sequences: list[tuple[torch.Tensor, ...]], engineered: torch.Tensor | None,
                      use_time_seq: bool) -> dict[str, Any]:
    """The forward keyword arguments, in `FORWARD_ARGUMENTS` order, exactly as the legacy loop built them.

    `sequences`: the `split_sequence` parts of each sequence in `SEQUENCE_PREFIXES` order;
    `engineered`: the `X_num` tensor, or None without engineered features. No attention mask; the
    time column only with `use_time_seq`.
    """
    if model_type == "single":
        ((cat, num, time_to_last, not_padded),) = sequences
        values = [cat, num, engineered, time_to_last if use_time_seq else None, None, key_padding_mask(not_padded)]
    else:
        (cat_cid, num_cid, time_cid, not_padded_cid), (cat_ccid, num_ccid, time_ccid, not_padded_ccid) = sequences
        values = [cat_cid, num_cid, time_cid if use_time_seq else None,
                  cat_ccid, num_ccid, time_ccid if use_time_seq else None,
                  engineered, None, key_padding_mask(not_padded_cid), key_padding_mask(not_padded_ccid)]
    return dict(zip(FORWARD_ARGUMENTS[model_type], values, strict=True))


# ---- the value rules of one array, in numpy alone
# exp(dt / 1e6) is finite in float32 up to dt = 88.7e6 s; the legacy preprocessing clips at 1e7 (Q13).
MAX_TIME_TO_LAST = 8.8e7
NOT_PADDED, TIME_TO_LAST = "not_padded (last)", "time_to_last (second to last)"

Violation = tuple[int, "str | None", str]  # (example, column or None, what is wrong and what is allowed)


def first_bad(mask: np.ndarray) -> int | None:
    """Index of the first example (axis 0) where `mask` is True anywhere."""
    per_example = mask.reshape(mask.shape[0], -1).any(axis=1) if mask.ndim > 1 else mask
    hits = np.flatnonzero(per_example)
    return int(hits[0]) if hits.size else None


def first_non_integral(values: np.ndarray) -> int | None:
    """The first example holding a value that is not a finite integer (ids sent as floats, e.g. in JSON)."""
    finite = np.isfinite(values)
    return first_bad(~finite | (np.where(finite, values, 0) != np.round(np.where(finite, values, 0))))


def first_violation(name: str, values: np.ndarray, largest_id: int, n_classes: int) -> Violation | None:
    """The first example of array `name` that breaks a value rule, or None."""
    if values.dtype.kind == "f":
        violation = _non_finite(name, values)
        if violation is not None:
            return violation
    if name.endswith(CATEGORICAL):
        outside = (values < 0) | (values > largest_id)
        bad = first_bad(outside)
        if bad is not None:
            found = values[bad][outside[bad]].flat[0]
            return bad, None, (f"has categorical id {found}: allowed 0..{largest_id} (n_embedding - n_num_features; "
                               "0 = padding/unknown)")
    if name.endswith(NUMERICAL):
        return _sequence_violation(values)
    if name == LABEL:
        bad = first_bad((values < 0) | (values >= n_classes))
        if bad is not None:
            return bad, None, f"has label {values[bad]}: allowed are 0..{n_classes - 1}"
    return None


def column_name(name: str, width: int, column: int) -> str:
    """A column of the last axis: the sequence's two special columns by name, any other by index."""
    if name.endswith(NUMERICAL) and column == width - 1:
        return NOT_PADDED
    if name.endswith(NUMERICAL) and column == width - 2:
        return TIME_TO_LAST
    return str(column)


def _non_finite(name: str, values: np.ndarray) -> Violation | None:
    """The first NaN, +Inf or -Inf: the example, its column and the value found."""
    finite = np.isfinite(values)
    bad = first_bad(~finite)
    if bad is None:
        return None
    row = values[bad]
    where = tuple(int(i) for i in np.argwhere(~finite[bad])[0])
    found = row[where] if where else row
    shown = "NaN" if np.isnan(found) else ("+Inf" if found > 0 else "-Inf")
    column = column_name(name, values.shape[-1], where[-1]) if where else None
    text = f"holds {shown}: allowed are finite numbers"
    if values.dtype == np.float16 and shown != "NaN":
        text += f" (float16 holds magnitudes up to {float(np.finfo(np.float16).max):.0f}: store float32)"
    return bad, column, text


def _sequence_violation(values: np.ndarray) -> Violation | None:
    time_to_last, not_padded = values[TIME_TO_LAST_COLUMN][..., 0], values[NOT_PADDED_COLUMN]
    bad = first_bad((not_padded != 0) & (not_padded != 1))
    if bad is not None:
        return bad, NOT_PADDED, "has a value other than 0 or 1: allowed are 0 (padded row) and 1 (real row)"
    bad = first_bad(not_padded[:, -1] != 1)
    if bad is not None:
        return bad, NOT_PADDED, ("has a padded last row: the last row is the current order and must be real (1); "
                                 "sequences are left-padded")
    bad = first_bad(time_to_last < 0)
    if bad is not None:
        return bad, TIME_TO_LAST, "is negative: allowed are seconds >= 0 (current time minus the order's time)"
    bad = first_bad(time_to_last > MAX_TIME_TO_LAST)
    if bad is not None:
        return bad, TIME_TO_LAST, (f"exceeds {MAX_TIME_TO_LAST:.1e} s: the time factor exp(dt/1e6) overflows "
                                   "float32 beyond it; clip it (the legacy preprocessing sets 1e7)")
    return None
