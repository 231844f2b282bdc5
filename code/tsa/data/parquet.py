"""The Parquet format: one row per example, one column per legacy array, fixed-size lists.

Layout (documented in docs/data.md): a channel folder holds one or more `*.parquet` files read
in name order. Column names are the legacy array names (`X_seq_cat`, `X_seq_num`, `X_num`,
`Y`; `cid_`/`ccid_` prefixes for the dual model); an array of per-example shape `(L, n)` is a
`fixed_size_list<fixed_size_list<T, n>, L>` column, so its values are one contiguous buffer
that turns into numpy without a copy. An optional `id` column (string or integer) is carried
into prediction files. No nulls. Row groups are sized for streaming (default ~64 MiB).

Reading is by row group: only the row groups a batch touches are decoded, and the last two
decoded ones are cached, so host memory stays flat however large the dataset is.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tsa.data.batches import Batch, to_batch
from tsa.data.schema import ID_COLUMN, ArraySpec
from tsa.errors import DataError

DEFAULT_ROW_GROUP_BYTES = 64 * 2**20
ROW_GROUP_CACHE = 2


def arrow_column(array: np.ndarray) -> pa.Array:
    """A numpy array `(N, *shape)` as a (nested) fixed-size-list column of N rows."""
    values: pa.Array = pa.array(np.ascontiguousarray(array).reshape(-1))
    for size in reversed(array.shape[1:]):
        values = pa.FixedSizeListArray.from_arrays(values, int(size))
    return values


def column_to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A (nested) fixed-size-list column back to numpy `(N, *shape)`, zero-copy where possible."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    rows, shape = len(array), []
    while pa.types.is_fixed_size_list(array.type):
        shape.append(array.type.list_size)
        array = array.flatten()
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        return np.asarray(array.to_pylist(), dtype=object)
    return array.to_numpy(zero_copy_only=False).reshape(rows, *shape)


def column_shape(field_type: pa.DataType) -> tuple[tuple[int, ...], pa.DataType]:
    """Per-example shape and value type of a column type."""
    shape = []
    while pa.types.is_fixed_size_list(field_type):
        shape.append(field_type.list_size)
        field_type = field_type.value_type
    return tuple(shape), field_type


def default_row_group_rows(arrays: Mapping[str, np.ndarray]) -> int:
    row_bytes = sum(a[:1].nbytes for a in arrays.values()) or 1
    return max(1, DEFAULT_ROW_GROUP_BYTES // row_bytes)


def write_parquet(
    path: Path,
    arrays: Mapping[str, np.ndarray],
    row_group_rows: int | None = None,
    ids: np.ndarray | None = None,
    compression: str = "none",
) -> None:
    """Write one file; streams row group by row group, so memory-mapped inputs stay on disk."""
    rows = len(next(iter(arrays.values())))
    row_group_rows = row_group_rows or default_row_group_rows(arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer: pq.ParquetWriter | None = None
    try:
        for start in range(0, max(rows, 1), row_group_rows):
            stop = min(start + row_group_rows, rows)
            columns = {name: arrow_column(np.asarray(a[start:stop])) for name, a in arrays.items()}
            if ids is not None:
                columns[ID_COLUMN] = pa.array(np.asarray(ids[start:stop]))
            table = pa.table(columns)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression=compression)
            writer.write_table(table, row_group_size=row_group_rows)
    finally:
        if writer is not None:
            writer.close()


class ParquetChannel:
    """A channel of Parquet files; implements the channel-source interface of `tsa.data`."""

    format = "parquet"
    host_shard = False  # set by `open_channel` for a `ShardedByS3Key` channel

    def __init__(self, channel: str, folder: Path, specs: Sequence[ArraySpec]) -> None:
        self.channel, self.folder = channel, folder
        self.paths = sorted(folder.glob("*.parquet"))
        group_rows: list[int] = []
        self.groups: list[tuple[int, int]] = []  # (file index, row group index)
        schema: pa.Schema | None = None
        for file_index, path in enumerate(self.paths):
            try:
                meta = pq.ParquetFile(path).metadata
                file_schema = pq.read_schema(path)
            except (pa.ArrowInvalid, OSError) as exc:
                raise DataError(
                    f"channel '{channel}' file '{path.name}': not a readable Parquet file ({exc}); rewrite it"
                ) from exc
            if schema is not None and not file_schema.equals(schema):
                raise DataError(
                    f"channel '{channel}' file '{path.name}': its columns differ from '{self.paths[0].name}'; "
                    "every file of a channel needs the same schema"
                )
            schema = file_schema
            for group in range(meta.num_row_groups):
                self.groups.append((file_index, group))
                group_rows.append(meta.row_group(group).num_rows)
        self.schema = schema if schema is not None else pa.schema([])
        self.group_starts = np.concatenate([[0], np.cumsum(group_rows, dtype=np.int64)])
        self.names = [spec.name for spec in specs if spec.name in self.schema.names]
        for spec in specs:
            if spec.required and spec.name not in self.schema.names:
                where = self.paths[0].name if self.paths else str(folder)
                raise DataError(
                    f"channel '{channel}': column '{spec.name}' is missing from {where}; "
                    f"expected {spec.describe_shape()} as a fixed-size-list column"
                )
        self.has_ids = ID_COLUMN in self.schema.names
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._files: dict[int, pq.ParquetFile] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": OrderedDict(), "_files": {}}

    def file_of(self, name: str) -> str:
        return self.paths[0].name if len(self.paths) == 1 else f"{self.folder.name}/*.parquet"

    @property
    def num_rows(self) -> int:
        return int(self.group_starts[-1])

    def rows_of(self, name: str) -> int:
        return self.num_rows

    def shape_of(self, name: str) -> tuple[int, ...]:
        shape = column_shape(self.schema.field(name).type)[0]
        return () if name == "Y" and shape == (1,) else shape

    def dtype_of(self, name: str) -> np.dtype:
        value_type = column_shape(self.schema.field(name).type)[1]
        try:
            return np.dtype(value_type.to_pandas_dtype())
        except (NotImplementedError, TypeError):
            return np.dtype(object)

    def describe_dtype(self, name: str) -> str:
        """numpy's name of a numeric column's values; Arrow's for any other (`string`, `binary`, ...)."""
        dtype = self.dtype_of(name)
        return f"{column_shape(self.schema.field(name).type)[1]} (Arrow)" if dtype.kind == "O" else str(dtype)

    @property
    def locality_rows(self) -> int:
        """Typical rows per row group: batches should be drawn within row groups."""
        return int(np.max(np.diff(self.group_starts))) if len(self.groups) else 1

    def _read_group(self, group: int, names: Sequence[str]) -> dict[str, np.ndarray]:
        cached = self._cache.get(group)
        if cached is not None and all(name in cached for name in names):
            self._cache.move_to_end(group)
            return cached
        file_index, row_group = self.groups[group]
        handle = self._files.get(file_index)
        if handle is None:
            # One open file at a time: an open reader keeps its last column chunks buffered.
            for other in self._files.values():
                other.close()
            self._files = {file_index: pq.ParquetFile(self.paths[file_index])}
            handle = self._files[file_index]
        try:
            table = handle.read_row_group(row_group, columns=list(names), use_threads=False)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(
                f"channel '{self.channel}' file '{self.paths[file_index].name}' row group {row_group}: "
                f"cannot be decoded ({exc}); rewrite the file"
            ) from exc
        arrays = {}
        for name in names:
            column = table.column(name)
            if column.null_count:
                raise DataError(f"channel '{self.channel}' file '{self.paths[file_index].name}' column '{name}': "
                                "holds nulls; every value is required")
            values = column_to_numpy(column)
            arrays[name] = values.reshape(len(values)) if name == "Y" and values.ndim == 2 else values
        self._cache[group] = arrays
        while len(self._cache) > ROW_GROUP_CACHE:
            self._cache.popitem(last=False)
        return arrays

    def take(self, indices: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Rows `indices` (any order), decoding only the row groups they fall in."""
        indices = np.asarray(indices, dtype=np.int64)
        groups = np.searchsorted(self.group_starts, indices, side="right") - 1
        out: dict[str, np.ndarray] = {}
        for group in np.unique(groups):
            where = np.nonzero(groups == group)[0]
            local = indices[where] - self.group_starts[group]
            arrays = self._read_group(int(group), names)
            for name in names:
                source = arrays[name]
                if name not in out:
                    out[name] = np.empty((len(indices), *source.shape[1:]), dtype=source.dtype)
                out[name][where] = source[local]
        return out

    def batch(self, indices: np.ndarray, model_type: str) -> Batch:
        """The training batch of rows `indices` (`to_batch` of `take`)."""
        return to_batch(self.take(indices, self.names), model_type)

    def iter_chunks(self, names: Sequence[str], chunk_rows: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(first row, arrays) row group by row group (`chunk_rows` is ignored: groups are the unit)."""
        for group in range(len(self.groups)):
            yield int(self.group_starts[group]), self._read_group(group, names)

    def ids(self, indices: np.ndarray) -> np.ndarray | None:
        """The `id` column at `indices`, when the files have one."""
        if not self.has_ids:
            return None
        return self.take(indices, [ID_COLUMN])[ID_COLUMN]
