"""Bad data is refused before training with a one-line cause naming file and column (`tsa.data.validate`).

Run: .venv/bin/pytest tests/unit/test_data_validate.py
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_job
from tests.inputs import DATA_HP as HP
from tsa.cli import main as cli_main
from tsa.config import JobConfig
from tsa.data.convert import write_npy_channel, write_parquet_channel
from tsa.data.synth import generate
from tsa.entrypoint import main_train

DUAL_HP = {**HP, "model_type": "dual"}
ROWS = 12
Arrays = dict[str, np.ndarray]


def good_arrays(hp: dict[str, str] = HP) -> Arrays:
    return generate(JobConfig.from_hyperparameters(hp).model, ROWS, seed=3)


def setting(index: tuple, value: object, name: str) -> Callable[[Arrays], None]:
    def mutate(arrays: Arrays) -> None:
        arrays[name] = arrays[name].copy()
        arrays[name][index] = value
    return mutate


def replacing(name: str, make: Callable[[np.ndarray], np.ndarray]) -> Callable[[Arrays], None]:
    def mutate(arrays: Arrays) -> None:
        arrays[name] = make(arrays[name])
    return mutate


def dropping(name: str) -> Callable[[Arrays], None]:
    return lambda arrays: arrays.pop(name)


def emptying(arrays: Arrays) -> None:
    for name in arrays:
        arrays[name] = arrays[name][:0]


# (case id, mutation of the arrays, file format, hyperparameters, expected text of the first line)
BAD_DATA = [
    ("missing_file", dropping("X_seq_num"), "npy", HP, "file 'train_X_seq_num_v0.npy' (array 'X_seq_num'"),
    ("missing_ccid_file", dropping("ccid_X_seq_cat"), "npy", DUAL_HP, "file 'train_ccid_X_seq_cat_v0.npy'"),
    ("missing_parquet_column", dropping("X_num"), "parquet", HP, "column 'X_num' is missing"),
    ("mismatched_n", replacing("X_num", lambda a: a[:-1]), "npy", HP, "11 examples, but"),
    ("float_ids", replacing("X_seq_cat", lambda a: a.astype(np.float32)), "npy", HP, "dtype float32, expected an int"),
    ("float_labels", replacing("Y", lambda a: a.astype(np.float64)), "parquet", HP, "array 'Y': dtype float64"),
    ("wrong_seq_len", replacing("X_seq_cat", lambda a: a[:, 1:]), "npy", HP, "per-example shape (4, 4)"),
    ("wrong_num_width", replacing("X_seq_num", lambda a: a[..., 1:]), "parquet", HP, "per-example shape (5, 4)"),
    ("wrong_engineered_width", replacing("X_num", lambda a: a[:, :1]), "npy", HP, "'X_num': per-example shape (1,)"),
    ("nan_feature", setting((3, 4, 0), np.nan, "X_seq_num"), "npy", HP, "example 3 holds NaN or Inf"),
    ("inf_engineered", setting((7, 1), np.inf, "X_num"), "parquet", HP, "array 'X_num': example 7 holds NaN or Inf"),
    ("id_too_large", setting((5, 4, 2), 41, "X_seq_cat"), "npy", HP, "example 5 has categorical id 41: allowed 0..40"),
    ("negative_id", setting((2, 4, 0), -1, "X_seq_cat"), "parquet", HP, "example 2 has categorical id -1"),
    ("not_padded_not_binary", setting((6, 2, -1), 0.5, "X_seq_num"), "npy", HP, "column not_padded (last): example 6"),
    ("current_row_padded", setting((9, -1, -1), 0.0, "X_seq_num"), "npy", HP, "example 9 has a padded last row"),
    ("negative_time", setting((4, 1, -2), -5.0, "X_seq_num"), "npy", HP, "time_to_last (second to last): example 4"),
    ("label_out_of_range", setting((8,), 2, "Y"), "npy", HP, "example 8 has label 2: allowed are 0..1"),
    ("empty_channel", emptying, "npy", HP, "is empty: 0 examples"),
    ("time_overflows", setting((4, 1, -2), 1e30, "X_seq_num"), "npy", HP, "example 4 exceeds 8.8e+07 s"),
    ("zero_d_labels", replacing("Y", lambda a: np.array(1)), "npy", HP, "array 'Y': holds a single value (shape ())"),
]


def write_channel(folder: Path, arrays: Arrays, fmt: str) -> None:
    if fmt == "npy":
        write_npy_channel(folder, folder.name, "v0", arrays)
    else:
        write_parquet_channel(folder, arrays, row_group_rows=5)


def job_with(tmp_path: Path, arrays: Arrays, fmt: str, hp: dict[str, str]) -> Path:
    """A job whose train channel holds `arrays` (and a good validation channel: training needs one)."""
    root = write_job(tmp_path / "opt_ml", hp, channels=("train", "validation"))
    write_channel(root / "input/data/train", arrays, fmt)
    write_channel(root / "input/data/validation", good_arrays(hp), fmt)
    return root


@pytest.mark.parametrize(("mutate", "fmt", "hp", "expected"), [c[1:] for c in BAD_DATA], ids=[c[0] for c in BAD_DATA])
def test_bad_data_is_refused_naming_file_and_column(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    mutate: Callable, fmt: str, hp: dict, expected: str) -> None:
    arrays = good_arrays(hp)
    mutate(arrays)
    root = job_with(tmp_path, arrays, fmt, hp)
    assert cli_main(["validate", str(root)]) == 2
    first_line = capsys.readouterr().err.splitlines()[0]
    assert expected in first_line
    assert "channel 'train'" in first_line
    assert "file '" in first_line or "column '" in first_line or "is empty" in first_line


@pytest.mark.parametrize("fmt", ["npy", "parquet"])
def test_good_data_validates(tmp_path: Path, fmt: str) -> None:
    root = job_with(tmp_path, good_arrays(), fmt, HP)
    assert cli_main(["validate", str(root)]) == 0


def test_truncated_npy_is_a_data_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = job_with(tmp_path, good_arrays(), "npy", HP)
    path = root / "input/data/train/train_X_seq_cat_v0.npy"
    path.write_bytes(path.read_bytes()[:200])
    assert cli_main(["validate", str(root)]) == 2
    assert "file 'train_X_seq_cat_v0.npy' array 'X_seq_cat': not a readable .npy" in capsys.readouterr().err


def test_corrupt_parquet_is_a_data_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = job_with(tmp_path, good_arrays(), "parquet", HP)
    path = next((root / "input/data/train").glob("*.parquet"))
    path.write_bytes(b"PAR1" + b"\0" * 100)
    assert cli_main(["validate", str(root)]) == 2
    assert f"file '{path.name}': not a readable Parquet file" in capsys.readouterr().err


def test_mixed_formats_in_one_channel_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = job_with(tmp_path, good_arrays(), "npy", HP)
    write_parquet_channel(root / "input/data/train", good_arrays())
    assert cli_main(["validate", str(root)]) == 2
    assert "holds both .npy and .parquet" in capsys.readouterr().err


def test_the_job_writes_the_data_error_to_the_failure_file(tmp_path: Path) -> None:
    arrays = good_arrays()
    setting((3, 4, 0), np.nan, "X_seq_num")(arrays)
    root = job_with(tmp_path, arrays, "npy", HP)
    write_channel(root / "input/data/validation", good_arrays(), "npy")
    assert main_train(root) == 2
    first = (root / "output/failure").read_text().splitlines()[0]
    assert first.startswith("channel 'train' file 'train_X_seq_num_v0.npy' array 'X_seq_num': example 3")
    assert json.loads((root / "input/config/hyperparameters.json").read_text()) == HP


def test_big_endian_arrays_are_read_losslessly(tmp_path: Path) -> None:
    """numpy converts byte order without loss: accepted, and the batches equal the native file's."""
    from tsa.config import JobConfig
    from tsa.contract import Channel
    from tsa.data import open_channel

    arrays = good_arrays()
    root = job_with(tmp_path, {k: v.astype(v.dtype.newbyteorder(">")) for k, v in arrays.items()}, "npy", HP)
    assert cli_main(["validate", str(root)]) == 0
    source = open_channel(Channel("train", root / "input/data/train"), JobConfig.from_hyperparameters(HP))
    rows = np.arange(len(arrays["Y"]))[::-1]
    for name, values in source.take(rows, source.names).items():
        assert values.dtype.isnative and np.array_equal(values, arrays[name][rows]), name
