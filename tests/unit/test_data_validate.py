"""`tsa validate` and the data checks: good data passes, big-endian arrays are read losslessly.

Every bad-data case is a row of the fault catalogue (`test_catalogue.py`), run through the job.

Run: .venv/bin/pytest tests/unit/test_data_validate.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.inputs import DATA_HP as HP
from tests.jobs import Arrays, job_with_train_arrays, synthetic_arrays
from tsa.cli import main as cli_main
from tsa.config import JobConfig
from tsa.entrypoint import main_train


def job_with(tmp_path: Path, arrays: Arrays, fmt: str) -> Path:
    return job_with_train_arrays(tmp_path / "opt_ml", arrays, fmt, HP)


def good_arrays() -> Arrays:
    return synthetic_arrays(HP)


def test_tsa_validate_refuses_bad_data_as_the_job_does(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`tsa validate JOB_DIR` runs the job's own data checks (the catalogue holds one row per bad-data case)."""
    arrays = good_arrays()
    arrays["X_seq_num"] = arrays["X_seq_num"].copy()
    arrays["X_seq_num"][3, 4, 0] = np.nan
    root = job_with(tmp_path, arrays, "npy")
    assert cli_main(["validate", str(root)]) == 2
    first_line = capsys.readouterr().err.splitlines()[0]
    assert first_line.startswith("tsa validate: channel 'train' file 'train_X_seq_num_v0.npy' array 'X_seq_num' "
                                 "column 0: example 3 holds NaN: allowed are finite numbers")
    assert main_train(root) == 2
    assert "tsa validate: " + (root / "output/failure").read_text().splitlines()[0] == first_line


@pytest.mark.parametrize("fmt", ["npy", "parquet"])
def test_good_data_validates(tmp_path: Path, fmt: str) -> None:
    root = job_with(tmp_path, good_arrays(), fmt)
    assert cli_main(["validate", str(root)]) == 0


def test_big_endian_arrays_are_read_losslessly(tmp_path: Path) -> None:
    """numpy converts byte order without loss: accepted, and the batches equal the native file's."""
    from tsa.contract import Channel
    from tsa.data import open_channel

    arrays = good_arrays()
    root = job_with(tmp_path, {k: v.astype(v.dtype.newbyteorder(">")) for k, v in arrays.items()}, "npy")
    assert cli_main(["validate", str(root)]) == 0
    config = JobConfig.from_hyperparameters(HP)
    source = open_channel(Channel("train", root / "input/data/train"), config.data, config.model)
    rows = np.arange(len(arrays["Y"]))[::-1]
    for name, values in source.take(rows, source.names).items():
        assert values.dtype.isnative and np.array_equal(values, arrays[name][rows]), name


def test_a_host_shard_of_a_scored_channel_may_hold_one_label(tmp_path: Path) -> None:
    """A `ShardedByS3Key` validation channel is checked per host: one host's files may hold one label only
    (the whole channel's labels are scored together), so only an unsharded channel with one label is refused."""
    from tsa.contract import Channel
    from tsa.data import open_channel, validate_channel
    from tsa.data.convert import write_parquet_channel
    from tsa.errors import DataError

    config = JobConfig.from_hyperparameters(HP)
    arrays = good_arrays()
    arrays["Y"] = np.zeros_like(arrays["Y"])
    write_parquet_channel(tmp_path / "validation", arrays)
    shard = Channel("validation", tmp_path / "validation", distribution="ShardedByS3Key")
    assert validate_channel(open_channel(shard, config.data, config.model), config.model) == len(arrays["Y"])
    with pytest.raises(DataError, match="every example has label 0"):
        validate_channel(open_channel(Channel("validation", tmp_path / "validation"), config.data, config.model),
                         config.model)
