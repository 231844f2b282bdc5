"""The `/opt/ml` reader (`tsa.contract`).

Run: .venv/bin/pytest tests/unit/test_contract.py
"""

from __future__ import annotations

import json

import pytest

from tests.inputs import REQUIRED_HP
from tsa.contract import (
    JobPaths,
    encode_hyperparameters,
    load_hyperparameters,
    read_channels,
    read_resource_config,
)
from tsa.errors import ChannelError, ConfigError


def test_base_dir_comes_from_sagemaker_base_dir(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    assert JobPaths.from_root().hyperparameters_file == tmp_path / "input/config/hyperparameters.json"
    monkeypatch.delenv("SAGEMAKER_BASE_DIR")
    assert JobPaths.from_root().model_dir.as_posix() == "/opt/ml/model"


def test_sdk_encodings_match_the_contract_table() -> None:
    # ../shared/docs/sagemaker_contract.md §1.3, reproduced there with the real SDK code.
    values = {"lr": 0.001, "layers": [1, 2], "use_moe": True, "name": "x"}
    assert encode_hyperparameters(values, "str") == {"lr": "0.001", "layers": "[1, 2]", "use_moe": "True", "name": "x"}
    assert encode_hyperparameters(values, "json") == {"lr": "0.001", "layers": "[1, 2]", "use_moe": "true",
                                                      "name": '"x"'}
    assert encode_hyperparameters(values, "v3") == {"lr": "0.001", "layers": "[1, 2]", "use_moe": "true", "name": "x"}


def test_missing_resource_config_means_one_localhost(job_root) -> None:
    resources = read_resource_config(JobPaths(job_root(REQUIRED_HP)))
    assert (resources.hosts, resources.current_host, resources.node_rank) == (("localhost",), "localhost", 0)


def test_hosts_are_ordered_numerically(job_root) -> None:
    hosts = [f"algo-{i}" for i in range(1, 12)]
    root = job_root(REQUIRED_HP, resourceconfig={"current_host": "algo-2", "hosts": sorted(hosts),
                                             "network_interface_name": "eth0"})
    resources = read_resource_config(JobPaths(root))
    assert resources.ordered_hosts[:3] == ["algo-1", "algo-2", "algo-3"]
    assert resources.ordered_hosts[-1] == "algo-11"
    assert (resources.master_host, resources.node_rank, resources.num_nodes) == ("algo-1", 1, 11)
    assert resources.network_interface_name == "eth0"


def test_channel_aliases_map_to_canonical_names(job_root) -> None:
    root = job_root(REQUIRED_HP, channels=("train", "vali", "cali", "test", "other"))
    assert set(read_channels(JobPaths(root))) == {"train", "validation", "calibration", "test"}


def test_local_mode_inputdataconfig_without_distribution_is_accepted(job_root) -> None:
    root = job_root(REQUIRED_HP, channels=("train", "val"), inputdataconfig={
        "train": {"TrainingInputMode": "File"},
        "val": {"TrainingInputMode": "FastFile", "S3DistributionType": "ShardedByS3Key"}})
    channels = read_channels(JobPaths(root))
    assert not channels["train"].sharded_by_host
    assert channels["validation"].sharded_by_host and channels["validation"].input_mode == "FastFile"


def test_pipe_mode_is_rejected(job_root) -> None:
    root = job_root(REQUIRED_HP, inputdataconfig={"train": {"TrainingInputMode": "Pipe"}})
    with pytest.raises(ChannelError, match="'Pipe' is not supported"):
        read_channels(JobPaths(root))


def test_config_file_merges_and_direct_keys_win(job_root) -> None:
    root = job_root({**REQUIRED_HP, "config_file": "train/hp.json", "batch_size": "32"})
    (root / "input/data/train/hp.json").write_text(json.dumps({"batch_size": 64, "max_epoch": 5}))
    merged = load_hyperparameters(JobPaths(root))
    assert (merged["batch_size"], merged["max_epoch"]) == ("32", 5)
    assert "config_file" not in merged


def test_config_file_may_hold_values_over_the_wire_limit(job_root) -> None:
    root = job_root({**REQUIRED_HP, "config_file": '"train/hp.json"'})
    (root / "input/data/train/hp.json").write_text(json.dumps({"test_name": "x" * 3000}))
    assert len(load_hyperparameters(JobPaths(root))["test_name"]) == 3000


def test_oversized_value_names_config_file(job_root) -> None:
    root = job_root({**REQUIRED_HP, "test_name": "x" * 2501})
    with pytest.raises(ConfigError, match="config_file"):
        load_hyperparameters(JobPaths(root))
