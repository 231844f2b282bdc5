"""The legacy `.npy` layout: `<split>_<NAME>_<data_version>.npy` per array, memory-mapped read-only.

`<split>` is the legacy split name (`train`, `vali`, `cali`), the channel's folder name or its
canonical name, e.g. `vali/vali_X_seq_cat_v0.npy` or `validation/validation_cid_X_seq_num_v0.npy`.
Arrays are opened with `mmap_mode="r"` (the legacy demanded writable files, Q27), so a 100 GB
channel costs no host memory until rows are gathered; `Y` of shape `(N, 1)` is viewed as `(N,)`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tsa.data.batches import Batch, gather_batch, native_byte_order
from tsa.data.schema import ArraySpec
from tsa.errors import DataError
from tsa.inputs import ARRAY_NAMES

LEGACY_SPLIT = {"train": "train", "validation": "vali", "calibration": "cali", "test": "test"}
FILE_PATTERN = re.compile(rf"^(?P<split>.+?)_(?P<name>{'|'.join(ARRAY_NAMES)})_(?P<version>.+)\.npy$")


def legacy_file_name(split: str, name: str, version: str) -> str:
    """The legacy file name of array `name`: `<split>_<NAME>_<data_version>.npy`."""
    return f"{split}_{name}_{version}.npy"


def split_prefixes(channel: str, folder: Path) -> list[str]:
    """Accepted `<split>` prefixes in a channel folder, most specific first."""
    return list(dict.fromkeys([folder.name, LEGACY_SPLIT.get(channel, channel), channel]))


def find_array_file(folder: Path, channel: str, name: str, version: str) -> Path | None:
    for prefix in split_prefixes(channel, folder):
        candidate = folder / legacy_file_name(prefix, name, version)
        if candidate.is_file():
            return candidate
    return None


def load_npy(path: Path, channel: str, name: str) -> np.ndarray:
    """Memory-map one `.npy` read-only, as stored; a truncated, corrupt or object file is a `DataError`."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(
            f"channel '{channel}' file '{path.name}' array '{name}': not a readable .npy file ({exc}); "
            "rewrite it with numpy.save"
        ) from exc
    if not isinstance(array, np.ndarray):
        raise DataError(f"channel '{channel}' file '{path.name}': holds no single array (an .npz?); use .npy")
    if array.ndim == 0:
        raise DataError(f"channel '{channel}' file '{path.name}' array '{name}': holds a single value (shape ()): "
                        "expected one row per example, shape (N, ...)")
    return array


def open_array(path: Path, channel: str, name: str) -> np.ndarray:
    """`load_npy`, with labels `(N, 1)` read as `(N,)` (the legacy reshaped them too)."""
    array = load_npy(path, channel, name)
    if name == "Y" and array.ndim == 2 and array.shape[1] == 1:
        array = array.reshape(array.shape[0])
    return array


class NpyChannel:
    """A channel in the legacy layout; implements the channel-source interface of `tsa.data`."""

    format = "npy"
    host_shard = False  # a sharded .npy channel is refused (`open_channel`)

    def __init__(self, channel: str, folder: Path, version: str, specs: Sequence[ArraySpec]) -> None:
        self.channel, self.folder, self.version = channel, folder, version
        self.files: dict[str, Path] = {}
        for spec in specs:
            path = find_array_file(folder, channel, spec.name, version)
            if path is None:
                if spec.required:
                    tried = [legacy_file_name(p, spec.name, version) for p in split_prefixes(channel, folder)]
                    raise DataError(
                        f"channel '{channel}': file '{tried[0]}' (array '{spec.name}', expected "
                        f"{spec.describe_shape()}) is missing in {folder}; accepted names: {tried}"
                    )
                continue
            self.files[spec.name] = path
        self._arrays: dict[str, np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers get a copy: reopen the memory maps there instead of pickling data.
        return {**self.__dict__, "_arrays": None}

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = {name: open_array(path, self.channel, name) for name, path in self.files.items()}
        return self._arrays

    @property
    def names(self) -> list[str]:
        return list(self.files)

    def file_of(self, name: str) -> str:
        return self.files[name].name

    def rows_of(self, name: str) -> int:
        return int(self.arrays[name].shape[0])

    def shape_of(self, name: str) -> tuple[int, ...]:
        return tuple(int(s) for s in self.arrays[name].shape[1:])

    def dtype_of(self, name: str) -> np.dtype:
        return self.arrays[name].dtype

    def describe_dtype(self, name: str) -> str:
        return str(self.dtype_of(name))

    @property
    def num_rows(self) -> int:
        return self.rows_of("Y")

    @property
    def locality_rows(self) -> int:
        """Rows that are cheap to read together (memory maps: any)."""
        return 1

    def take(self, indices: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Rows `indices` (any order) of each named array, gathered in one vectorised read."""
        return {name: native_byte_order(self.arrays[name][indices]) for name in names}

    def batch(self, indices: np.ndarray, model_type: str) -> Batch:
        """`to_batch(take(indices, names))`, gathered and cast in one pass (`gather_batch`)."""
        return gather_batch(self.arrays, indices, model_type)

    def ids(self, indices: np.ndarray) -> None:
        """The legacy layout has no id column: predictions are keyed by row number."""
        return None

    def iter_chunks(self, names: Sequence[str], chunk_rows: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(first row, arrays) over consecutive row ranges, for streaming validation."""
        for start in range(0, self.num_rows, chunk_rows):
            stop = min(start + chunk_rows, self.num_rows)
            yield start, {name: native_byte_order(self.arrays[name][start:stop]) for name in names}
