"""Data validation before any GPU time is spent: shapes, dtypes and value rules, streamed.

Every rule runs vectorised over a chunk (a row group, or a slice of the memory map), so a
channel of any size is checked with flat memory. Each error names the channel, file, array
and column, the first offending example index and the allowed values, and is a `DataError`
(exit code 2, first line of the failure file).

Rules (spec §2.1, contracts §3.4): arrays present with the configured per-example shape and
the same N; integer ids and labels, float features; no NaN/Inf; categorical ids in
0..n_embedding-n_num_features; `not_padded` in {0, 1} with the last (current) row real;
`time_to_last` >= 0; labels in [0, n_classes); no empty channel; every label present in a
scored channel (validation, calibration, test: its AUC is undefined with one class), unless the
channel is this host's shard of a `ShardedByS3Key` channel (one shard may lack a label). The
shapes and value rules are those of `tsa.inputs`, the model-input contract the inference handler
checks every request with.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from tsa.config import ModelConfig
from tsa.data.channels import EVALUATION_CHANNELS, ChannelSource
from tsa.data.schema import array_specs, max_category_id
from tsa.errors import DataError
from tsa.inputs import first_violation

log = logging.getLogger(__name__)

CHUNK_ROWS = 4096


def _where(source: ChannelSource, name: str, column: str | None = None) -> str:
    where = f"channel '{source.channel}' file '{source.file_of(name)}' array '{name}'"
    return where + (f" column {column}" if column else "")


def allowed_dtype(dtype: np.dtype, kind: str) -> bool:
    """Ids and labels: any integer width (or bool); features: float16/32/64 (torch reads no wider float).

    Each converts to the batch's tensors without loss; float features stored as integers are refused.
    """
    if kind in ("ids", "label"):
        return dtype.kind in "iub"
    return dtype.kind == "f" and dtype.itemsize <= 8


def check_structure(source: ChannelSource, cfg: ModelConfig) -> None:
    """Presence, per-example shapes, dtypes and a common row count."""
    rows = source.num_rows
    if rows == 0:
        raise DataError(f"channel '{source.channel}' is empty: 0 examples in {source.file_of('Y')}")
    for spec in array_specs(cfg):
        if spec.name not in source.names:
            continue  # optional array absent (X_num with n_engineered_num_features = 0)
        shape = source.shape_of(spec.name)
        if spec.shape is not None and shape != spec.shape:
            raise DataError(
                f"{_where(source, spec.name)}: per-example shape {shape}, expected {spec.shape} "
                f"i.e. {spec.describe_shape()} for seq_len={cfg.seq_len}, n_cat_features={cfg.n_cat_features}, "
                f"n_num_features={cfg.n_num_features}, n_engineered_num_features={cfg.n_engineered_num_features}"
            )
        if source.rows_of(spec.name) != rows:
            raise DataError(
                f"{_where(source, spec.name)}: {source.rows_of(spec.name)} examples, but "
                f"'{source.file_of('Y')}' has {rows}: every array of a channel needs the same N"
            )
        if not allowed_dtype(source.dtype_of(spec.name), spec.kind):
            wanted = ("an integer dtype (int8..int64, uint8..uint64, bool)" if spec.kind in ("ids", "label") else
                      "a float dtype (float16, float32 or float64)")
            raise DataError(f"{_where(source, spec.name)}: dtype {source.describe_dtype(spec.name)}, expected "
                            f"{wanted}; rewrite the array as one of them")


def _check_chunk(source: ChannelSource, cfg: ModelConfig, start: int, arrays: dict[str, np.ndarray]) -> None:
    largest_id = max_category_id(cfg)
    for name, values in arrays.items():
        violation = first_violation(name, values, largest_id, cfg.n_classes)
        if violation is not None:
            bad, column, text = violation
            raise DataError(f"{_where(source, name, column)}: example {start + bad} {text}")


def check_labels_present(source: ChannelSource, counts: np.ndarray) -> None:
    """A scored channel holds every label: with one, its AUC (and the metrics built on it) is undefined."""
    if source.channel not in EVALUATION_CHANNELS or source.host_shard or np.all(counts > 0):
        return
    present = [int(label) for label in np.flatnonzero(counts)]
    missing = [int(label) for label in np.flatnonzero(counts == 0)]
    purpose = "by which the best model is chosen" if source.channel == "validation" else "of the final metrics"
    raise DataError(
        f"{_where(source, 'Y')}: every example has label {', '.join(map(str, present))} ({int(counts.sum())} "
        f"examples): its AUC, {purpose}, needs examples of each label 0..{len(counts) - 1}; add examples of "
        f"label {', '.join(map(str, missing))}"
    )


def validate_channel(source: ChannelSource, cfg: ModelConfig,
                     before_chunk: Callable[[], None] = lambda: None) -> int:
    """Check a whole channel, streaming; returns its number of examples.

    `before_chunk` runs before every chunk: the job's SIGTERM check, so that a stop ends a long
    validation within a chunk's time.
    """
    check_structure(source, cfg)
    names = list(source.names)
    counts = np.zeros(cfg.n_classes, dtype=np.int64)
    for start, arrays in source.iter_chunks(names, CHUNK_ROWS):
        before_chunk()
        _check_chunk(source, cfg, start, arrays)
        counts += np.bincount(np.asarray(arrays["Y"], dtype=np.int64), minlength=cfg.n_classes)
    check_labels_present(source, counts)
    log.info("channel '%s': %d examples valid (%s)", source.channel, source.num_rows, source.format)
    return source.num_rows
