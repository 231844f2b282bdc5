"""Write channels in either format, and convert between them losslessly.

    tsa data convert data/train data_pq/train --to parquet
    tsa data convert data_pq/train data_npy/train --to npy --data-version v0

Lossless: every array keeps its dtype and per-example shape (a `(N, 1)` label array stays
`(N, 1)`), rows keep their order, and an `id` column survives a Parquet -> Parquet copy (the
legacy layout has no ids, so Parquet -> npy drops it with a log line). Conversion streams: the
`.npy` side is memory-mapped, Parquet is written and read one row group at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from numpy.lib.format import open_memmap

from tsa.data.npy import FILE_PATTERN, legacy_file_name, load_npy
from tsa.data.parquet import column_to_numpy, write_parquet
from tsa.data.schema import ID_COLUMN
from tsa.errors import DataError

log = logging.getLogger(__name__)

PARQUET_FILE = "part-00000.parquet"


def write_npy_channel(folder: Path, split: str, version: str, arrays: Mapping[str, np.ndarray]) -> None:
    """`<folder>/<split>_<NAME>_<version>.npy` for every array."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        np.save(folder / legacy_file_name(split, name, version), np.asarray(array))


def write_parquet_channel(
    folder: Path, arrays: Mapping[str, np.ndarray], row_group_rows: int | None = None,
    ids: np.ndarray | None = None, compression: str = "none",
) -> Path:
    """One Parquet file holding every array as a column."""
    path = folder / PARQUET_FILE
    write_parquet(path, arrays, row_group_rows=row_group_rows, ids=ids, compression=compression)
    return path


def read_npy_arrays(folder: Path, version: str | None = None, split: str | None = None) -> dict[str, np.ndarray]:
    """The legacy arrays of a channel folder, memory-mapped (no config needed)."""
    groups: dict[tuple[str, str], dict[str, Path]] = {}
    for path in sorted(folder.glob("*.npy")):
        match = FILE_PATTERN.match(path.name)
        if match is None:
            continue
        key = (match["split"], match["version"])
        if (version is None or key[1] == version) and (split is None or key[0] == split):
            groups.setdefault(key, {})[match["name"]] = path
    if len(groups) != 1:
        found = sorted(groups) or "none"
        raise DataError(
            f"{folder}: expected one set of legacy arrays '<split>_<NAME>_<version>.npy', found {found}; "
            "choose with --split and --data-version"
        )
    files = next(iter(groups.values()))
    return {name: load_npy(path, folder.name, name) for name, path in files.items()}


def npy_to_parquet(source: Path, target: Path, version: str | None = None, split: str | None = None,
                   row_group_rows: int | None = None, compression: str = "none") -> Path:
    arrays = read_npy_arrays(source, version, split)
    empty = [name for name, array in arrays.items() if 0 in array.shape[1:]]
    for name in empty:
        log.info("%s: array %s has a zero-width axis %s and is not written", source, name, arrays[name].shape)
    kept = {name: array for name, array in arrays.items() if name not in empty}
    return write_parquet_channel(target, kept, row_group_rows=row_group_rows, compression=compression)


def parquet_to_npy(source: Path, target: Path, split: str, version: str) -> None:
    """Parquet channel -> legacy arrays, streamed row group by row group into `.npy` memory maps."""
    paths = sorted(source.glob("*.parquet"))
    if not paths:
        raise DataError(f"{source}: no .parquet files")
    total = sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
    target.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, np.ndarray] = {}
    start = 0
    for path in paths:
        handle = pq.ParquetFile(path)
        for group in range(handle.num_row_groups):
            table = handle.read_row_group(group)
            if ID_COLUMN in table.column_names:
                log.info("%s: the '%s' column has no place in the legacy layout and is dropped", path, ID_COLUMN)
            for name in table.column_names:
                if name == ID_COLUMN:
                    continue
                values = column_to_numpy(table.column(name))
                if name not in outputs:
                    outputs[name] = open_memmap(target / legacy_file_name(split, name, version), mode="w+",
                                                dtype=values.dtype, shape=(total, *values.shape[1:]))
                outputs[name][start:start + len(values)] = values
            start += table.num_rows
    for array in outputs.values():
        array.flush()  # type: ignore[attr-defined]
