"""The value rules of one model input array, in numpy alone: one home for training and serving.

Training's data validation (`tsa.data.validate`) runs them over every chunk of a channel; the
inference handler runs them over every request. The artifacts copy this file beside the handler
into `model/code/inputs.py`, where it runs without the tsa package (the SageMaker PyTorch inference image).
Each rule answers with the first offending example, the column it concerns and a text that says
what is wrong and what is allowed.
"""

from __future__ import annotations

import numpy as np

# exp(dt / 1e6) is finite in float32 up to dt = 88.7e6 s; the legacy preprocessing clips at 1e7 (Q13).
MAX_TIME_TO_LAST = 8.8e7
NOT_PADDED, TIME_TO_LAST = "not_padded (last)", "time_to_last (second to last)"

Violation = tuple[int, "str | None", str]  # (example, column or None, what is wrong and what is allowed)


def first_bad(mask: np.ndarray) -> int | None:
    """Index of the first example (axis 0) where `mask` is True anywhere."""
    per_example = mask.reshape(mask.shape[0], -1).any(axis=1) if mask.ndim > 1 else mask
    hits = np.flatnonzero(per_example)
    return int(hits[0]) if hits.size else None


def first_violation(name: str, values: np.ndarray, largest_id: int, n_classes: int) -> Violation | None:
    """The first example of array `name` that breaks a value rule, or None."""
    if values.dtype.kind == "f":
        violation = _non_finite(name, values)
        if violation is not None:
            return violation
    if name.endswith("X_seq_cat"):
        outside = (values < 0) | (values > largest_id)
        bad = first_bad(outside)
        if bad is not None:
            found = values[bad][outside[bad]].flat[0]
            return bad, None, (f"has categorical id {found}: allowed 0..{largest_id} (n_embedding - n_num_features; "
                               "0 = padding/unknown)")
    if name.endswith("X_seq_num"):
        return _sequence_violation(values)
    if name == "Y":
        bad = first_bad((values < 0) | (values >= n_classes))
        if bad is not None:
            return bad, None, f"has label {values[bad]}: allowed are 0..{n_classes - 1}"
    return None


def column_name(name: str, width: int, column: int) -> str:
    """A column of the last axis: the sequence's two special columns by name, any other by index."""
    if name.endswith("X_seq_num") and column == width - 1:
        return NOT_PADDED
    if name.endswith("X_seq_num") and column == width - 2:
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
    time_to_last, not_padded = values[..., -2], values[..., -1]
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
